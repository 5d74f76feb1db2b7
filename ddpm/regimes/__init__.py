"""Dynamical regimes of diffusion (Biroli, Bonnaire, de Bortoli, Mézard 2024): speciation and
collapse times of the exact empirical score, of Gaussian surrogates and of trained networks.

Time is always the Ornstein–Uhlenbeck time t (x_t = e^{-t} x_0 + sqrt(1 - e^{-2t}) z); DDPM step k
corresponds to t_k = -½ log ᾱ_k (see :mod:`ddpm.schedules`). The exact empirical score they
analyse is :mod:`ddpm.score`, below the samplers, which sample with it too.
"""
