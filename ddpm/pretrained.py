"""Rebuild a trained network, its schedule and config from a checkpoint (``ckpt=`` of every command)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ddpm.checkpoint import load_checkpoint
from ddpm.data import ImageData, load_dataset, open_split, to_model_range
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError, ConfigError
from ddpm.export_format import SUFFIX as EXPORT_SUFFIX
from ddpm.export_format import is_export, read_export, subset_from_json
from ddpm.models import UNet, build_model
from ddpm.paths import data_root, resolve_data_root
from ddpm.runtime import Runtime, resolve_memory_format, setup_runtime
from ddpm.schedules import NoiseSchedule


def resolve_ckpt(path: str | Path) -> Path:
    """What ``ckpt=`` names in every command: a checkpoint file, an exported ``.safetensors`` file,
    a training run dir (its ``checkpoints/last.pt``), a checkpoints dir (its ``last.pt``) or a
    ``ddpm-export`` run dir (its ``model.safetensors``).

    Args:
        path: the value of ``ckpt=``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for cand in (path / "checkpoints" / "last.pt", path / "last.pt", path / f"model{EXPORT_SUFFIX}"):
            if cand.is_file():
                return cand
        raise CheckpointError(f"no checkpoint in {path}: expected checkpoints/last.pt, last.pt or model{EXPORT_SUFFIX} there")
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
        data_subset: the record of its training subset (``dataset.n``), or None when it trained on every image.
    """

    model: UNet
    diffusion: GaussianDiffusion
    cfg: DictConfig
    step: int
    path: Path
    data_subset: dict | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.model.in_channels, self.model.image_size, self.model.image_size)


def load_pretrained(
    path: str | Path, device: torch.device | str = "cpu", use_ema: bool = True, channels_last: bool | None = None
) -> Pretrained:
    """Load ``path`` safely and rebuild model + diffusion from the config stored in it.

    Args:
        path: a checkpoint written by ``ddpm-train``, its run dir, or a ``.safetensors`` file
            written by ``ddpm-export`` with its JSON beside it (see :func:`resolve_ckpt`).
        device: where the network will run.
        use_ema: load the EMA weights (the ones to sample from) rather than the raw ones.
        channels_last: weight memory format; ``None`` picks the faster one for the device
            (see :func:`ddpm.runtime.resolve_memory_format`).
    """
    path = resolve_ckpt(path)
    part = "ema" if use_ema else "model"
    if is_export(path):
        weights, meta = read_export(path)
        if meta.get("weights") != part:
            raise CheckpointError(f"{path} holds the {meta.get('weights')!r} weights, not the {part!r} ones asked for (use_ema={use_ema})")
        state = {"config": meta["config"], "step": meta["step"], "data_subset": subset_from_json(meta.get("data_subset"))}
    else:
        state = load_checkpoint(path)
        weights = state.get(part)
    cfg = _stored_config(state, path)
    if not isinstance(weights, dict) or not weights:
        hint = "; pass use_ema=false to use the raw weights" if use_ema and isinstance(state.get("model"), dict) and state["model"] else ""
        raise CheckpointError(f"checkpoint {path} holds no {'EMA' if use_ema else 'model'} weights ('{part}'){hint}")
    try:
        diffusion = GaussianDiffusion(NoiseSchedule.from_config(cfg.schedule), cfg.train.objective)
        model = build_model(cfg.model, int(cfg.dataset.image_size), int(cfg.dataset.channels))
    except (KeyError, AttributeError, TypeError, ValueError) as exc:  # ConfigError is a ValueError
        raise CheckpointError(f"checkpoint {path} stores a config that cannot build its model: {' '.join(str(exc).split())}") from exc
    _verify_weights(weights, model.state_dict(), path, part)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not match the model its config describes: {str(exc).splitlines()[0]}") from exc
    device = torch.device(device)
    fmt = resolve_memory_format(channels_last, device, int(cfg.model.channels))
    model.to(device, memory_format=fmt).eval().requires_grad_(False)
    return Pretrained(model, diffusion, cfg, int(state["step"]), path, state.get("data_subset"))


# What a checkpoint's stored config must hold to rebuild the network and its schedule.
REQUIRED_CONFIG = ("schedule.name", "schedule.T", "train.objective", "model.channels", "dataset.image_size", "dataset.channels")


def _stored_config(state: dict, path: Path) -> DictConfig:
    """The training config stored in ``state``; a CheckpointError when it or a key needed to rebuild is absent."""
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"checkpoint {path} stores no training config; it cannot be rebuilt")
    if not isinstance(state.get("step"), int):
        raise CheckpointError(f"checkpoint {path} stores no step count")
    cfg = OmegaConf.create(state["config"])
    missing = [k for k in REQUIRED_CONFIG if OmegaConf.select(cfg, k, default=None) is None]
    if missing:
        raise CheckpointError(f"checkpoint {path} stores an incomplete config: {', '.join(missing)} missing")
    return cfg


def _shape(t: object) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _verify_weights(weights: dict, expected: dict[str, torch.Tensor], path: Path, part: str) -> None:
    """Refuse weights that cannot work in the model the stored config describes: absent, extra, of
    another shape, or not finite (they would sample NaN images). One line names the first offender.

    Args:
        weights: the checkpoint's state dict (``model`` or ``ema``).
        expected: the state dict of the model the stored config builds.
        path: the checkpoint (for the message).
        part: ``model`` or ``ema`` (for the message).
    """
    where = f"checkpoint {path}: the {part} weights"
    absent = [k for k in expected if k not in weights]
    if absent:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise CheckpointError(f"{where} lack {absent[0]}{more} that the model its config describes needs")
    extra = [k for k in weights if k not in expected]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise CheckpointError(f"{where} hold {extra[0]}{more} that the model its config describes does not have")
    wrong = [k for k, v in expected.items() if not isinstance(weights[k], torch.Tensor) or weights[k].shape != v.shape]
    if wrong:
        k = wrong[0]
        more = f" ({len(wrong)} weights differ)" if len(wrong) > 1 else ""
        raise CheckpointError(
            f"{where} hold {k} of shape {_shape(weights[k])} but the model its config describes needs {_shape(expected[k])}{more}"
        )
    bad = sum(int((~torch.isfinite(t)).sum()) for t in weights.values() if t.is_floating_point())
    if bad:
        total = sum(t.numel() for t in weights.values() if t.is_floating_point())
        raise CheckpointError(
            f"{where} hold {bad} non-finite values (NaN or inf) among {total}; they would sample NaN images, use an earlier checkpoint"
        )


def load_for_inference(cfg: DictConfig) -> tuple[Pretrained, Runtime]:
    """Set up ``cfg.runtime``, load ``cfg.ckpt`` (``cfg.use_ema`` weights) for a command that runs the
    network, and resolve ``cfg.paths.data_dir`` (:func:`ddpm.paths.resolve_data_root`).

    Args:
        cfg: a command config with ``ckpt``, ``use_ema``, ``runtime`` and ``paths`` nodes.
    """
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise ConfigError("pass the checkpoint to use: ckpt=PATH (a .pt file, a .safetensors export or a training run dir)")
    rt = setup_runtime(cfg.runtime)
    pre = load_pretrained(cfg.ckpt, rt.device, use_ema=bool(cfg.use_ema), channels_last=cfg.runtime.channels_last)
    resolve_data_root(cfg, OmegaConf.select(pre.cfg, "paths.data_dir"))  # null: the root the network was trained from
    return pre, rt


def network(pre: Pretrained, runtime_cfg: DictConfig) -> torch.nn.Module:
    """The network to call: ``torch.compile``d when ``runtime.compile`` is set.

    Args:
        pre: the loaded checkpoint.
        runtime_cfg: the ``runtime`` node.
    """
    return torch.compile(pre.model) if runtime_cfg.compile else pre.model


def data_dir_of(cfg: DictConfig, pre: Pretrained) -> str:
    """The data root for ``pre``'s dataset: ``paths.data_dir`` when set, else the root the checkpoint
    was trained from (:func:`ddpm.paths.data_root`).

    Args:
        cfg: a command config with a ``paths`` node.
        pre: the loaded checkpoint.
    """
    return data_root(cfg.paths, OmegaConf.select(pre.cfg, "paths.data_dir"))


def real_images(cfg: DictConfig, pre: Pretrained, n: int, split: str, seed: int) -> torch.Tensor:
    """``n`` images of the checkpoint's dataset in model range, picked by a seeded permutation.

    A dataset that streamed in training (``dataset.in_memory``) is not decoded whole: only the
    ``n`` picked images are (:func:`ddpm.data.open_split`), the very images the in-memory path picks.

    Args:
        cfg: a command config with a ``paths`` node.
        pre: the loaded checkpoint (its dataset and image shape).
        n: how many images.
        split: ``train`` or ``test``.
        seed: seed of the permutation.
    """
    data = open_split(pre.cfg.dataset, data_dir_of(cfg, pre), cfg.paths.cache_dir, split, load_dataset)
    if tuple(data.images.shape[1:]) != pre.shape:
        raise ConfigError(f"dataset images are {tuple(data.images.shape[1:])} but the model was trained on {pre.shape}")
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return to_model_range(data.images[idx])


def training_set(cfg: DictConfig, pre: Pretrained, data_dir: str | None = None) -> ImageData:
    """The images ``pre`` was trained on: its training subset (``dataset.n``) or the whole train split.

    A dataset that streamed in training comes as a :class:`ddpm.data.SplitImages` (decoded as it
    is read, e.g. chunk by chunk by the copy criterion); its subset, decoded.

    Args:
        cfg: a command config with a ``paths`` node.
        pre: the loaded checkpoint (its dataset node and subset record).
        data_dir: the data root (default: :func:`data_dir_of`).
    """
    from ddpm.data.subset import restore_subset

    full = open_split(pre.cfg.dataset, data_dir or data_dir_of(cfg, pre), cfg.paths.cache_dir, "train", load_dataset)
    if pre.data_subset is None and pre.cfg.dataset.get("n") not in (None, len(full)):
        raise CheckpointError(f"{pre.path} was trained on dataset.n={pre.cfg.dataset.n} images but records no subset")
    return restore_subset(full, pre.data_subset, str(pre.path))
