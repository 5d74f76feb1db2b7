"""The workloads ``scripts/benchmark.py`` times: ``ddpm-train``'s own step and a DDIM sampling run.

A training step is :meth:`ddpm.train.trainer.Trainer.train_step` of a real :class:`Trainer` (batches
drawn from its in-memory images, loss, backward, clipping, AdamW, LR schedule and EMA, exactly as
``ddpm-train`` takes it), built from the ``train`` config composed with the model preset and the
``runtime`` group of the :class:`Variant`: device, precision, channels_last, compile and TF32 are
``ddpm/runtime.py``'s switches, set by ``setup_runtime`` as in every command. The images are a folder
of random PNGs at the preset's resolution (the data's pixels do not change the arithmetic).
diffusers' ``UNet2DModel`` is timed in the same Trainer, built in place of our U-Net
(:func:`diffusers_twin`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from ddpm.benchmarking import Timing, count_flops, sync, time_it
from ddpm.cli import compose_checked
from ddpm.diffusion import GaussianDiffusion
from ddpm.models import build_model
from ddpm.runtime import resolve_memory_format, setup_runtime
from ddpm.samplers import DDIMSampler, make_eps_fn
from ddpm.train import trainer as trainer_module

# Each preset at the resolution of the dataset it is meant for (conf/experiment): (dataset, side, channels).
PRESET_DATA = {
    "tiny": ("mnist", 32, 1),
    "mini": ("mnist", 32, 1),
    "small": ("mnist", 32, 1),
    "base": ("cifar10", 32, 3),
    "large": ("cats", 64, 3),
}
FLOP_BATCH = 2  # the FLOPs of a step are linear in the batch: counted on 2 images, reported per image


@dataclass
class Variant:
    """How the network runs, as the ``runtime`` group says it.

    Args:
        name: the row's label.
        channels_last: ``runtime.channels_last``.
        compile: ``runtime.compile``.
        precision: ``runtime.precision`` (fp32, bf16, fp16).
        tf32: ``runtime.tf32`` (TF32 matrix products on CUDA; off unless the variant is about it).
    """

    name: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    precision: str = "fp32"
    tf32: bool = False

    def overrides(self, device: str, threads: int | None) -> list[str]:
        """The ``runtime.*`` overrides of this variant on ``device`` with ``threads`` torch threads (None: torch's)."""
        return [
            f"runtime.device={device}",
            f"runtime.precision={self.precision}",
            f"runtime.channels_last={str(self.channels_last).lower()}",
            f"runtime.compile={str(self.compile).lower()}",
            f"runtime.tf32={str(self.tf32).lower()}",
            f"runtime.num_threads={'null' if threads is None else threads}",
        ]

    @property
    def peak_key(self) -> str:
        """The peak this variant's matrix products run against: fp32, tf32, bf16 or fp16."""
        return "tf32" if self.tf32 and self.precision == "fp32" else self.precision


def default_variant(model_cfg: Any, device: torch.device) -> Variant:
    """What ``ddpm-train`` runs by default on ``device`` (fp32 preset): the memory format it picks.

    Args:
        model_cfg: the preset's ``model`` node.
        device: where it runs.
    """
    cl = resolve_memory_format(None, device, int(model_cfg.channels)) == torch.channels_last
    return Variant("fp32 channels_last" if cl else "fp32", channels_last=cl)


@dataclass
class Plan:
    """How long to measure.

    Args:
        warmup: untimed calls first.
        repeats: timed repeats.
        iters: calls per repeat.
        sample_steps: DDIM steps of a timed sampling run.
    """

    warmup: int
    repeats: int
    iters: int
    sample_steps: int


class DiffusersEps(torch.nn.Module):
    """diffusers' UNet2DModel behind our ``model(x, k) -> tensor`` interface."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


TWIN_KEYS = (
    "sample_size",
    "in_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "attention_head_dim",
    "resnet_time_scale_shift",
    "norm_num_groups",
)


def diffusers_twin(model_cfg: Any, image_size: int, channels: int) -> DiffusersEps:
    """diffusers' UNet2DModel with our preset's levels, widths, blocks, attention and heads.

    Args:
        model_cfg: our preset's ``model`` node.
        image_size: the images' side.
        channels: their channels.
    """
    from diffusers import UNet2DModel

    widths = [model_cfg.channels * m for m in model_cfg.channel_mult]
    res, down, up_res = image_size, [], []
    for _ in widths:
        down.append("AttnDownBlock2D" if res in model_cfg.attention_resolutions else "DownBlock2D")
        up_res.append(res)
        res //= 2
    up = ["AttnUpBlock2D" if r in model_cfg.attention_resolutions else "UpBlock2D" for r in reversed(up_res)]
    attn_widths = [w for w, r in zip(widths, up_res, strict=True) if r in model_cfg.attention_resolutions] or widths[:1]
    head_dims = {w // model_cfg.num_heads for w in attn_widths}
    if len(head_dims) != 1:
        raise ValueError("diffusers' UNet2DModel takes one attention_head_dim; this preset needs several")
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(widths),
        layers_per_block=model_cfg.num_res_blocks,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        attention_head_dim=head_dims.pop(),
        resnet_time_scale_shift="scale_shift" if model_cfg.scale_shift_norm else "default",
        norm_num_groups=math.gcd(32, *widths),  # ours: gcd(32, width) per layer
        dropout=model_cfg.dropout,
    )
    return DiffusersEps(unet)


def twin_config(model_cfg: Any, image_size: int, channels: int) -> str:
    """The twin's ``UNet2DModel(...)`` keys that matter, as one string for the report."""
    twin = diffusers_twin(model_cfg, image_size, channels)
    return ", ".join(f"{k}={v}" for k, v in twin.unet.config.items() if k in TWIN_KEYS)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Workloads:
    """Builds the timed callables of one benchmark run over a scratch folder of random images.

    Args:
        device: ``runtime.device`` of every workload (auto, cpu, cuda, cuda:N).
        threads: torch threads (None: torch's default).
        work: scratch folder (images, cache, run dir); a temp folder when None.
    """

    def __init__(self, device: str, threads: int | None, work: Path | None = None) -> None:
        self.device, self.threads = device, threads
        self.work = Path(work or tempfile.mkdtemp(prefix="ddpm-benchmark-"))
        self.folders: dict[tuple[int, int, int], Path] = {}
        self.hflip: dict[str, bool] = {}

    def close(self) -> None:
        """Remove the scratch folder."""
        shutil.rmtree(self.work, ignore_errors=True)

    def images(self, side: int, channels: int, count: int) -> Path:
        """A folder of at least ``count`` random PNGs of ``side`` x ``side`` (written once)."""
        key = next((k for k in self.folders if k[:2] == (side, channels) and k[2] >= count), None)
        if key is not None:
            return self.folders[key]
        folder = self.work / f"images_{channels}x{side}_{count}"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        shape = (side, side) if channels == 1 else (side, side, channels)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i}.png")
        self.folders[(side, channels, count)] = folder
        return folder

    def model_cfg(self, preset: str) -> DictConfig:
        """The ``model`` node of ``model=<preset>``."""
        return compose_checked("train", [f"model={preset}"]).model

    def config(self, preset: str, variant: Variant, batch: int) -> DictConfig:
        """The ``train`` config of ``ddpm-train model=<preset>`` at batch ``batch`` on the preset's data shape."""
        data, side, ch = PRESET_DATA[preset]
        if data not in self.hflip:  # flipped as ddpm-train flips the preset's dataset
            self.hflip[data] = bool(compose_checked("train", [f"dataset={data}"]).dataset.hflip)
        # a folder keeps dataset.test_fraction of its images for testing: twice the batch leaves one to train on
        folder = self.images(side, ch, 2 * max(batch, FLOP_BATCH) + 4)
        overrides = [
            f"model={preset}",
            "dataset=folder",
            f"dataset.path={folder}",
            f"dataset.image_size={side}",
            f"dataset.channels={ch}",
            f"dataset.hflip={str(self.hflip[data]).lower()}",
            "dataset.in_memory=true",
            f"paths.data_dir={self.work}",
            f"paths.cache_dir={self.work / 'cache'}",
            f"train.batch_size={batch}",
            "train.max_steps=1000000000",
            "train.progress=false",
            *variant.overrides(self.device, self.threads),
        ]
        return compose_checked("train", overrides)

    @contextlib.contextmanager
    def _network(self, twin: bool) -> Iterator[None]:
        """Our U-Net, or with ``twin`` diffusers' in its place wherever the Trainer builds its network."""
        if not twin:
            yield
            return
        with mock.patch.object(trainer_module, "build_model", lambda model_cfg, size, ch: diffusers_twin(model_cfg, size, ch)):
            yield

    def trainer(self, preset: str, variant: Variant, batch: int, twin: bool = False) -> trainer_module.Trainer:
        """A real :class:`Trainer` of ``preset`` (or of its diffusers twin) in ``variant`` at batch ``batch``."""
        cfg = self.config(preset, variant, batch)
        with self._network(twin):
            return trainer_module.Trainer(cfg, self.work / "run")

    def train_step(self, preset: str, variant: Variant, batch: int, twin: bool = False) -> Callable[[], Any]:
        """``ddpm-train``'s step (:meth:`Trainer.train_step`) of a fresh Trainer."""
        return self.trainer(preset, variant, batch, twin).train_step

    def sample_run(self, preset: str, variant: Variant, batch: int, steps: int, twin: bool = False) -> Callable[[], Any]:
        """A DDIM run of ``steps`` network evaluations on ``batch`` images, in inference mode, as
        ``ddpm-sample`` runs it: the runtime group applied, the network in its memory format under autocast."""
        cfg = self.config(preset, variant, 1)
        rt = setup_runtime(cfg.runtime)
        data, side, ch = PRESET_DATA[preset]
        model = diffusers_twin(cfg.model, side, ch) if twin else build_model(cfg.model, side, ch)
        memory_format = resolve_memory_format(cfg.runtime.channels_last, rt.device, int(cfg.model.channels))
        model = model.to(rt.device, memory_format=memory_format).eval()
        net = torch.compile(model) if cfg.runtime.compile else model
        diffusion = GaussianDiffusion.from_config(cfg.schedule, cfg.train)
        eps_fn = make_eps_fn(net, diffusion, rt.autocast)
        sampler = DDIMSampler(diffusion, steps=steps)
        x_T = torch.randn((batch, ch, side, side), generator=torch.Generator(rt.device).manual_seed(0), device=rt.device)
        x_T = x_T.to(memory_format=memory_format)

        def run() -> None:
            with torch.inference_mode():
                sampler.sample(eps_fn, x_T)

        return run

    def flops(self, preset: str, twin: bool = False) -> dict[str, float]:
        """FLOPs per image of one training step (the Trainer's: forward, loss, backward) and of one
        sampling step (one network evaluation), counted by :func:`ddpm.benchmarking.count_flops` in fp32."""
        step = self.train_step(preset, Variant("fp32"), FLOP_BATCH, twin)
        run = self.sample_run(preset, Variant("fp32"), FLOP_BATCH, 1, twin)
        return {"train": count_flops(step) / FLOP_BATCH, "sample": count_flops(run) / FLOP_BATCH}

    def params(self, preset: str, twin: bool = False) -> int:
        """Parameters of the preset's network (or of its twin)."""
        data, side, ch = PRESET_DATA[preset]
        model_cfg = self.model_cfg(preset)
        return n_params(diffusers_twin(model_cfg, side, ch) if twin else build_model(model_cfg, side, ch))


def first_call(make: Callable[[], Callable[[], Any]], device: torch.device) -> tuple[Callable[[], Any], float]:
    """Build a workload and call it once (compiling, warming the allocator): the callable and the wall seconds both took."""
    t0 = time.perf_counter()
    fn = make()
    fn()
    sync(device)
    return fn, time.perf_counter() - t0


def timed(fn: Callable[[], Any], device: torch.device, plan: Plan, iters: int, clock: Callable[[], float]) -> Timing:
    """:func:`ddpm.benchmarking.time_it` with the plan's warm-up and repeats."""
    return time_it(fn, device, plan.warmup, plan.repeats, iters, clock)


def load1() -> float:
    """The 1-minute load average (the machine's business when a row was measured)."""
    return os.getloadavg()[0]
