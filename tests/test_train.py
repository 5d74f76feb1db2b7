"""Real training runs of a tiny model on MNIST: learning, checkpoints, exact resume, accumulation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import compose_config, tiny_train_overrides
from PIL import Image

from ddpm.checkpoint import load_checkpoint
from ddpm.errors import CheckpointError
from ddpm.train import Trainer, train


def run(tmp_path, name, data_dir, **over):
    run_dir = tmp_path / name
    cfg = compose_config("train", tiny_train_overrides(data_dir, tmp_path / "cache", **over))
    summary = train(cfg, run_dir)
    return run_dir, summary


def test_training_learns_and_writes_outputs(data_dir, tmp_path):
    run_dir, summary = run(
        tmp_path,
        "run",
        data_dir,
        **{"train.max_steps": 40, "train.log_every": 10, "train.sample_every": 40, "train.ckpt_every": 20, "train.keep_checkpoints": 1},
    )
    # The first logged loss is near the untrained ε-MSE (about 1); 40 steps bring it well below.
    assert summary["first_logged_loss"] > 0.5
    assert summary["loss"] < 0.6 * summary["first_logged_loss"]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["last.pt", "step_0000040.pt"]  # rotation kept one step file
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 40 and state["config"]["model"]["name"] == "tiny"
    assert set(state) >= {"model", "ema", "optimizer", "scheduler", "scaler", "rng", "version"}
    grid = Image.open(run_dir / "samples" / "step_0000040.png")
    assert grid.size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)  # 4 samples, 2x2 grid with 2-px padding
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 40
    assert any((run_dir / "tb").iterdir()) and (run_dir / "config.yaml").is_file()


def _weights(run_dir):
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return state["model"], state["ema"], state["optimizer"]["state"]


def test_resume_is_exact(data_dir, tmp_path):
    full, _ = run(tmp_path, "full", data_dir, **{"train.max_steps": 16, "train.ckpt_every": 8})
    half, _ = run(tmp_path, "half", data_dir, **{"train.max_steps": 8, "train.ckpt_every": 8})
    run(tmp_path, "half", data_dir, **{"train.max_steps": 16, "train.ckpt_every": 8, "resume": "latest"})
    a, b = _weights(full), _weights(half)
    assert load_checkpoint(half / "checkpoints" / "last.pt")["step"] == 16
    for sa, sb in zip(a, b, strict=True):
        for key in sa:
            if isinstance(sa[key], dict):
                for kk in sa[key]:
                    assert torch.equal(sa[key][kk], sb[key][kk]), key
            else:
                assert torch.equal(sa[key], sb[key]), key


def test_grad_accumulation_matches_large_batch(data_dir, tmp_path):
    def trainer(batch, accum):
        over = {"train.batch_size": batch, "train.grad_accum_steps": accum, "train.grad_clip": 0}
        return Trainer(compose_config("train", tiny_train_overrides(data_dir, tmp_path / "cache", **over)), tmp_path / f"r{batch}")

    big, acc = trainer(16, 1), trainer(8, 2)
    for _ in range(3):
        loss_big, _ = big.train_step()
        loss_acc, _ = acc.train_step()
        assert loss_acc.item() == pytest.approx(loss_big.item(), rel=1e-5)
        for pb, pa in zip(big.model.parameters(), acc.model.parameters(), strict=True):
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6)
    # Adam divides by √v, so parameters with near-zero gradients may differ by a small fraction of one lr step.
    for pb, pa in zip(big.model.parameters(), acc.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-4 * big.cfg.train.lr / 1e-3)


def test_training_draws_step_zero(data_dir, tmp_path):
    cfg = compose_config("train", tiny_train_overrides(data_dir, tmp_path / "cache", **{"schedule.T": 10, "train.batch_size": 64}))
    trainer = Trainer(cfg, tmp_path / "r")
    ks = torch.cat([trainer.global_batch_tensors()[1] for _ in range(3)])
    assert ks.min().item() == 0 and ks.max().item() == 9


def test_resume_with_another_model_says_what_differs(data_dir, tmp_path):
    run_dir, _ = run(tmp_path, "r", data_dir, **{"train.max_steps": 2, "train.ckpt_every": 2})
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    cfg = compose_config(
        "train", tiny_train_overrides(data_dir, tmp_path / "cache", **{"train.max_steps": 4, "resume": "latest", "model.channels": 8})
    )
    with pytest.raises(CheckpointError, match=r"model.channels: checkpoint 16 vs now 8"):
        train(cfg, run_dir)
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before


def test_sigusr2_under_submitit_checkpoints_then_hands_over(data_dir, tmp_path):
    """submitit's SIGUSR2 handler (requeue) runs only after the checkpoint is on disk."""
    import os
    import signal
    import threading

    calls = []
    ckpt = tmp_path / "r" / "checkpoints" / "last.pt"
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(ckpt.is_file()))
    cfg = compose_config("train", tiny_train_overrides(data_dir, tmp_path / "cache", **{"train.max_steps": 100000, "train.ckpt_every": 0}))
    trainer = Trainer(cfg, tmp_path / "r")
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGUSR2))
    try:
        timer.start()
        with pytest.raises(SystemExit) as exit_info:
            trainer.fit()
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR2, previous)
    assert exit_info.value.code == 128 + signal.SIGUSR2
    assert calls == [True]
    assert load_checkpoint(ckpt)["step"] == trainer.step > 0


