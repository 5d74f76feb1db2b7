"""What every sampler shares: timestep selection, per-sample random streams, the ε call."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.schedules import half_log_snr

# eps_fn(x_k, k) -> ε̂ (float32); k is a (B,) long tensor of schedule steps.
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# callback(i, k, x_k, x0_hat) after each network evaluation.
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]

SPACINGS = ("leading", "trailing", "linspace")
GRIDS = ("time", "logsnr", "karras")
KARRAS_RHO = 7.0  # ρ of EDM's σ grid


def check_steps(steps) -> None:
    """Refuse a step count that is not an integer >= 1."""
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"sampler.steps must be >= 1, got {steps}")


def timestep_sequence(T: int, steps: int, spacing: str = "leading") -> list[int]:
    """Increasing schedule steps visited by a sampler with ``steps`` network evaluations: exactly
    ``steps`` distinct steps in 0..T-1, the last T - 1 (sampling from noise starts where it is noise).

    Args:
        T: steps of the training schedule.
        steps: evaluations, 1 <= steps <= T.
        spacing: ``leading`` (a stride of T // steps: c, c + T//s, ..., T-1, as diffusers'
            leading with its ``steps_offset`` raised to c), ``trailing`` (round(T - i T/s) - 1, ..., T-1;
            Lin et al. 2023) or ``linspace`` (rounded linspace from 0 to T-1).
    """
    check_steps(steps)
    if steps > T:
        raise ConfigError(f"sampler.steps={steps} exceeds the schedule's T={T}")
    if spacing not in SPACINGS:
        raise ConfigError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if steps == 1:  # one evaluation must see the noise it starts from (linspace would give k = 0)
        return [int(T) - 1]
    T, steps = int(T), int(steps)
    i = np.arange(steps, dtype=np.int64)
    if spacing == "leading":
        # diffusers' grid 0, s, ..., (steps-1) s tops out as low as (T-1)/2 (steps = T/2 + 1) or
        # k = 599 of 1000 (steps = 600), where x_T ~ N(0, I) is far from x_k: move it up to T - 1.
        stride = T // steps
        seq = i * stride + (T - 1 - (steps - 1) * stride)
    elif spacing == "trailing":
        # round(T (steps - i) / steps) - 1 in integers, rounding half to even as np.round does;
        # np.arange(T, 0, -T / steps) in floats gave steps + 1 values for some T (T=201, steps=25).
        q, r = np.divmod(T * (steps - i), steps)
        seq = q + ((2 * r > steps) | ((2 * r == steps) & (q % 2 == 1))) - 1
    else:
        seq = np.linspace(0, T - 1, steps).round()
    out = sorted({int(k) for k in seq})
    if len(out) != steps or out[-1] != T - 1 or out[0] < 0:  # never for 1 <= steps <= T (tests/test_timesteps.py)
        raise RuntimeError(f"{spacing} spacing gave {len(out)} distinct steps in {out[0]}..{out[-1]} for steps={steps}, T={T}")
    return out


def top_step(abar: torch.Tensor, top: int, lambda_min: float | None) -> int:
    """The highest step a sampler starts from: ``top``, lowered to the last step whose λ is at
    least ``lambda_min`` (DPM-Solver clips λ near -5.1: the cosine schedule reaches -9.9 at T-1,
    where x_T is pure noise long before, and its last steps are huge in λ)."""
    if lambda_min is None:
        return top
    lam = half_log_snr(abar[: top + 1])
    above = torch.nonzero(lam >= lambda_min)
    if above.numel() == 0:
        raise ConfigError(f"sampler.lambda_min={lambda_min} is above every λ of the schedule (λ_0 = {float(lam[0]):.2f})")
    return int(above[-1])


def nearest_steps(lam: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The step of nearest λ for each target λ (ties to the lower step).

    Args:
        lam: float64 λ of steps 0..top (decreasing in k), at least two of them.
        targets: float64 λ values; those beyond the table map to its ends.
    """
    idx = torch.searchsorted(-lam, -targets).clamp(1, len(lam) - 1)  # -λ increases with k
    nearer_lower = (lam[idx - 1] - targets).abs() <= (lam[idx] - targets).abs()
    return torch.where(nearer_lower, idx - 1, idx)


