"""The exported pair ``<name>.safetensors`` + ``<name>.json``: weights other tools can read, and the
config that rebuilds the network.

The safetensors file holds only tensors (no code can ride along, unlike a pickle); the JSON beside
it holds the training config, the step, which weights these are and the SHA-256 of the weights file,
so that a weights file paired with another export's JSON is refused instead of loaded wrongly.
Both are written atomically (temp file, fsync, rename), the weights first.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ddpm.checkpoint import atomic_write
from ddpm.errors import CheckpointError

EXPORT_FORMAT = "ddpm-export-v1"
SUFFIX = ".safetensors"


def config_path(weights: str | Path) -> Path:
    """The JSON that goes with ``weights`` (same name, ``.json`` suffix).

    Args:
        weights: a ``.safetensors`` file.
    """
    return Path(weights).with_suffix(".json")


def is_export(path: str | Path) -> bool:
    """Whether ``path`` names an exported weights file (by its suffix).

    Args:
        path: a ``ckpt=`` value.
    """
    return Path(path).suffix == SUFFIX


def write_export(
    weights: dict[str, torch.Tensor],
    config: dict[str, Any],
    step: int,
    part: str,
    path: str | Path,
    source: str,
    data_subset: dict[str, Any] | None = None,
) -> Path:
    """Write ``weights`` to ``path`` (``.safetensors``) and the JSON beside it; returns the JSON's path.

    Args:
        weights: a model state dict (tensors only).
        config: the resolved training config that builds the model.
        step: the optimizer step the weights come from.
        part: ``ema`` or ``model``: which weights of the checkpoint these are.
        path: the ``.safetensors`` file to write.
        source: the checkpoint they were exported from (recorded in the JSON).
        data_subset: the checkpoint's training-subset record (``dataset.n``), None when it trained on every image.
    """
    from safetensors.torch import save

    path = Path(path)
    if not is_export(path):
        raise CheckpointError(f"{path}: an exported weights file must end in {SUFFIX}")
    # safetensors stores dense row-major tensors that share no memory: channels_last weights and
    # views are copied out (the values are unchanged).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    data = save(tensors, metadata={"format": EXPORT_FORMAT, "step": str(int(step)), "weights": part})
    meta = {
        "format": EXPORT_FORMAT,
        "weights_file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "weights": part,
        "step": int(step),
        "source": source,
        "config": config,
        "data_subset": _subset_to_json(data_subset),
    }
    atomic_write(path, lambda f: f.write(data))
    cfg_path = config_path(path)
    text = (json.dumps(meta, indent=2) + "\n").encode()
    atomic_write(cfg_path, lambda f: f.write(text))
    return cfg_path


def _subset_to_json(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A subset record with its index tensor as a list (JSON holds no tensors)."""
    if record is None:
        return None
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in record.items()}


def subset_from_json(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The subset record of an export's JSON with its indices back as the int32 tensor a checkpoint holds.

    Args:
        record: the JSON's ``data_subset`` entry.
    """
    if not isinstance(record, dict):
        return None
    indices = record.get("indices")
    return {**record, "indices": None if indices is None else torch.tensor(indices, dtype=torch.int32)}


def read_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load an exported pair safely; returns (weights, the JSON's content). Every failure is a :class:`CheckpointError`.

    Args:
        path: the ``.safetensors`` file (its JSON lies beside it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    cfg_path = config_path(path)
    if not path.is_file():
        raise CheckpointError(f"exported weights {path} do not exist")
    if not cfg_path.is_file():
        raise CheckpointError(f"exported weights {path} need their config {cfg_path.name} beside them (written by ddpm-export)")
    try:
        meta = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_path} is not readable JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{cfg_path} is not a ddpm export config (no '{EXPORT_FORMAT}' marker)")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{cfg_path} lacks the training config or the step")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(
            f"{path} is not the weights file {cfg_path.name} was written with (SHA-256 differs): a mismatched or damaged pair"
        )
    try:
        weights = load(data)
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {' '.join(str(exc).split())}") from exc
    return weights, meta
