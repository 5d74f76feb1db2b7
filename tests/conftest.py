"""Shared fixtures: the real data root, config composition, and a tiny trained MNIST checkpoint."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from ddpm.commands import COMMANDS, register_schemas
from ddpm.tools.bad_inputs import tiny_train_overrides  # noqa: F401 - the tests import it from here

REPO = Path(__file__).resolve().parents[1]
register_schemas()
# Every command's name (ddpm-<name>, conf/<name>.yaml), from the one list of commands.
COMMAND_NAMES = tuple(c.name for c in COMMANDS)


def data_root() -> Path | None:
    """The real data root (``DDPM_DATA_DIR``, else ``../shared/data`` beside the repository)."""
    for cand in (os.environ.get("DDPM_DATA_DIR"), REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "MNIST" / "raw").is_dir():
            return Path(cand).resolve()
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if root is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs the real data: set DDPM_DATA_DIR to the shared data folder")
        pytest.skip("real data not found: set DDPM_DATA_DIR")
    return root


def compose_config(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config exactly as the command line would (without Hydra's runtime)."""
    with initialize_config_module("ddpm.conf", version_base="1.3"):
        return compose(config_name, overrides=overrides or [])


@pytest.fixture(scope="session")
def tiny_ckpt(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MNIST model trained for 60 steps (T=100); returns its ``last.pt``."""
    from ddpm.train import train

    run_dir = tmp_path_factory.mktemp("tiny_run")
    cfg = compose_config("train", tiny_train_overrides(data_dir, run_dir / "cache", **{"train.max_steps": 60, "train.ckpt_every": 60}))
    train(cfg, run_dir)
    return run_dir / "checkpoints" / "last.pt"


def posterior(schedule, x0: torch.Tensor, xk: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{k-1} | x_k, x_0) from the schedule's posterior tables (float32, one k per
    row): the reference the samplers' respaced steps are checked against."""
    c0, ck = schedule.posterior_mean_coef
    shape = (-1, *([1] * (xk.ndim - 1)))

    def at(table: torch.Tensor) -> torch.Tensor:
        return table.to(torch.float32)[k].reshape(shape)

    return at(c0) * x0 + at(ck) * xk, at(schedule.posterior_variance)


def x0_from_eps(schedule, xk: torch.Tensor, k: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x̂_0 = (x_k - √(1-ᾱ_k) ε) / √ᾱ_k at steps ``k`` (one per row), float32."""
    abar = schedule.alphas_cumprod
    shape = (-1, *([1] * (xk.ndim - 1)))
    a, s = abar.sqrt().to(torch.float32)[k].reshape(shape), (1 - abar).sqrt().to(torch.float32)[k].reshape(shape)
    return (xk - s * eps) / a


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A plain tar at ``path`` holding ``members`` (name -> bytes)."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# ---------------------------------------------------------------------------- folders of images
FOLDER_RNG = np.random.default_rng(22)


def encoded(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    """An image array (H, W[, C], uint8) encoded as a PNG or JPEG file."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def make_folder(root: Path, n: int, side: int = 8, parts: int = 2) -> Path:
    """``n`` random RGB PNGs of ``side``², spread over ``parts`` sub-folders (so the order spans folders)."""
    for i in range(n):
        sub = root / f"part{i % parts}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:05d}.png").write_bytes(encoded(FOLDER_RNG.integers(0, 256, (side, side, 3), dtype=np.uint8)))
    return root


def folder_cfg(path: Path, **kw: object) -> DictConfig:
    """A ``dataset=folder`` node over ``path`` (8x8 RGB, no resizing, 10% held out); ``kw`` overrides keys."""
    base = dict(
        name="folder",
        root="",
        image_size=8,
        channels=3,
        hflip=False,
        resize=False,
        download=False,
        background=[99, 133, 150],
        path=str(path),
        test_fraction=0.1,
        num_classes=None,
        in_memory="auto",
        in_memory_max_gb=4.0,
        workers=None,
    )
    base.update(kw)
    return OmegaConf.create(base)


def run_console(exe: str, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run one of the installed console scripts (``ddpm-sample``, ...) beside this interpreter, one thread.

    Args:
        exe: the console script's name.
        args: its command line.
        timeout: seconds before the test fails.
    """
    cmd = [str(Path(sys.executable).parent / exe), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
