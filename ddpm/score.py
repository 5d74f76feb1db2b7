"""The exact scores of n training points: of their noised empirical distribution (streamed) and of
their Gaussian surrogate.

For points a_1..a_n the noised empirical law P_t is a mixture of N(e^{-t} a_μ, Δ_t I) with
Δ_t = 1 - e^{-2t}; its posterior weights are a softmax over μ of

    L_μ(x, t) = (e^{-t} x·a_μ - ½ e^{-2t} |a_μ|²) / Δ_t,

and ∇log P_t(x) = (e^{-t} Σ_μ w_μ a_μ - x) / Δ_t. This is attention with a per-key bias, so it is
computed like flash attention: over chunks of the training set with a running max and running
sums (log-sum-exp), never exponentiating raw logits and never holding an (B, n) matrix.

Two tricks keep it fast and accurate: the points are centred (weights are invariant to shifting
x and e^{-t} a_μ together, and smaller |a_μ|² means less float32 cancellation), and the bias is
folded into the matrix product by appending |a_μ|² as an extra column.

The Gaussian surrogate N(μ, Σ) of the same points (:class:`GaussianScore`; μ, Σ their mean and
covariance) has the closed-form noised law N(e^{-t} μ, e^{-2t} Σ + Δ_t I), so with Σ = U diag(λ) Uᵀ

    ∇log p_t(x) = -(e^{-2t} Σ + Δ_t I)^{-1} (x - e^{-t} μ),
    ε_G(x) = sqrt(Δ_t) (e^{-2t} Σ + Δ_t I)^{-1} (x - e^{-t} μ),
    E[x_0 | x_t] = μ + e^{-t} Σ (e^{-2t} Σ + Δ_t I)^{-1} (x - e^{-t} μ),

a linear function of x at every t (the best linear denoiser of the data: the Wiener filter). Only
the eigenvectors with λ > 0 are kept (the rank is at most n - 1): the rest of the space has
variance ``rest`` (0 for a dataset, whose surrogate lives in the points' affine span).
``sampler=gaussian_score`` samples with it and ``regimes=trained`` sets it beside the network and
the exact score (:mod:`ddpm.regimes.linear`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ddpm.errors import ConfigError, DataError
from ddpm.schedules import eps_from_score

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# exp() of logits this far below the running max is clamped to stay a normal float: subnormal
# weights are worthless (< 1e-34 each) but make the second matrix product ~10x slower.
_EXP_FLOOR = {torch.float32: -80.0, torch.float64: -700.0}


def delta(t: torch.Tensor) -> torch.Tensor:
    """Δ_t = 1 - e^{-2t}, accurate for small t."""
    return -torch.expm1(-2.0 * t)


def _as_times(t: float | torch.Tensor, batch: int) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64).flatten()
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"got {t.numel()} times for {batch} queries")
    if not bool((t > 0).all()) or not bool(torch.isfinite(t).all()):
        raise ConfigError(f"times must be finite and > 0 (the empirical score is singular at t = 0), got min {float(t.min())}")
    return t


@dataclass
class PosteriorStats:
    """Posterior statistics of B queries under the noised empirical mixture.

    Args:
        lse: log Σ_μ exp L_μ (B,), of the centred logits.
        mean: Σ_μ w_μ a_μ (B, d) in the original (uncentred) coordinates, or None.
        max_w: largest weight (B,).
        argmax: index of the largest weight = nearest scaled point e^{-t} a_μ (B,); None unless asked for.
        sum_w2: Σ_μ w_μ² (B,): probability that two posterior draws pick the same point; None unless asked for.
        class_w: Σ_{μ in c} w_μ (B, C) when the points carry labels and it was asked for, else None.
    """

    lse: torch.Tensor
    mean: torch.Tensor | None
    max_w: torch.Tensor
    argmax: torch.Tensor | None
    sum_w2: torch.Tensor | None
    class_w: torch.Tensor | None = None


class ExactScore:
    """Streamed posterior weights, score and ε of the exact empirical score of ``points``.

    Args:
        points: training points (n, d) (images are flattened by the caller).
        labels: optional int class labels (n,) for class posterior weights.
        dtype: ``float32`` (default, fast) or ``float64`` (very small t, tests).
        chunk_size: training points per streamed chunk; results do not depend on it.
        device: where the computation runs.
    """

    def __init__(
        self,
        points: torch.Tensor,
        labels: torch.Tensor | None = None,
        dtype: str | torch.dtype = "float32",
        chunk_size: int = 4096,
        device: str | torch.device = "cpu",
    ) -> None:
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ConfigError(f"kernel dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
            dtype = DTYPES[dtype]
        if points.ndim != 2 or points.shape[0] < 1:
            raise DataError(f"need an (n, d) matrix of training points, got shape {tuple(points.shape)}")
        if chunk_size < 1:
            raise ConfigError(f"kernel.chunk_size must be >= 1, got {chunk_size}")
        self.dtype, self.device, self.chunk_size = dtype, torch.device(device), int(chunk_size)
        a = points.to(torch.float64)
        self.center = a.mean(0)
        a = a - self.center
        # [a | |a|² | 1]: the first matrix product gives x·a_μ and the bias term together, the
        # second one Σ_μ e_μ a_μ and the normaliser Σ_μ e_μ together (no separate row sums).
        ones = torch.ones(a.shape[0], 1, dtype=torch.float64)
        self.a_aug = torch.cat([a, (a * a).sum(1, keepdim=True), ones], 1).to(device=self.device, dtype=dtype).contiguous()
        self.n, self.d = a.shape
        self.labels = None if labels is None else labels.to(self.device, torch.long)
        self.num_classes = 0 if labels is None else int(labels.max()) + 1
        self._onehot = None

    @property
    def points(self) -> torch.Tensor:
        """The centred points (n, d) in the kernel's dtype."""
        return self.a_aug[:, : self.d]

    @property
    def sq_norms(self) -> torch.Tensor:
        """|a_μ - mean|² (n,)."""
        return self.a_aug[:, self.d]

    def _onehot_chunks(self) -> torch.Tensor:
        if self.labels is None:
            raise ConfigError("class weights need labelled training points")
        if self._onehot is None:
            self._onehot = torch.nn.functional.one_hot(self.labels, self.num_classes).to(self.dtype)
        return self._onehot

    def _centre_queries(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x - e^{-t} mean: the query in the centred frame."""
        x = x.to(device=self.device, dtype=torch.float64)
        return x - torch.exp(-t).to(self.device)[:, None] * self.center.to(self.device)

    @torch.no_grad()
    def stats(
        self, x: torch.Tensor, t: float | torch.Tensor, mean: bool = True, classes: bool = False, extras: bool = True
    ) -> PosteriorStats:
        """Posterior statistics of queries ``x`` (B, d) at time(s) ``t`` (scalar or (B,)).

        Args:
            x: noised queries x_t in the original coordinates.
            t: OU time, scalar or one per query (> 0).
            mean: also compute Σ w_μ a_μ (one more matrix product).
            classes: also compute class posterior weights (needs labels).
            extras: also compute ``argmax`` and ``sum_w2`` (two more passes over each chunk; the
                score alone does not need them, and then they are returned as None).
        """
        B = x.shape[0]
        t = _as_times(t, B)
        xc = self._centre_queries(x, t)
        dt = delta(t).to(self.device)
        et = torch.exp(-t).to(self.device)
        # q·[a | |a|² | 1] = (e^{-t} x·a - ½ e^{-2t} |a|²) / Δ = L.
        q = torch.cat([xc * (et / dt)[:, None], (-0.5 * et * et / dt)[:, None], torch.zeros_like(dt)[:, None]], 1).to(self.dtype)
        m = torch.full((B,), -math.inf, dtype=self.dtype, device=self.device)
        s = torch.zeros(B, dtype=self.dtype, device=self.device)
        s2 = torch.zeros_like(s)
        arg = torch.zeros(B, dtype=torch.long, device=self.device)
        num = torch.zeros(B, self.d + 2, dtype=self.dtype, device=self.device) if mean else None
        onehot = self._onehot_chunks() if classes else None
        cls = torch.zeros(B, self.num_classes, dtype=self.dtype, device=self.device) if classes else None
        floor = _EXP_FLOOR[self.dtype]
        for start in range(0, self.n, self.chunk_size):
            chunk = self.a_aug[start : start + self.chunk_size]
            L = q @ chunk.T
            if extras:
                cmax, carg = L.max(1)
                arg = torch.where(cmax > m, carg + start, arg)
            else:
                cmax = L.amax(1)
            m_new = torch.maximum(m, cmax)
            scale = torch.exp(m - m_new)
            E = L.sub_(m_new[:, None]).clamp_min_(floor).exp_()
            if extras:
                s2 = s2 * scale * scale + torch.linalg.vector_norm(E, dim=1).square()
            if num is not None:
                num = torch.addmm(num * scale[:, None], E, chunk)  # last column: Σ e_μ
            else:
                s = s * scale + E.sum(1)
            if cls is not None:
                cls = torch.addmm(cls * scale[:, None], E, onehot[start : start + self.chunk_size])
            m = m_new
        if num is not None:
            s = num[:, self.d + 1]
        lse = m.double() + torch.log(s.double())
        out_mean = None if num is None else (num[:, : self.d].double() / s.double()[:, None]) + self.center.to(self.device)
        return PosteriorStats(
            lse=lse,
            mean=out_mean,
            max_w=(1.0 / s.double()),
            argmax=arg if extras else None,
            sum_w2=s2.double() / s.double().square() if extras else None,
            class_w=None if cls is None else cls.double() / s.double()[:, None],
        )

    @torch.no_grad()
    def log_weight(self, x: torch.Tensor, t: float | torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """log w_{index}(x, t): the posterior log-weight of one given training point per query (float64).

        Args:
            x: noised queries x_t (B, d) in the original coordinates.
            t: OU time, scalar or one per query (> 0).
            index: the training point of each query (B,).
        """
        B = x.shape[0]
        t = _as_times(t, B)
        xc = self._centre_queries(x, t)
        dt, et = delta(t).to(self.device), torch.exp(-t).to(self.device)
        # L_μ = (e^{-t} x·a_μ - ½ e^{-2t} |a_μ|²) / Δ, in the kernel's dtype as in :meth:`stats`
        q = torch.cat([xc * (et / dt)[:, None], (-0.5 * et * et / dt)[:, None], torch.zeros_like(dt)[:, None]], 1).to(self.dtype)
        L = (q * self.a_aug[index.to(self.device)]).sum(1).double()
        return L - self.stats(x, t, mean=False, extras=False).lse

    def denoised(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t] = Σ_μ w_μ a_μ (float64, original coordinates)."""
        return self.stats(x, t, extras=False).mean

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """∇log P_t(x) = (e^{-t} Σ w_μ a_μ - x) / Δ_t (float64)."""
        tt = _as_times(t, x.shape[0]).to(self.device)
        return (torch.exp(-tt)[:, None] * self.denoised(x, tt) - x.to(self.device, torch.float64)) / delta(tt)[:, None]

    def eps(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """ε*(x) = (x - e^{-t} Σ w_μ a_μ) / sqrt(Δ_t) = -sqrt(Δ_t) ∇log P_t (float64)."""
        tt = _as_times(t, x.shape[0]).to(self.device)
        return eps_from_score(self.score(x, tt), delta(tt).sqrt()[:, None])

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """log P_t(x) of the noised empirical mixture (float64); for checks, not for speed."""
        B = x.shape[0]
        tt = _as_times(t, B)
        xc = self._centre_queries(x, tt)
        dt = delta(tt).to(self.device)
        lse = self.stats(x, tt, mean=False, extras=False).lse
        # log P = lse - |x_c|²/(2Δ) - log n - d/2 log(2πΔ): the |x|² term dropped from L comes back.
        return lse - (xc * xc).sum(1) / (2 * dt) - math.log(self.n) - 0.5 * self.d * torch.log(2 * math.pi * dt)

    @torch.no_grad()
    def forward_stats(self, index: torch.Tensor, z: torch.Tensor, times: torch.Tensor, classes: bool = False) -> dict[str, torch.Tensor]:
        """Statistics at x_t = e^{-t} a_{index} + sqrt(Δ_t) z for many t with the same (index, z).

        Needs only two matrix products per chunk, G = a_{μ0}·a_μ and Z = z·a_μ, for all times:
        x_t·a_μ = e^{-t} G + sqrt(Δ_t) Z (common random numbers across t).

        Args:
            index: training point μ0 of each query (B,).
            z: standard normal noise (B, d).
            times: OU times (T,), each > 0.
            classes: also return class posterior weights (T, B, C).

        Returns:
            ``log_w0`` (T, B) log-weight of μ0, ``sum_w2`` (T, B), ``max_w`` (T, B) and optionally ``class_w`` (T, B, C); all float64.
        """
        times = _as_times(times, torch.as_tensor(times).numel()).to(self.device)
        T, B = times.numel(), index.numel()
        index = index.to(self.device)
        a0 = self.points[index]
        zz = z.to(self.device, self.dtype)
        et, dt = torch.exp(-times), delta(times)
        c1 = (et * et / dt).to(self.dtype)  # multiplies G - ½|a|²
        c2 = (et * dt.sqrt() / dt).to(self.dtype)  # multiplies Z
        m = torch.full((T, B), -math.inf, dtype=self.dtype, device=self.device)
        s = torch.zeros(T, B, dtype=self.dtype, device=self.device)
        s2 = torch.zeros_like(s)
        onehot = self._onehot_chunks() if classes else None
        cls = torch.zeros(T, B, self.num_classes, dtype=self.dtype, device=self.device) if classes else None
        buf, floor = None, _EXP_FLOOR[self.dtype]
        for start in range(0, self.n, self.chunk_size):
            chunk = self.points[start : start + self.chunk_size]
            H = a0 @ chunk.T
            H.sub_(0.5 * self.sq_norms[start : start + self.chunk_size])
            Z = zz @ chunk.T
            if buf is None or buf.shape != H.shape:
                buf = torch.empty_like(H)
            for i in range(T):
                L = torch.mul(H, c1[i], out=buf)
                L.add_(Z, alpha=float(c2[i]))
                m_new = torch.maximum(m[i], L.amax(1))
                scale = torch.exp(m[i] - m_new)
                E = L.sub_(m_new[:, None]).clamp_min_(floor).exp_()
                s[i] = s[i] * scale + E.sum(1)
                s2[i] = s2[i] * scale * scale + torch.linalg.vector_norm(E, dim=1).square()
                if cls is not None:
                    cls[i] = torch.addmm(cls[i] * scale[:, None], E, onehot[start : start + self.chunk_size])
                m[i] = m_new
        # L_{μ0} = c1 (|a0|² - ½|a0|²) + c2 z·a0, computed directly in float64.
        a0d, zd = a0.double(), z.to(self.device, torch.float64)
        L0 = c1.double()[:, None] * 0.5 * (a0d * a0d).sum(1)[None] + c2.double()[:, None] * (zd * a0d).sum(1)[None]
        lse = m.double() + torch.log(s.double())
        out = {"log_w0": L0 - lse, "sum_w2": s2.double() / s.double().square(), "max_w": 1.0 / s.double()}
        if cls is not None:
            out["class_w"] = cls.double() / s.double()[..., None]
        return out

    @torch.no_grad()
    def nearest(self, x: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """Euclidean distances (B, k) and indices (B, k) of the k nearest training points to ``x``."""
        xc = (x.to(self.device, torch.float64) - self.center.to(self.device)).to(self.dtype)
        xsq = (xc * xc).sum(1, keepdim=True)
        best_d = torch.full((x.shape[0], 0), math.inf, dtype=self.dtype, device=self.device)
        best_i = torch.zeros((x.shape[0], 0), dtype=torch.long, device=self.device)
        for start in range(0, self.n, self.chunk_size):
            chunk = self.a_aug[start : start + self.chunk_size]
            d2 = (xsq - 2 * xc @ chunk[:, : self.d].T + chunk[:, self.d][None]).clamp_min_(0)
            kk = min(k, d2.shape[1])
            vals, idx = torch.topk(d2, kk, dim=1, largest=False)
            best_d = torch.cat([best_d, vals], 1)
            best_i = torch.cat([best_i, idx + start], 1)
            best_d, order = torch.topk(best_d, min(k, best_d.shape[1]), dim=1, largest=False)
            best_i = torch.gather(best_i, 1, order)
        return best_d.double().sqrt(), best_i


# Above this dimension the covariance is eigendecomposed through the n x n Gram matrix (n <= this),
# or by a randomised top-k SVD.
FULL_EIG_MAX = 4096


def _spectrum(x: torch.Tensor, top: int, seed: int, vectors: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """Mean, eigenvalues (unsorted), eigenvectors (when ``vectors``) and the variance per direction
    left out, of the covariance (1/n) of the rows of ``x``: exact for d <= FULL_EIG_MAX (d x d) or
    n <= FULL_EIG_MAX (the n x n Gram matrix), else the top ``top`` by a randomised SVD seeded ``seed``."""
    x = x.to(torch.float64)
    n, d = x.shape
    mu = x.mean(0)
    xc = x - mu
    rest, vec = 0.0, None
    if d <= FULL_EIG_MAX:
        cov = xc.T @ xc / n
        lam, vec = torch.linalg.eigh(cov) if vectors else (torch.linalg.eigvalsh(cov), None)
    elif n <= FULL_EIG_MAX:
        gram = xc @ xc.T / n
        if not vectors:
            return mu, torch.linalg.eigvalsh(gram), None, 0.0
        lam, w = torch.linalg.eigh(gram)
        keep = lam > lam.max() * 1e-12
        lam, w = lam[keep], w[:, keep]
        vec = xc.T @ w / torch.sqrt(n * lam)[None]  # eigenvectors of xcᵀxc/n from those of xc xcᵀ/n
    else:
        torch.manual_seed(seed)
        k = min(top, d)
        _, s, v = torch.svd_lowrank(xc, q=min(k + 16, d), niter=4)
        lam = (s[:k] ** 2) / n
        vec = v[:, :k] if vectors else None
        rest = max(float((xc * xc).sum() / n - lam.sum()), 0.0) / max(d - k, 1)
    return mu, lam, vec, rest


def covariance_eigen(x: torch.Tensor, top: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mean (d,), eigenvalues (r,) and orthonormal eigenvectors (d, r) of the covariance (1/n) of the
    rows of ``x``, descending, with λ > 0 only; and the variance left to the other directions.

    Exact for d <= 4096 (d x d eigendecomposition) or n <= 4096 (through the n x n Gram matrix);
    otherwise the top ``top`` by a randomised SVD, the rest of the total variance spread evenly over
    the other d - top directions.
    """
    if len(x) < 2:
        raise DataError(f"a Gaussian surrogate needs at least 2 points, got {len(x)}")
    mu, lam, vec, rest = _spectrum(x, top, seed, vectors=True)
    order = torch.argsort(lam, descending=True)
    lam, vec = lam[order], vec[:, order]
    keep = lam > max(float(lam[0]), 1e-300) * 1e-12
    return mu, lam[keep].clamp_min(0), vec[:, keep].contiguous(), rest


def covariance_eigenvalues(x: torch.Tensor, top: int = 256, seed: int = 0) -> np.ndarray:
    """All d eigenvalues (descending) of the covariance (1/n) of the rows of ``x``, as
    :func:`covariance_eigen` finds them without the eigenvectors: a Gram-matrix spectrum is padded
    with zeros, a randomised top ``top`` with the remaining variance spread evenly (the sum, hence
    the mean eigenvalue, stays exact).

    Args:
        x: points (n, d).
        top: eigenvalues estimated exactly in the large-d, large-n case.
        seed: seed of the randomised SVD.
    """
    d = x.shape[1]
    _, lam, _, rest = _spectrum(x, top, seed, vectors=False)
    eig = torch.cat([lam, torch.full((d - len(lam),), rest, dtype=torch.float64)])
    return np.sort(eig.clamp_min(0).numpy())[::-1].copy()


class GaussianScore:
    """The exact score of N(μ, U diag(λ) Uᵀ + rest (I - U Uᵀ)), noised by the OU process.

    Args:
        mean: μ (d,).
        eigenvalues: λ (r,), the covariance's eigenvalues along ``eigenvectors``.
        eigenvectors: U (d, r), orthonormal columns.
        rest: the variance of every direction orthogonal to U (0: the surrogate of a dataset).
        device: where it computes.
    """

    def __init__(
        self, mean: torch.Tensor, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor, rest: float = 0.0, device: Any = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.mean = mean.to(self.device, torch.float64)
        self.lam = eigenvalues.to(self.device, torch.float64)
        self.U = eigenvectors.to(self.device, torch.float64)
        self.rest = float(rest)
        self.d = self.mean.numel()

    @classmethod
    def from_points(cls, x: torch.Tensor, device: Any = "cpu", top: int = 512) -> GaussianScore:
        """The surrogate of points ``x`` (n, d): their mean and covariance (1/n)."""
        mu, lam, vec, rest = covariance_eigen(x.flatten(1), top)
        return cls(mu, lam, vec, rest, device)

    def _apply(self, r: torch.Tensor, t: torch.Tensor, power: float = -1.0) -> torch.Tensor:
        """(e^{-2t} Σ + Δ_t I)^{power} r for rows r (B, d) and times t (B,)."""
        e2, dt = torch.exp(-2 * t)[:, None], delta(t)[:, None]
        base = (e2 * self.rest + dt) ** power  # (B, 1): every direction outside U
        coef = (e2 * self.lam[None] + dt) ** power - base  # (B, r)
        return base * r + ((r @ self.U) * coef) @ self.U.T

    def score(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """∇log p_t(x) = -(e^{-2t} Σ + Δ_t I)^{-1} (x - e^{-t} μ) (float64)."""
        x = x.to(self.device, torch.float64)
        tt = _as_times(t, x.shape[0]).to(self.device)
        return -self._apply(x - torch.exp(-tt)[:, None] * self.mean[None], tt)

    def eps(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """ε_G(x) = -sqrt(Δ_t) ∇log p_t(x) (float64)."""
        x = x.to(self.device, torch.float64)
        tt = _as_times(t, x.shape[0]).to(self.device)
        return eps_from_score(self.score(x, tt), delta(tt).sqrt()[:, None])

    def denoised(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t] = e^{t} (x + Δ_t ∇log p_t(x)) (Tweedie), linear in x."""
        x = x.to(self.device, torch.float64)
        tt = _as_times(t, x.shape[0]).to(self.device)
        return torch.exp(tt)[:, None] * (x + delta(tt)[:, None] * self.score(x, tt))

    def log_density(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """log p_t(x) (float64; needs rest > 0 or t > 0 in every direction)."""
        x = x.to(self.device, torch.float64)
        tt = _as_times(t, x.shape[0]).to(self.device)
        r = x - torch.exp(-tt)[:, None] * self.mean[None]
        e2, dt = torch.exp(-2 * tt), delta(tt)
        logdet = torch.log(e2[:, None] * self.lam[None] + dt[:, None]).sum(1) + (self.d - self.lam.numel()) * torch.log(e2 * self.rest + dt)
        quad = (r * self._apply(r, tt)).sum(1)
        return -0.5 * (quad + logdet + self.d * math.log(2 * math.pi))