def test_lr_factor_warms_up_then_decays_over_the_run() -> None:
    from ddpm.train import lr_factor

    assert [lr_factor(s, 4, "cosine", 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(10, 4, "cosine", 0.5) == pytest.approx(0.5)
    assert lr_factor(10, 4, "cosine", 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(10, 4, "cosine", 3.0) == pytest.approx(0.0, abs=1e-12)  # past the end: stays at 0
    assert lr_factor(10, 4, "constant", 0.9) == 1.0


def test_time_budget_stops_the_run_with_checkpoint_grid_and_decayed_lr(data_dir, tmp_path, monkeypatch):
    """A 3-second budget ends a run whose max_steps is out of reach, and the cosine LR decays over
    the budget, not over max_steps. The clock is made to advance 0.5 s per reading (a step is
    two readings apart), so the run takes exactly 6 steps whatever the machine's speed."""
    import itertools

    from ddpm.train import BudgetClock

    ticks = itertools.count()
    monkeypatch.setattr(BudgetClock, "now", lambda self: 0.5 * next(ticks))
    over = {
        "train.max_steps": 100000,
        "train.time_budget_min": 0.05,
        "train.lr_schedule": "cosine",
        "train.sample_every": 0,
        "train.ckpt_every": 0,
        "train.num_sample_images": 4,
    }
    run_dir, summary = run(tmp_path, "budget", data_dir, **over)
    assert summary["step"] == 6 and summary["train_seconds"] == pytest.approx(3.0) and summary["budget_clock"] == "wall"
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 6 and state["budget_spent_s"] == pytest.approx(3.0)
    assert (run_dir / "samples" / "step_0000006.png").is_file()
    # The LR of the last update was set when 2.5 of the 3 s were spent (max_steps would give ~1e-3).
    lr_now = state["optimizer"]["param_groups"][0]["lr"]
    assert lr_now == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 2.5 / 3.0)), rel=1e-6)
    # Resuming a spent budget trains no further step.
    _, again = run(tmp_path, "budget", data_dir, **over, resume="latest")
    assert again["step"] == 6


def test_eval_every_logs_fid_and_keeps_the_best_checkpoint(data_dir, tmp_path):
    over = {"train.max_steps": 20, "train.eval_every": 10, "train.eval_samples": 16, "train.ckpt_every": 10}
    run_dir, summary = run(tmp_path, "eval", data_dir, **over)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["eval"]["n"] == 16 and best["step"] in (10, 20)
    assert summary["best_fid"] == pytest.approx(best["eval"]["fid"])
    assert best["best_fid"] == pytest.approx(best["eval"]["fid"])
    assert set(best["eval"]) >= {"fid", "kid", "class_entropy", "confidence", "blob_fraction"}
    events = list((run_dir / "tb").iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    fids = [e.value for e in acc.Scalars("eval/fid")]
    assert [e.step for e in acc.Scalars("eval/fid")] == [10, 20]
    assert min(fids) == pytest.approx(best["eval"]["fid"], rel=1e-5)


def test_log_gives_peak_memory_and_each_epochs_wall_time(data_dir, tmp_path, caplog):
    """64 images in batches of 16: an epoch every 4 steps; the step lines carry the peak resident memory."""
    import re

    over = {"dataset.n": 64, "train.max_steps": 8, "train.log_every": 4, "train.ckpt_every": 0, "runtime.num_threads": 1}
    with caplog.at_level("INFO", logger="ddpm.train"):
        run(tmp_path, "epochs", data_dir, **over)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "ddpm.train")
    epochs = re.findall(r"epoch (\d+) done at step (\d+): ([0-9.]+) s wall for its (\d+) steps run here", text)
    assert [(e, s, n) for e, s, _, n in epochs] == [("1", "4", "4"), ("2", "8", "4")]
    assert all(0 < float(t) < 120 for _, _, t, _ in epochs)
    rss = [float(m) for m in re.findall(r"^step \d+ loss .* img/s [0-9.]+ max_rss_mib (\d+)$", text, re.M)]
    assert len(rss) == 2 and all(100 < m < 100_000 for m in rss)  # torch alone holds more than 100 MiB
    # epochs shorter than log_every steps: one line per log_every steps, the mean of its epochs
    caplog.clear()
    with caplog.at_level("INFO", logger="ddpm.train"):
        run(tmp_path, "epochs_short", data_dir, **{**over, "train.log_every": 8})
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "ddpm.train")
    assert re.findall(r"epoch (\d+) done at step (\d+): [0-9.]+ s wall for its (\d+) steps run here(.*)", text) == [
        ("2", "8", "4", " (mean of the last 2 epochs)")
    ]
