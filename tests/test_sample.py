"""ddpm-sample: GIF writing, the forward chain of noise.gif, end to end on a tiny checkpoint, errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from PIL import Image

from ddpm.data import from_model_range, load_dataset, to_model_range
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError
from ddpm.gifs import frame_indices, grid_frame, write_gif
from ddpm.sample import forward_states, sample
from ddpm.schedules import NoiseSchedule

SCRIPT = Path(sys.executable).with_name("ddpm-sample")


def gif_frames(path: Path) -> list[np.ndarray]:
    im = Image.open(path)
    out = []
    for i in range(im.n_frames):
        im.seek(i)
        out.append(np.asarray(im.convert("RGB")))
    return out


# ------------------------------------------------------------------ GIF helpers
def test_frame_indices() -> None:
    assert frame_indices(21, 5) == [0, 5, 10, 15, 20]
    assert frame_indices(4, 4) == [0, 1, 2, 3]
    assert frame_indices(10, 1) == [9]
    assert len(set(frame_indices(51, 20))) == 20
    with pytest.raises(ValueError):
        frame_indices(3, 4)


def test_grid_frame_layout() -> None:
    x = torch.linspace(-1, 1, 16).view(16, 1, 1, 1).expand(16, 1, 8, 8).contiguous()
    f = grid_frame(x, nrow=4, scale=2, pad=2)
    assert f.shape == ((4 * 8 + 5 * 2) * 2, (4 * 8 + 5 * 2) * 2, 3) and f.dtype == np.uint8
    expected = from_model_range(x[:, 0, 0, 0]).numpy()
    # image j sits at row j // 4, column j % 4; its top-left pixel at (pad + r*(8+pad)) * scale
    for j in (0, 5, 15):
        r, c = divmod(j, 4)
        assert (f[(2 + r * 10) * 2, (2 + c * 10) * 2] == expected[j]).all()


def test_gif_frame_count_size_and_timing(tmp_path: Path) -> None:
    frames = [np.full((20, 30, 3), 30 * i, np.uint8) for i in range(7)]
    path = write_gif(tmp_path / "a.gif", frames, fps=5)
    im = Image.open(path)
    assert im.n_frames == 7 and im.size == (30, 20)
    durations = []
    for i in range(7):
        im.seek(i)
        durations.append(im.info["duration"])
    assert durations[:6] == [200] * 6 and durations[6] == 1000  # last frame held
    assert [int(f[0, 0, 0]) for f in gif_frames(path)] == [30 * i for i in range(7)]
    assert not list(tmp_path.glob(".*tmp"))


def test_forward_chain_has_the_closed_form_marginals() -> None:
    """x_0 = μ everywhere: the Markov chain's x_k must be N(√ᾱ_k μ, 1 - ᾱ_k)."""
    diff = GaussianDiffusion(
        NoiseSchedule.from_config(OmegaConf.create({"name": "linear", "T": 200, "beta_start": 1e-4, "beta_end": 0.02}))
    )
    x0 = torch.full((4, 1, 64, 64), 0.5)
    states = forward_states(diff, x0, [20, 199], seed=3)
    for k in (20, 199):
        abar = float(diff.schedule.alphas_cumprod[k])
        assert float(states[k].mean()) == pytest.approx(abar**0.5 * 0.5, abs=0.02)
        assert float(states[k].var()) == pytest.approx(1 - abar, rel=0.05)
    again = forward_states(diff, x0[:2], [20], seed=3)  # image i's noise comes from seed + i only
    torch.testing.assert_close(again[20], states[20][:2])


# ------------------------------------------------------------------ end to end
def sample_cfg(ckpt: Path, data_dir: Path, cache: Path, **extra):
    base = {
        "ckpt": str(ckpt),
        "paths.data_dir": str(data_dir),
        "paths.cache_dir": str(cache),
        "num_samples": 10,
        "batch_size": 8,
        "progress": False,
        "gif.frames": 6,
        "gif.num_images": 4,
        "gif.scale": 1,
        "sampler": "ddim",
        "sampler.steps": 5,
    }
    base.update(extra)
    return compose_config("sample", [f"{k}={v}" for k, v in base.items()])


