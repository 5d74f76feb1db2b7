"""The one path of every command that runs a trained network: ``ddpm-sample``, ``ddpm-evaluate``,
``ddpm-visualize`` and the dashboard's generator.

:func:`open_run` checks the config, refuses to replace an earlier run's outputs without
``overwrite=true``, sets up ``runtime`` and loads ``ckpt``; the :class:`Inference` it returns builds
the samplers and the ε function under those runtime settings and generates. The ``write_*``
functions write every output through :func:`ddpm.checkpoint.atomic_write`: a failed write (a full
disk) leaves no torn file, and an earlier run's file under that name stays as it was.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image

from ddpm.checkpoint import atomic_write
from ddpm.data import from_model_range, to_model_range
from ddpm.generate import generate
from ddpm.pretrained import Pretrained, load_for_inference, network, training_set
from ddpm.runlock import check_outputs
from ddpm.runtime import Runtime
from ddpm.samplers import POINT_SAMPLERS, Sampler, build_sampler, make_eps_fn
from ddpm.samplers.base import Callback, EpsFn


@dataclass
class Inference:
    """A checkpoint loaded for inference under a command's ``runtime`` settings.

    Args:
        cfg: the command config (``ckpt``, ``sampler``, ``runtime``, ``paths``).
        pre: the loaded checkpoint.
        rt: the runtime set up from ``cfg.runtime`` (device, precision, threads, TF32).
    """

    cfg: DictConfig
    pre: Pretrained
    rt: Runtime
    _eps: dict[float, EpsFn] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return self.rt.device

    @functools.cached_property
    def net(self) -> torch.nn.Module:
        """The network to call: ``torch.compile``d (once) with ``runtime.compile``."""
        return network(self.pre, self.cfg.runtime)

    def eps_fn(self, guidance_scale: float = 1.0) -> EpsFn:
        """The network as ε̂(x_k, k, y=None) in the runtime's precision (one per guidance scale).

        Args:
            guidance_scale: classifier-free guidance of a conditional network (1: plain conditional).
        """
        scale = float(guidance_scale)
        if scale not in self._eps:
            self._eps[scale] = make_eps_fn(self.net, self.pre.diffusion, self.rt.autocast, guidance_scale=scale)
        return self._eps[scale]

    @functools.cached_property
    def training_points(self) -> torch.Tensor:
        """The checkpoint's training images (its ``dataset.n`` subset) in model range on the device:
        what ``sampler=exact_score`` and ``gaussian_score`` sample with (read on first use)."""
        return to_model_range(training_set(self.cfg, self.pre).images).to(self.device)

    def sampler(self, sampler_cfg: DictConfig | None = None, max_step: int | None = None) -> Sampler:
        """The sampler of ``sampler_cfg`` (default ``cfg.sampler``); ``exact_score`` and
        ``gaussian_score`` get the checkpoint's training images (read once).

        Args:
            sampler_cfg: a ``sampler`` config node.
            max_step: start the reverse process at this schedule step (denoising a noised image).
        """
        sampler_cfg = self.cfg.sampler if sampler_cfg is None else sampler_cfg
        points = self.training_points if sampler_cfg.name in POINT_SAMPLERS else None
        return build_sampler(sampler_cfg, self.pre.diffusion, max_step=max_step, points=points)

    def generate(
        self,
        sampler: Sampler,
        num_samples: int,
        seed: int,
        batch_size: int,
        guidance_scale: float = 1.0,
        progress: bool = False,
        callback: Callback | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``num_samples`` samples (float32 in model range, on CPU); sample i is seeded ``seed + i``
        (see :func:`ddpm.generate.generate`).

        Args:
            sampler: from :meth:`sampler`.
            num_samples: how many images.
            seed: seed of sample 0.
            batch_size: images per network call.
            guidance_scale: classifier-free guidance (with ``labels``).
            progress: show a progress bar over network evaluations.
            callback: forwarded to :meth:`Sampler.sample`.
            labels: the class of each sample for a conditional network (None: unconditional).
        """
        eps_fn = self.eps_fn(guidance_scale)
        return generate(
            eps_fn, sampler, self.pre.shape, num_samples, seed, batch_size, self.device, progress=progress, callback=callback, labels=labels
        )


def load(cfg: DictConfig) -> Inference:
    """Set up ``cfg.runtime`` and load ``cfg.ckpt`` (``cfg.use_ema`` weights).

    Args:
        cfg: a command config with ``ckpt``, ``use_ema``, ``sampler``, ``runtime`` and ``paths``.
    """
    pre, rt = load_for_inference(cfg)
    return Inference(cfg, pre, rt)


def open_run(
    cfg: DictConfig,
    run_dir: str | Path,
    validate: Callable[[Any], None],
    outputs: tuple[str, ...],
    preflight: Callable[[], None] | None = None,
) -> Inference:
    """A command's opening, in the order that fails fastest: check ``cfg``, refuse to replace an
    earlier run's ``outputs`` in ``run_dir`` without ``overwrite=true``, run ``preflight``, then load.

    Args:
        cfg: the command config (with an ``overwrite`` key).
        run_dir: the command's run dir.
        validate: the command's checks (``validate_<command>``).
        outputs: what the command writes into ``run_dir``.
        preflight: further checks that must fail before the checkpoint loads (e.g. a missing weights file).
    """
    validate(cfg)
    check_outputs(Path(run_dir), outputs, bool(cfg.overwrite))
    if preflight is not None:
        preflight()
    return load(cfg)


def image_of(x: torch.Tensor) -> Image.Image:
    """One image (C, H, W) in model range as an 8-bit PIL image (grey for one channel).

    Args:
        x: the image, float in [-1, 1].
    """
    arr = from_model_range(x).cpu()
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0].numpy(), mode="L")
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")


def write_bytes(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically.

    Args:
        path: the output file.
        data: its content.
    """
    raw = data.encode() if isinstance(data, str) else data
    return atomic_write(path, lambda f: f.write(raw))


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically.

    Args:
        path: the output file.
        obj: a JSON-serialisable object.
    """
    return write_bytes(path, json.dumps(obj, indent=2) + "\n")


def write_png(path: str | Path, image: Image.Image) -> Path:
    """Write a PIL image as a PNG to ``path`` atomically.

    Args:
        path: the output file.
        image: the image.
    """
    return atomic_write(path, lambda f: image.save(f, format="PNG"))
