"""``train.regimes_every``: TensorBoard gets the memorised fraction and the ε-gap to the exact score
at t_S and t_C, measured against the run's own training subset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_config, tiny_train_overrides

from ddpm.data import to_model_range
from ddpm.errors import ConfigError
from ddpm.generate import generate
from ddpm.regimes.trained import eps_gap, network_eps_fn
from ddpm.samplers import build_sampler, make_eps_fn

EXTRA = {
    "dataset.n": 32,
    "dataset.image_size": 8,
    "dataset.resize": "true",
    "model.channel_mult": "[1]",
    "model.attention_resolutions": "[]",
    "train.max_steps": 4,
    "train.ckpt_every": 4,
    "train.batch_size": 8,
    "train.regimes_every": 2,
    "train.regimes_samples": 8,
    "runtime.num_threads": 1,
}


def test_regimes_logged_during_training(data_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ddpm.memorisation import memorisation
    from ddpm.pretrained import load_pretrained
    from ddpm.regimes.monitor import read_rows
    from ddpm.train import Trainer, build_callbacks

    cfg = compose_config("train", tiny_train_overrides(data_dir, tmp_path / "cache", **EXTRA))
    trainer = Trainer(cfg, tmp_path, build_callbacks(cfg))
    trainer.fit()
    mon = trainer._regimes_monitor
    assert mon.score.n == 32 and mon.score.d == 64  # the run's 32 images at 8x8
    # t_S = ½ log Λ with Λ the top covariance eigenvalue of the whole split (a 32-image covariance understates it)
    from ddpm.data import load_dataset

    full = to_model_range(load_dataset(cfg.dataset, data_dir, tmp_path / "cache", "train").images).flatten(1).double()
    lam = float(torch.linalg.eigvalsh(torch.cov(full.T, correction=0))[-1])
    assert mon.t_S == pytest.approx(0.5 * torch.log(torch.tensor(lam)).item(), rel=1e-6)
    assert mon.t_C > 0 and mon.t_C_measured
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    logged = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"] if tag.startswith("regimes/")}
    assert set(logged) == {
        f"regimes/{k}" for k in ("memorised_fraction", "memorised_se", "train_loss", "heldout_loss", "eps_gap_t_S", "eps_gap_t_C")
    }
    assert all(sorted(v) == [2, 4] for v in logged.values())

    # step 4 is the final checkpoint: recompute both numbers from it, independently of the monitor
    pre = load_pretrained(tmp_path / "checkpoints" / "last.pt")
    x = to_model_range(trainer.images).flatten(1).double()
    gap = eps_gap(network_eps_fn(pre), mon.score, pre, x, sorted({mon.k_S, mon.k_C}), 64, int(cfg.train.seed))
    by_k = dict(zip(gap["k"].tolist(), gap["gap"].tolist(), strict=True))
    assert logged["regimes/eps_gap_t_S"][4] == pytest.approx(by_k[mon.k_S], rel=1e-4)
    assert logged["regimes/eps_gap_t_C"][4] == pytest.approx(by_k[mon.k_C], rel=1e-4)
    samples = generate(make_eps_fn(pre.model, pre.diffusion), build_sampler(cfg.sampler, pre.diffusion), pre.shape, 8, 2_000_000, 8, "cpu")
    frac = memorisation(samples, x, 1 / 3).fraction
    assert logged["regimes/memorised_fraction"][4] == pytest.approx(frac)
    # the same rows in regimes.jsonl, the collector's input
    rows = read_rows(tmp_path / "regimes.jsonl")
    assert [r["step"] for r in rows] == [2, 4] and rows[-1]["n"] == 32 and rows[-1]["threshold"] == pytest.approx(1 / 3)
    assert rows[-1]["memorised_fraction"] == pytest.approx(frac)
    assert rows[-1]["heldout_loss"] == pytest.approx(logged["regimes/heldout_loss"][4], rel=1e-6) and rows[-1]["heldout_loss"] > 0
    assert logged["regimes/eps_gap_t_C"][4] > 0.0


def test_regimes_keys_are_checked() -> None:
    from ddpm.train.config import validate_train

    with pytest.raises(ConfigError, match="train.regimes_every must be >= 0"):
        validate_train(compose_config("train", ["train.regimes_every=-1"]))
    with pytest.raises(ConfigError, match="train.regimes_samples must lie in 1..100000"):
        validate_train(compose_config("train", ["train.regimes_samples=0"]))
