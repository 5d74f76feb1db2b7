"""Rebuild a trained network, its schedule and config from a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ddpm.checkpoint import load_checkpoint
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError
from ddpm.models import UNet, build_model
from ddpm.runtime import resolve_memory_format
from ddpm.schedules import NoiseSchedule


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
        path: a checkpoint written by ``ddpm-train``.
        device: where the network will run.
        use_ema: load the EMA weights (the ones to sample from) rather than the raw ones.
        channels_last: weight memory format; ``None`` picks the faster one for the device
            (see :func:`ddpm.runtime.resolve_memory_format`).
    """
    path = Path(path).expanduser()
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