def start_steps(diffusion: GaussianDiffusion, max_step: int | None, lambda_min: float | None) -> int:
    """How many schedule steps a sampler may visit, 0..top-1: the start ``max_step`` + 1 (a noised
    image starts where it is) or, from pure noise, T (lowered by ``lambda_min``, see :func:`top_step`)."""
    abar = diffusion.schedule.alphas_cumprod
    top = top_step(abar, diffusion.T - 1, lambda_min) + 1 if max_step is None else int(max_step) + 1
    if not 1 <= top <= diffusion.T:
        raise ConfigError(f"start step {max_step} is outside the schedule's 0..{diffusion.T - 1}")
    return top


def logsnr_timesteps(abar: torch.Tensor, top: int, steps: int) -> list[int]:
    """``steps`` increasing steps in 0..top whose λ are uniform between λ_top and λ_0, each λ
    mapped to the step of nearest λ (DPM-Solver's 'logSNR' grid; better than uniform in k at
    few steps); where rounding repeats a step the next one is taken, so all stay distinct.

    Args:
        abar: float64 ᾱ table of the schedule.
        top: highest step (the start).
        steps: evaluations, 1 <= steps <= top + 1.
    """
    check_steps(steps)
    if steps > top + 1:
        raise ConfigError(f"sampler.steps={steps} exceeds the {top + 1} steps below the start step {top}")
    if steps == 1:
        return [top]
    lam = half_log_snr(abar[: top + 1])  # decreasing in k
    targets = torch.linspace(float(lam[top]), float(lam[0]), steps, dtype=torch.float64)
    return distinct_nearest_steps(lam, targets)


def karras_timesteps(abar: torch.Tensor, top: int, steps: int, rho: float = KARRAS_RHO) -> list[int]:
    """``steps`` increasing steps in 0..top on EDM's grid (Karras et al. 2022, eq. 5): σ^{1/ρ} uniform
    between σ_top^{1/ρ} and σ_0^{1/ρ}, σ = √((1-ᾱ)/ᾱ) = e^{-λ}, each σ mapped to the step of nearest λ
    (EDM's rounding for discrete networks), kept distinct as in :func:`logsnr_timesteps`. Steps in
    σ are at most a few-fold apart, also at the top (σ_{T-1} is 157 on the linear schedule and about
    20,000 on the cosine one), which a solver stepping in σ needs.

    Args:
        abar: float64 ᾱ table of the schedule.
        top: highest step (the start).
        steps: evaluations, 1 <= steps <= top + 1.
        rho: ρ of the grid (EDM: 7; ρ -> inf is the log-SNR grid).
    """
    check_steps(steps)
    if steps > top + 1:
        raise ConfigError(f"sampler.steps={steps} exceeds the {top + 1} steps below the start step {top}")
    if steps == 1:
        return [top]
    lam = half_log_snr(abar[: top + 1])
    inv = torch.linspace(math.exp(-float(lam[top]) / rho), math.exp(-float(lam[0]) / rho), steps, dtype=torch.float64)  # σ^{1/ρ}
    return distinct_nearest_steps(lam, -rho * torch.log(inv))


def distinct_nearest_steps(lam: torch.Tensor, targets: torch.Tensor) -> list[int]:
    """Increasing distinct steps of nearest λ to ``targets`` (from λ_top to λ_0, first and last
    included); where rounding repeats a step the next one is taken, and the top stays the top."""
    top = len(lam) - 1
    ks = sorted(int(k) for k in nearest_steps(lam, targets))
    out: list[int] = []
    for k in ks:  # ascending: repeated small steps move up
        out.append(max(k, out[-1] + 1) if out else k)
    for i in range(len(out) - 1, -1, -1):  # and the top stays the top
        out[i] = min(out[i], top - (len(out) - 1 - i))
    return out


class StackedRandomGenerator:
    """One ``torch.Generator`` per sample, seeded ``seed + index``: sample i is the same image
    whatever the batch size or position in the batch (as in EDM).

    Args:
        device: where the numbers are generated.
        seeds: one seed per sample of the batch.
    """

    def __init__(self, device: torch.device | str, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator(device).manual_seed(int(s) % (1 << 63)) for s in seeds]
        self.device = torch.device(device)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """Standard normal noise of shape (len(seeds), *shape)."""
        return torch.stack([torch.randn(tuple(shape), generator=g, device=self.device) for g in self.generators])


