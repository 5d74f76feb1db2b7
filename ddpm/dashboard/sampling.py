"""The Sample page's work: a ``ddpm-sample`` run (the command's own function) into the outputs root,
and a one-image-per-click generator over a safely loaded checkpoint, loaded and run through
:mod:`ddpm.inference` as the commands are (the ``runtime`` settings of ``conf/sample.yaml`` and its overrides)."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from PIL import Image

from ddpm.cli import compose_checked
from ddpm.dashboard.launch import COMPOSE_LOCK
from ddpm.dashboard.paths import inside
from ddpm.inference import Inference, image_of, load
from ddpm.pretrained import Pretrained


def sample_overrides(ckpt: Path, sampler: str, steps: int | None, seed: int, count: int, noise_gif: bool) -> list[str]:
    """The ``ddpm-sample`` command line for the page's choices.

    Args:
        ckpt: the checkpoint file (resolved inside the outputs root).
        sampler: an option of the ``sampler`` config group.
        steps: network evaluations (None: the sampler's default).
        seed: sample i is seeded ``seed + i``.
        count: number of images.
        noise_gif: also write noise.gif (needs the checkpoint's dataset on this machine).
    """
    if count < 1:
        raise ValueError(f"number of images must be at least 1, got {count}")
    out = [f"ckpt={ckpt}", f"sampler={sampler}", f"seed={seed}", f"num_samples={count}", f"grid_images={count}"]
    out += [f"gif.num_images={min(count, 16)}", f"gif.noise={str(noise_gif).lower()}", "progress=false"]
    if steps is not None:
        out.append(f"sampler.steps={steps}")
    return out


def compose_sample(overrides: list[str]) -> DictConfig:
    """The ``ddpm-sample`` config for ``overrides``, with the CLI's one-line errors.

    Args:
        overrides: from :func:`sample_overrides`.
    """
    import ddpm.sample  # noqa: F401  (its ``main`` registers the config schemas, as for the command)

    with COMPOSE_LOCK:
        return compose_checked("sample", overrides)


def run_sample(root: str | Path, ckpt: str | Path, sampler: str, steps: int | None, seed: int, count: int, noise_gif: bool) -> Path:
    """Run ``ddpm-sample`` (its :func:`ddpm.sample.sample`) into ``<root>/sample/<run>-<time>``.

    Args:
        root: the outputs root.
        ckpt: the checkpoint (relative to the root).
        sampler: an option of the ``sampler`` group.
        steps: network evaluations (None: the sampler's default).
        seed: first seed.
        count: number of images.
        noise_gif: also write noise.gif.
    Returns:
        the output directory (samples.png, sampling.gif, noise.gif, sample.json).
    """
    from ddpm.sample import sample

    path = inside(root, ckpt)
    cfg = compose_sample(sample_overrides(path, sampler, steps, seed, count, noise_gif))
    run_name = path.parent.parent.name if path.parent.name == "checkpoints" else path.parent.name
    stem = f"{run_name}-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    out = inside(root, Path("sample") / stem)
    n = 1
    while out.exists():  # two clicks within a second: never write into an earlier sample's folder
        n += 1
        out = inside(root, Path("sample") / f"{stem}-{n}")
    sample(cfg, out)
    return out


def preview_grid(png: bytes, width: int) -> bytes:
    """``samples.png`` upscaled by a whole factor (nearest: the pixels stay sharp) to about ``width``
    pixels: as large as the GIFs beside it (``ddpm-sample`` writes the grid at 1 px per pixel, the
    GIFs larger).

    Args:
        png: the PNG file's bytes.
        width: the width of the GIFs (0: twice the grid's own).
    """
    grid = Image.open(io.BytesIO(png))
    k = max(1, round(width / grid.width)) if width else 2
    if k <= 1:
        return png
    buf = io.BytesIO()
    grid.resize((grid.width * k, grid.height * k), resample=Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def load_checkpoint_model(root: str | Path, ckpt: str | Path, overrides: Sequence[str] = ()) -> Inference:
    """A checkpoint inside the root through the safe loader (``weights_only``), EMA weights, under the
    ``runtime`` of the ``ddpm-sample`` config (device, precision, threads, compile).

    Args:
        root: the outputs root.
        ckpt: the checkpoint (relative to the root).
        overrides: further ``ddpm-sample`` overrides (e.g. ``runtime.precision=bf16``).
    """
    return load(compose_sample([f"ckpt={inside(root, ckpt)}", *overrides]))


@dataclass
class Generator:
    """One new image per call, from a loaded model; call ``i`` draws seed ``first_seed + i``.

    Args:
        model: the loaded checkpoint and its runtime (:func:`load_checkpoint_model`).
        sampler_cfg: a ``sampler`` config node (from :func:`compose_sample`).
        first_seed: seed of the first image.
    """

    model: Inference
    sampler_cfg: DictConfig
    first_seed: int = 0
    count: int = 0

    @property
    def pre(self) -> Pretrained:
        return self.model.pre

    def __call__(self) -> tuple[int, Image.Image]:
        """The next (seed, image)."""
        seed = self.first_seed + self.count
        self.count += 1
        with torch.inference_mode():
            x = self.model.generate(self.model.sampler(self.sampler_cfg), 1, seed, 1)
        return seed, image_of(x[0])
