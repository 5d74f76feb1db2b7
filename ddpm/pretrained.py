"""Rebuild a trained network, its schedule and config from a checkpoint (``ckpt=`` of every command)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ddpm.checkpoint import load_checkpoint
from ddpm.data import load_dataset, to_model_range
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError, ConfigError
from ddpm.models import UNet, build_model
from ddpm.runtime import Runtime, resolve_memory_format, setup_runtime
from ddpm.schedules import NoiseSchedule


def resolve_ckpt(path: str | Path) -> Path:
    """What ``ckpt=`` names in every command: a checkpoint file, or a training run dir (its
    ``checkpoints/last.pt``) or checkpoints dir (its ``last.pt``).

    Args:
        path: the value of ``ckpt=``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for cand in (path / "checkpoints" / "last.pt", path / "last.pt"):
            if cand.is_file():
                return cand
        raise CheckpointError(f"no checkpoint in {path}: expected checkpoints/last.pt or last.pt there")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


@dataclass
class Pretrained:
    """A trained model ready for inference.

    Args:
        model: the network in eval mode on the requested device (EMA weights unless asked otherwise).
        diffusion: the schedule it was trained with.
        cfg: the resolved training config stored in the checkpoint.
        step: the optimizer step the checkpoint was written at.
        path: the checkpoint file.
    """

    model: UNet
    diffusion: GaussianDiffusion
    cfg: DictConfig
    step: int
    path: Path

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.model.in_channels, self.model.image_size, self.model.image_size)


def load_pretrained(
    path: str | Path, device: torch.device | str = "cpu", use_ema: bool = True, channels_last: bool | None = None
) -> Pretrained:
    """Load ``path`` safely and rebuild model + diffusion from the config stored in it.

    Args:
        path: a checkpoint written by ``ddpm-train``, or its run dir (see :func:`resolve_ckpt`).
        device: where the network will run.
        use_ema: load the EMA weights (the ones to sample from) rather than the raw ones.
        channels_last: weight memory format; ``None`` picks the faster one for the device
            (see :func:`ddpm.runtime.resolve_memory_format`).
    """
    path = resolve_ckpt(path)
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    try:
        diffusion = GaussianDiffusion(NoiseSchedule.from_config(cfg.schedule), cfg.train.objective)
        model = build_model(cfg.model, int(cfg.dataset.image_size), int(cfg.dataset.channels))
        model.load_state_dict(state["ema" if use_ema else "model"])
    except (KeyError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match the model its config describes: {str(exc).splitlines()[0]}") from exc
    device = torch.device(device)
    fmt = resolve_memory_format(channels_last, device, int(cfg.model.channels))
    model.to(device, memory_format=fmt).eval().requires_grad_(False)
    return Pretrained(model, diffusion, cfg, int(state["step"]), path)


def load_for_inference(cfg: DictConfig) -> tuple[Pretrained, Runtime]:
    """Set up ``cfg.runtime`` and load ``cfg.ckpt`` (``cfg.use_ema`` weights) for a command that runs the network.

    Args:
        cfg: a command config with ``ckpt``, ``use_ema`` and a ``runtime`` node.
    """
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise ConfigError("pass the checkpoint to use: ckpt=PATH (a .pt file or a training run dir)")
    rt = setup_runtime(cfg.runtime)
    pre = load_pretrained(cfg.ckpt, rt.device, use_ema=bool(cfg.use_ema), channels_last=cfg.runtime.channels_last)
    return pre, rt


def network(pre: Pretrained, runtime_cfg: DictConfig) -> torch.nn.Module:
    """The network to call: ``torch.compile``d when ``runtime.compile`` is set.

    Args:
        pre: the loaded checkpoint.
        runtime_cfg: the ``runtime`` node.
    """
    return torch.compile(pre.model) if runtime_cfg.compile else pre.model


def data_dir_of(cfg: DictConfig, pre: Pretrained) -> str:
    """``paths.data_dir`` when set, else the data root the checkpoint was trained from.

    Args:
        cfg: a command config with a ``paths`` node.
        pre: the loaded checkpoint.
    """
    if cfg.paths.data_dir:
        return str(cfg.paths.data_dir)
    stored = OmegaConf.select(pre.cfg, "paths.data_dir")
    if not stored:
        raise ConfigError("the checkpoint stores no data root; pass paths.data_dir=... (or set DDPM_DATA_DIR)")
    return str(stored)


def real_images(cfg: DictConfig, pre: Pretrained, n: int, split: str, seed: int) -> torch.Tensor:
    """``n`` images of the checkpoint's dataset in model range, picked by a seeded permutation.

    Args:
        cfg: a command config with a ``paths`` node.
        pre: the loaded checkpoint (its dataset and image shape).
        n: how many images.
        split: ``train`` or ``test``.
        seed: seed of the permutation.
    """
    data = load_dataset(pre.cfg.dataset, data_dir_of(cfg, pre), cfg.paths.cache_dir, split)
    if tuple(data.images.shape[1:]) != pre.shape:
        raise ConfigError(f"dataset images are {tuple(data.images.shape[1:])} but the model was trained on {pre.shape}")
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return to_model_range(data.images[idx])
