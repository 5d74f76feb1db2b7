"""The memorisation law on a Gaussian mixture in minutes: a small MLP score network trained on n points.

As in the Gaussian-mixture runs of Bonnaire et al. (2025): n points of a mixture of ``classes``
isotropic Gaussians in d dimensions (:func:`ddpm.regimes.data.sample_synthetic`), an MLP that
predicts ε from (x_k, k) trained with :meth:`ddpm.diffusion.GaussianDiffusion.loss` (Adam, constant
learning rate, full batch up to ``max_batch``), and on a log grid of steps the same measurements as
``ddpm-train``'s ``train.regimes_every`` (:mod:`ddpm.regimes.monitor`): f_mem of samples drawn with
DDIM from fixed noise under the copy criterion, and the ε-MSE on fixed held-out and training points,
appended to ``regimes.jsonl``. :func:`ddpm.regimes.law.collect` reads those rows as it reads a
U-Net's.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from ddpm.diffusion import GaussianDiffusion
from ddpm.memorisation import memorisation
from ddpm.regimes.data import sample_synthetic
from ddpm.regimes.monitor import LOG_FILE, append_row, regimes_steps
from ddpm.samplers import build_sampler
from ddpm.schedules import NoiseSchedule

HELDOUT = 1024  # held-out (and training) points of the loss estimates


@dataclass
class GMMRun:
    """One Gaussian-mixture run.

    Args:
        n: training points.
        d: dimension.
        classes: mixture components (means ±μ̃ for two, random directions otherwise).
        mu: μ̃: class means have |m|² = d μ̃².
        sigma: standard deviation within a component.
        width: hidden width of the MLP.
        depth: hidden layers.
        steps: training steps.
        lr: Adam learning rate (constant).
        max_batch: batch = min(max_batch, n), the whole set for small n.
        first: first measured step; then ``per_decade`` log-spaced steps per decade.
        per_decade: measured steps per decade.
        samples: samples per measurement (f_mem).
        sampler_steps: DDIM steps of those samples.
        threshold: k of the copy criterion.
        seed: seed of the data, the initial weights and the training noise.
    """

    n: int
    d: int = 8
    classes: int = 2
    mu: float = 1.0
    sigma: float = 1.0
    width: int = 256
    depth: int = 3
    steps: int = 10000
    lr: float = 1e-3
    max_batch: int = 64
    first: int = 100
    per_decade: int = 8
    samples: int = 256
    sampler_steps: int = 50
    threshold: float = 1.0 / 3.0
    seed: int = 0


class MLPDenoiser(nn.Module):
    """ε_θ(x_k, k): an MLP on [x, sinusoidal embedding of k].

    Args:
        d: data dimension.
        width: hidden width.
        depth: hidden layers.
        T: schedule steps (the embedding's scale).
    """

    def __init__(self, d: int, width: int, depth: int, T: int, emb: int = 64) -> None:
        super().__init__()
        self.T, self.emb = T, emb
        layers: list[nn.Module] = [nn.Linear(d + emb, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers.append(nn.Linear(width, d))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        half = self.emb // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=x.device) / half)
        angles = k.float()[:, None] * freqs[None]
        return self.net(torch.cat([x, angles.sin(), angles.cos()], 1))


def _loss(diffusion: GaussianDiffusion, model: nn.Module, x0: torch.Tensor, k: torch.Tensor, z: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((model(diffusion.q_sample(x0, k, z), k) - z) ** 2).mean())


def train_gmm(run: GMMRun, out_dir: str | Path) -> list[dict[str, Any]]:
    """Train one run, appending a ``regimes.jsonl`` row at each measured step; returns the rows.

    Args:
        run: the run's settings.
        out_dir: its folder (``regimes.jsonl`` and ``run.json``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / LOG_FILE).unlink(missing_ok=True)  # a run is short: it starts over rather than resumes
    source = OmegaConf.create({"name": "mixture", "d": run.d, "classes": run.classes, "mu": run.mu, "sigma": run.sigma, "seed": run.seed})
    x, _ = sample_synthetic(source, run.n, run.seed)
    held, _ = sample_synthetic(source, HELDOUT, run.seed + 1_000_003)
    x, held = x.float(), held.float()
    schedule = NoiseSchedule.from_config(OmegaConf.create({"name": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02}))
    diffusion = GaussianDiffusion(schedule)
    sampler = build_sampler(
        OmegaConf.create({"name": "ddim", "steps": run.sampler_steps, "spacing": "linspace", "clip_denoised": False, "eta": 0.0}), diffusion
    )
    torch.manual_seed(run.seed)
    model = MLPDenoiser(run.d, run.width, run.depth, schedule.T)
    opt = torch.optim.Adam(model.parameters(), lr=run.lr)
    g = torch.Generator().manual_seed(run.seed + 1)
    fixed = torch.Generator().manual_seed(run.seed + 2)
    x_T = torch.randn(run.samples, run.d, generator=fixed)
    eval_k = torch.randint(0, schedule.T, (HELDOUT,), generator=fixed)
    eval_z = torch.randn(HELDOUT, run.d, generator=fixed)
    train_eval = x[torch.randint(0, run.n, (HELDOUT,), generator=fixed)]
    batch = min(run.max_batch, run.n)
    measure_at = set(regimes_steps(run.first, run.per_decade, run.steps))
    rows, started = [], time.perf_counter()
    for step in range(1, run.steps + 1):
        idx = torch.randperm(run.n, generator=g)[:batch] if batch < run.n else torch.arange(run.n)
        k = torch.randint(0, schedule.T, (batch,), generator=g)
        z = torch.randn(batch, run.d, generator=g)
        loss = diffusion.loss(model, x[idx], k, z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in measure_at:
            model.eval()
            with torch.no_grad():
                samples = sampler.sample(lambda xk, kk: model(xk, kk), x_T.clone())
            model.train()
            copies = memorisation(samples.double(), x.double(), run.threshold)
            row = {
                "step": step,
                "n": run.n,
                "d": run.d,
                "part": None,
                "samples": run.samples,
                "threshold": run.threshold,
                "memorised_fraction": copies.fraction,
                "memorised_se": copies.fraction_se,
                "heldout_loss": _loss(diffusion, model, held, eval_k, eval_z),
                "train_loss": _loss(diffusion, model, train_eval, eval_k, eval_z),
                "seconds": round(time.perf_counter() - started, 2),
            }
            append_row(out / LOG_FILE, row)
            rows.append(row)
    (out / "run.json").write_text(OmegaConf.to_yaml(OmegaConf.create(asdict(run))))
    return rows
