"""Bit-identical outputs: every sampler, the training loss and its step sampling against values recorded
before a refactoring (``tests/golden/samples.pt``).

The network is a tiny U-Net with seeded initial weights, so no data or training is needed. On the
machine and torch build that recorded the file the comparison is exact; elsewhere (another CPU's
kernels round differently) it allows float32 rounding. Record again only when outputs are meant to
change: ``python tests/test_golden_samples.py``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from conftest import compose_config
from omegaconf import DictConfig, OmegaConf

from ddpm.config import SamplerConfig
from ddpm.diffusion import GaussianDiffusion
from ddpm.generate import generate
from ddpm.models import build_model
from ddpm.samplers import build_sampler, make_eps_fn

GOLDEN = Path(__file__).resolve().parent / "golden" / "samples.pt"
SHAPE, N, SEED = (1, 8, 8), 2, 1234
# recorded name: (sampler, its overrides, max_step)
SAMPLERS = {
    "ddpm": ("ddpm", ["sampler.steps=20"], None),
    "ddpm_large": ("ddpm", ["sampler.variance=large", "sampler.steps=20"], None),
    "ddim": ("ddim", ["sampler.steps=10"], None),
    "ddim_eta1_from40": ("ddim", ["sampler.steps=8", "sampler.eta=1.0"], 40),
    "dpm_solver": ("dpm_solver", ["sampler.steps=8"], None),
    "dpm_solver_logsnr": ("dpm_solver", ["sampler.steps=8", "sampler.grid=logsnr", "sampler.lambda_min=-4.0"], None),
    "sde_dpm_solver": ("sde_dpm_solver", ["sampler.steps=8"], None),
    "edm_heun": ("edm_heun", ["sampler.steps=9"], None),
    "edm_heun_ode": ("edm_heun", ["sampler.steps=9", "sampler.s_churn=0.0"], None),
    "euler_maruyama": ("euler_maruyama", ["sampler.steps=20"], None),
    "pf_ode": ("pf_ode", ["sampler.steps=20"], None),
    "exact_score": ("exact_score", ["sampler.steps=20"], None),
    "exact_score_large": ("exact_score", ["sampler.steps=20", "sampler.variance=large"], None),
    "gaussian_score": ("gaussian_score", ["sampler.steps=20"], None),
}
BASE = ["model=tiny", "model.channels=8", "schedule.T=100", "schedule=cosine"]
CONF = Path(__file__).resolve().parents[1] / "conf"
LOSSES = [(obj, w) for obj in ("eps", "x0", "v") for w in ("none", "min_snr", "edm")]


def fingerprint() -> str:
    return f"torch {torch.__version__} cpu {torch.backends.cpu.get_cpu_capability()}"


class NearData(torch.nn.Module):
    """The ε whose x̂_0 is half the tanh of a random network's output, ε = (x_k - √ᾱ_k x̂_0) / √(1-ᾱ_k):
    the samples stay inside [-1, 1], where clipping hides no difference."""

    def __init__(self, net: torch.nn.Module, abar: torch.Tensor) -> None:
        super().__init__()
        self.net, self.a, self.s = net, abar.sqrt().float(), (1 - abar).sqrt().float()

    def forward(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        a, s = self.a[k].view(-1, 1, 1, 1), self.s[k].view(-1, 1, 1, 1)
        return (x - a * 0.5 * torch.tanh(self.net(x, k))) / s


def keep_states(states: list[torch.Tensor], i: int, k: int, x: torch.Tensor, x0: torch.Tensor) -> None:
    """A sampler callback that keeps every state and x̂_0 on the way."""
    states.extend([x.clone(), x0.clone()])


def sampler_config(name: str, overrides: list[str]) -> DictConfig:
    """``conf/sampler/<name>.yaml`` over the schema's defaults, then ``overrides`` (as composing would, faster)."""
    node = OmegaConf.load(CONF / "sampler" / f"{name}.yaml")
    node.pop("defaults")
    return OmegaConf.merge(
        OmegaConf.structured(SamplerConfig), node, OmegaConf.from_dotlist([o.removeprefix("sampler.") for o in overrides])
    )


def compute() -> dict[str, torch.Tensor]:
    """Every recorded output, computed on the CPU in one thread from fixed seeds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _compute()
    finally:
        torch.set_num_threads(threads)


def _compute() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    cfg = compose_config("train", BASE)
    model = build_model(cfg.model, SHAPE[1], SHAPE[0]).eval()
    with torch.no_grad():  # the output layer starts at zero: give it seeded weights, so x̂_0 depends on x and k
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    points = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    out = {}
    with torch.no_grad():
        diffusion = GaussianDiffusion.from_config(cfg.schedule, cfg.train)
        eps_fn = make_eps_fn(NearData(model, diffusion.schedule.alphas_cumprod), diffusion)
        for name, (sampler_name, overrides, max_step) in SAMPLERS.items():
            sampler = build_sampler(sampler_config(sampler_name, overrides), diffusion, max_step=max_step, points=points)
            states: list[torch.Tensor] = []
            record = functools.partial(keep_states, states)
            out[f"sample/{name}"] = generate(eps_fn, sampler, SHAPE, N, SEED, N, torch.device("cpu"), callback=record)
            out[f"trajectory/{name}"] = torch.stack(states)
        gen = torch.Generator().manual_seed(2)
        x0 = torch.rand(4, *SHAPE, generator=gen) * 2 - 1
        noise = torch.randn(4, *SHAPE, generator=gen)
        for objective, weighting in LOSSES:
            train = OmegaConf.merge(cfg.train, {"objective": objective, "loss_weighting": weighting, "timestep_sampling": "lognormal"})
            d = GaussianDiffusion.from_config(cfg.schedule, train)
            k = d.sample_timesteps(4, torch.Generator().manual_seed(3), torch.device("cpu"))
            out[f"steps/{objective}_{weighting}"] = k
            out[f"loss/{objective}_{weighting}"] = d.loss(
                lambda xk, kk: xk * 0.5 + kk.float().view(-1, 1, 1, 1) / 1000, x0, k, noise
            ).reshape(1)
    return out


def test_outputs_match_the_recorded_ones():
    golden = torch.load(GOLDEN, weights_only=True)
    recorded = golden.pop("fingerprint")
    now = compute()
    assert set(now) == set(golden)
    exact = "".join(chr(int(c)) for c in recorded.tolist()) == fingerprint()
    for name, value in now.items():
        if exact or value.dtype == torch.int64:
            assert torch.equal(value, golden[name]), name
        else:
            torch.testing.assert_close(value, golden[name], rtol=1e-4, atol=1e-4, msg=name)


if __name__ == "__main__":
    values = compute()
    values["fingerprint"] = torch.tensor([ord(c) for c in fingerprint()])
    GOLDEN.parent.mkdir(exist_ok=True)
    torch.save(values, GOLDEN)
    print(f"recorded {len(values) - 1} outputs into {GOLDEN} ({fingerprint()})")