def test_sample_writes_grid_gifs_and_images(tiny_ckpt: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = sample(sample_cfg(tiny_ckpt, data_dir, tmp_path / "cache", save_images=True), out)
    assert summary["evaluations"] == 5 and summary["gif"]["frames"] == 6
    assert summary["gif"]["steps"] == [99, 79, 59, 39, 19, None]  # ddim leading spacing on T=100: stride 20 ending at T-1
    # samples.png: 10 images of 32x32 in a 4-wide grid with 2-pixel padding
    assert Image.open(out / "samples.png").size == (4 * 34 + 2, 3 * 34 + 2)
    files = sorted((out / "images").glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(10)]
    imgs = [np.asarray(Image.open(f)) for f in files]
    assert all(a.shape == (32, 32) and a.dtype == np.uint8 for a in imgs)
    # sampling.gif: 6 frames of a 2x2 grid; the last one shows samples 0..3
    frames = gif_frames(out / "sampling.gif")
    assert len(frames) == 6 and frames[0].shape == (2 * 34 + 2, 2 * 34 + 2, 3)
    last = grid_frame(to_model_range(torch.from_numpy(np.stack(imgs[:4]))[:, None]))
    np.testing.assert_array_equal(frames[-1], last)
    # noise.gif: as many frames, starting from the clean real images picked by the seed
    noise = gif_frames(out / "noise.gif")
    assert len(noise) == 6 and noise[0].shape == frames[0].shape
    cfg = OmegaConf.load(tiny_ckpt.parent.parent / "config.yaml")
    train = load_dataset(cfg.dataset, data_dir, tmp_path / "cache", "train").images
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:4]
    np.testing.assert_array_equal(noise[0], grid_frame(to_model_range(train[idx])))
    assert np.abs(noise[-1].astype(int) - noise[0].astype(int)).mean() > 20  # the last frame is noised
    recorded = json.loads((out / "sample.json").read_text())
    assert recorded["outputs"] == ["samples.png", "sampling.gif", "noise.gif", "images"]
    # a second run into the same folder must not replace these outputs
    with pytest.raises(ConfigError, match="overwrite"):
        sample(sample_cfg(tiny_ckpt, data_dir, tmp_path / "cache"), out)


def assert_same_up_to_rounding(a: np.ndarray, b: np.ndarray) -> None:
    """uint8 images equal except for at most 0.1% of pixels, each off by one level."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1, f"pixels differ by up to {diff.max()} levels"
    assert (diff > 0).mean() <= 1e-3, f"{(diff > 0).mean():.2%} of the pixels differ"


def test_sample_i_is_independent_of_batch_size(tiny_ckpt: Path, data_dir: Path, tmp_path: Path) -> None:
    """The ancestral sampler draws fresh noise at every step: still, sample i must not depend on the batch."""
    runs = {}
    for bs in (1, 8):
        cfg = sample_cfg(
            tiny_ckpt,
            data_dir,
            tmp_path / "cache",
            num_samples=8,
            batch_size=bs,
            save_images=True,
            sampler="ddpm",
            **{"sampler.steps": 6, "gif.frames": 4, "gif.noise": False},
        )
        sample(cfg, tmp_path / f"bs{bs}")
        runs[bs] = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / f"bs{bs}" / "images").glob("*.png"))])
    assert runs[1].shape == (8, 32, 32)
    # Same noise per sample; the convolutions may sum in another order for another batch size (and
    # MKL may use fewer threads on a busy machine), so a rare pixel can round to the next level.
    # A batch-dependent noise stream would change most pixels by far more.
    assert_same_up_to_rounding(runs[1], runs[8])
    # the GIF collects its 4 images from 4 batches of one or from one batch of 8: same frames
    for a, b in zip(gif_frames(tmp_path / "bs1" / "sampling.gif"), gif_frames(tmp_path / "bs8" / "sampling.gif"), strict=True):
        assert_same_up_to_rounding(a, b)
    assert len({r.tobytes() for r in runs[8]}) == 8  # different seeds, different images


# ------------------------------------------------------------------ the console script
def run_script(args: list[str], tmp_path: Path, script: Path = SCRIPT) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(script), *args, f"hydra.run.dir={tmp_path / 'cli'}"], capture_output=True, text=True, env=env, timeout=300)


def assert_one_line_error(res: subprocess.CompletedProcess, needle: str) -> None:
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["ckpt=/nonexistent/last.pt"], "does not exist"),
        ([], "ckpt=PATH"),
        (["ckpt=x", "sampler=euler"], "sampler/euler"),
    ],
)
def test_cli_rejects_bad_input_without_checkpoint(args: list[str], needle: str, tmp_path: Path) -> None:
    assert_one_line_error(run_script(args, tmp_path), needle)


@pytest.mark.slow
def test_cli_rejects_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert_one_line_error(run_script([f"ckpt={bad}"], tmp_path), "corrupt")


@pytest.mark.slow
@pytest.mark.parametrize("steps,needle", [(101, "exceeds the schedule's T=100"), (0, "must be >= 1")])
def test_cli_rejects_bad_step_counts(tiny_ckpt: Path, steps: int, needle: str, tmp_path: Path) -> None:
    assert_one_line_error(run_script([f"ckpt={tiny_ckpt}", f"sampler.steps={steps}"], tmp_path), needle)


@pytest.mark.slow
def test_cli_end_to_end(tiny_ckpt: Path, data_dir: Path, tmp_path: Path) -> None:
    res = run_script(
        [
            f"ckpt={tiny_ckpt.parent.parent}",
            f"paths.data_dir={data_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "num_samples=4",
            "sampler.steps=4",
            "gif.frames=5",
            "progress=false",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    out = tmp_path / "cli"
    assert len(gif_frames(out / "sampling.gif")) == 5 and len(gif_frames(out / "noise.gif")) == 5
    n = math.ceil(math.sqrt(4))
    assert Image.open(out / "samples.png").size == (n * 34 + 2, n * 34 + 2)
    assert json.loads((out / "sample.json").read_text())["sampler"]["name"] == "sde_dpm_solver"