class BatchRandomGenerator:
    """One ``torch.Generator`` for the whole batch: each draw is one (batch, *shape) tensor from it
    (the regimes' trajectories, reproducible from one seed per batch rather than one per sample).

    Args:
        generator: the source of the noise.
        batch: rows of every draw.
        dtype: the noise's dtype.
        device: where the noise is made.
    """

    def __init__(
        self, generator: torch.Generator, batch: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
    ) -> None:
        self.generator, self.batch, self.dtype, self.device = generator, int(batch), dtype, torch.device(device)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """Standard normal noise of shape (batch, *shape)."""
        return torch.randn((self.batch, *shape), generator=self.generator, dtype=self.dtype, device=self.device)


def check_timesteps(timesteps: Sequence[int], T: int) -> list[int]:
    """An explicit list of visited steps: increasing, distinct, within 0..T-1."""
    out = [int(k) for k in timesteps]
    if not out or out[0] < 0 or out[-1] > T - 1 or any(b <= a for a, b in zip(out[:-1], out[1:], strict=True)):
        raise ConfigError(f"visited steps must increase strictly within 0..{T - 1}, got {out[:3]}..{out[-3:]}")
    return out


def make_eps_fn(model: torch.nn.Module, diffusion: GaussianDiffusion, autocast=None, guidance_scale: float = 1.0) -> EpsFn:
    """Wrap a network into ε̂(x_k, k, y=None) in float32, whatever the training objective and precision.

    Args:
        model: the network (a conditional one takes labels ``y``; without them it predicts for the null class).
        diffusion: its schedule and objective.
        autocast: context manager factory of the runtime's precision.
        guidance_scale: classifier-free guidance s when labels are given: ε_∅ + s (ε_y - ε_∅). s = 1 is
            one conditional evaluation and s = 0 one unconditional evaluation, exactly; any other s
            evaluates both halves in one batch.
    """
    import contextlib

    from ddpm.conditioning import guided

    ctx = autocast or contextlib.nullcontext
    scale = float(guidance_scale)

    def eps_fn(x: torch.Tensor, k: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None or scale == 0.0:
            with ctx():
                out = model(x, k)
            return diffusion.eps_from_output(x, k, out)
        if scale == 1.0:
            with ctx():
                out = model(x, k, y)
            return diffusion.eps_from_output(x, k, out)
        null = torch.full_like(y, _num_classes(model))
        xx, kk = torch.cat([x, x]), torch.cat([k, k])
        with ctx():
            out = model(xx, kk, torch.cat([y, null]))
        eps_cond, eps_uncond = diffusion.eps_from_output(xx, kk, out).chunk(2)
        return guided(eps_uncond, eps_cond, scale)

    return eps_fn


def _num_classes(model: torch.nn.Module) -> int:
    """The class count (= the null label) of a network, through torch.compile and DDP wrappers."""
    base = getattr(model, "_orig_mod", model)
    base = getattr(base, "module", base)
    n = getattr(base, "num_classes", None)
    if not n:
        raise ValueError("class labels and guidance need a conditional network (model.num_classes)")
    return int(n)


class Sampler(ABC):
    """Base class: integrate the reverse process from x_T ~ N(0, I) to x_0.

    Args:
        diffusion: the schedule and its derived tables.
        steps: network evaluations (None: all T steps).
        spacing: timestep spacing (see :func:`timestep_sequence`).
        clip_denoised: clamp the predicted x̂_0 to the data range [-1, 1] at every step.
        max_step: highest schedule step visited (default T-1); lower values denoise a partly
            noised x_{max_step} instead of sampling from pure noise.
        grid: ``time`` (``spacing`` over k), ``logsnr`` (uniform in λ, see :func:`logsnr_timesteps`) or
            ``karras`` (EDM's ρ = 7 grid in σ, see :func:`karras_timesteps`).
        lambda_min: start no lower than this λ when sampling from pure noise (see :func:`top_step`).
        timesteps: the visited steps themselves, increasing (instead of ``steps``, ``spacing`` and ``grid``).
        dtype: the dtype of the states and ε (float64: the regimes' chains on flattened points).
    """

    stochastic = False

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        steps: int | None = None,
        spacing: str = "leading",
        clip_denoised: bool = True,
        max_step: int | None = None,
        grid: str = "time",
        lambda_min: float | None = None,
        timesteps: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.diffusion = diffusion
        self.dtype = dtype
        abar = diffusion.schedule.alphas_cumprod
        if grid not in GRIDS:
            raise ConfigError(f"unknown sampler.grid {grid!r}; choose one of {', '.join(GRIDS)}")
        top = start_steps(diffusion, max_step, lambda_min)
        if timesteps is not None:
            self.timesteps = check_timesteps(timesteps, diffusion.T)
        elif grid == "logsnr":
            self.timesteps = logsnr_timesteps(abar, top - 1, top if steps is None else steps)
        elif grid == "karras":
            self.timesteps = karras_timesteps(abar, top - 1, top if steps is None else steps)
        else:
            self.timesteps = timestep_sequence(top, top if steps is None else steps, spacing)
        self.clip_denoised = clip_denoised
        self.abar = abar[self.timesteps].tolist()  # ᾱ at the visited steps, float64

    @property
    def num_evaluations(self) -> int:
        return len(self.timesteps)

    def x0_from_eps(self, x: torch.Tensor, abar: float, eps: torch.Tensor) -> torch.Tensor:
        x0 = GaussianDiffusion.x0_at(x, eps, abar)
        return x0.clamp(-1, 1) if self.clip_denoised else x0

    def denoise(self, eps_fn: EpsFn, x: torch.Tensor, k: torch.Tensor, abar: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One network evaluation at steps ``k`` (ᾱ = ``abar``): (ε̂, x̂_0) in the sampler's dtype; with
        ``clip_denoised`` x̂_0 is clamped and ε̂ made consistent with it."""
        eps = eps_fn(x, k).to(self.dtype)
        x0 = self.x0_from_eps(x, abar, eps)
        if self.clip_denoised:  # keep ε consistent with the clipped x̂_0
            eps = (x - abar**0.5 * x0) / (1 - abar) ** 0.5
        return eps, x0

    @abstractmethod
    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, rng: StackedRandomGenerator | None) -> torch.Tensor:
        """Move from visited step i (``timesteps[i]``) to step i-1 (or to x_0 when i == 0)."""

    def reset(self) -> None:  # noqa: B027 - optional hook, a no-op for one-step samplers
        """Clear any multistep history (called at the start of :meth:`sample`)."""

    @torch.inference_mode()
    def sample(
        self,
        eps_fn: EpsFn,
        x_T: torch.Tensor,
        rng: StackedRandomGenerator | BatchRandomGenerator | None = None,
        callback: Callback | None = None,
        progress=None,
        start: int | None = None,
        stop: int = 0,
    ) -> torch.Tensor:
        """Run the reverse process from ``x_T``; stochastic samplers draw their noise from ``rng``.

        Args:
            eps_fn: ε̂(x_k, k).
            x_T: the state at the visited step ``start``.
            rng: the noise of stochastic samplers.
            callback: called with (i, k, x_k, x̂_0) after each evaluation.
            progress: a tqdm bar, advanced once per evaluation.
            start: index into ``timesteps`` of the state's step (default the last: sampling from noise).
            stop: index into ``timesteps`` to stop at: 0 runs all the way to x̂_0, i > 0 returns the
                state at ``timesteps[i]`` (not evaluated there); a multistep sampler's history restarts.
        """
        self.require_rng(rng)
        self.reset()
        x = x_T.to(self.dtype)
        top = len(self.timesteps) - 1 if start is None else int(start)
        for i in range(top, stop if stop > 0 else -1, -1):
            eps, x0 = self.evaluate(eps_fn, x, i, self.timesteps[i], self.abar[i], callback, progress)
            x = self.step(i, x, eps, x0, rng)
        return x

    def require_rng(self, rng: StackedRandomGenerator | BatchRandomGenerator | None) -> None:
        """Refuse to run a stochastic sampler without the generator its noise comes from."""
        if self.stochastic and rng is None:
            raise ValueError(f"{type(self).__name__} needs a random generator")

    def evaluate(
        self, eps_fn: EpsFn, x: torch.Tensor, i: int, k: int, abar: float, callback: Callback | None = None, progress=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One network evaluation, as every sampler's loop makes it: (ε̂, x̂_0) at step ``k`` by
        :meth:`denoise`, then ``callback(i, k, x, x̂_0)`` and one tick of ``progress``.

        Args:
            eps_fn: ε̂(x_k, k).
            x: the state at step ``k``.
            i: the evaluation's index for the callback (``timesteps[i] == k``).
            k: the schedule step.
            abar: ᾱ_k.
            callback: called with (i, k, x_k, x̂_0).
            progress: a tqdm bar.
        """
        kk = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
        eps, x0 = self.denoise(eps_fn, x, kk, abar)
        if callback is not None:
            callback(i, k, x, x0)
        if progress is not None:
            progress.update(1)
        return eps, x0
