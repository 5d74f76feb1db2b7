"""``ddpm-regimes`` end to end: records, configs, image data, trained checkpoints, sweeps."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, compose_config

from ddpm.errors import ConfigError, DataError
from ddpm.regimes import theory
from ddpm.regimes.cli import run_regimes
from ddpm.regimes.data import data_source, load_points
from ddpm.schedules import NoiseSchedule

FAST = [
    "runtime.num_threads=1",
    "collapse.queries=256",
    "collapse.points=16",
    "collapse.refine=6",
    "speciation.points=10",
    "speciation.queries=256",
    "speciation.clone_traj=16",
    "speciation.clone_points=3",
    "speciation.clone_steps=20",
    "tracking.samples=8",
    "tracking.steps=30",
]


def _run(tmp_path: Path, overrides: list[str]) -> dict:
    cfg = compose_config("regimes", FAST + overrides)
    return run_regimes(cfg, tmp_path)


def test_gaussian_run_writes_the_record(tmp_path):
    rec = _run(tmp_path, ["synthetic=gaussian", "synthetic.n=300", "synthetic.d=8", "synthetic.sigma2=2.0", "regimes=all"])
    on_disk = json.loads((tmp_path / "regimes.json").read_text())
    for key in ("t_C", "t_C_theory", "t_S", "Lambda", "k_C", "k_S"):
        assert key in on_disk and on_disk[key] is not None, key
    assert on_disk["t_C_theory"] == pytest.approx(theory.collapse_time_isotropic(300, 8, 2.0), rel=1e-12)
    sched = NoiseSchedule.from_config(compose_config("regimes", ["synthetic=gaussian"]).schedule)
    assert on_disk["k_C"] == int(sched.time_to_step(on_disk["t_C"]))
    assert on_disk["k_S"] == int(sched.time_to_step(on_disk["t_S"]))
    assert on_disk["times"]["t_C"]["k"] == on_disk["k_C"]
    assert on_disk["alpha"] == pytest.approx(math.log(300) / 8)
    assert on_disk["t_S"] == pytest.approx(0.5 * math.log(on_disk["Lambda"]))
    assert on_disk["Lambda_population"] == pytest.approx(2.0) and on_disk["t_S_theory"] == pytest.approx(0.5 * math.log(2.0))
    assert on_disk["exact_memorised_fraction"] == 1.0
    assert "synthetic" in on_disk["scaling"]
    assert rec["t_C"] == on_disk["t_C"]
    curves = np.load(tmp_path / "curves.npz")
    assert curves["collapse_t"].shape == curves["collapse_p_half"].shape
    for png in ("regimes.png", "collapse.png", "spectrum.png", "tracking.png"):
        assert (tmp_path / png).stat().st_size > 1000, png


def test_mixture_speciation_run(tmp_path):
    rec = _run(tmp_path, ["synthetic=mixture", "synthetic.n=1000", "synthetic.d=16", "regimes=speciation", "speciation.queries=1024"])
    assert rec["Lambda"] == pytest.approx(17.0, rel=0.1)
    assert rec["phi_two_class_at_t_S"] == pytest.approx(theory.clone_probability_two_class(rec["t_S"], 16), rel=1e-9)
    # φ̃ crosses ½ near t_S for two classes (φ(t_S) ≈ 0.77, i.e. φ̃ ≈ 0.54).
    assert rec["t_S_clone"] == pytest.approx(rec["t_S"], rel=0.15)
    assert (tmp_path / "speciation.png").is_file()
    assert rec["t_C"] is None and rec["k_C"] is None  # collapse was not asked for


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["synthetic=gaussian", "synthetic.n=0"], "synthetic.n"),
        (["dataset.n=1"], "dataset.n"),
        (
            ["synthetic=gaussian", "dataset.n=100"],
            r"^dataset.n=100 is the image subset; synthetic=gaussian draws synthetic.n points \(now 1000\): set synthetic.n=100$",
        ),
        (["synthetic=gaussian", "collapse.t_min=0"], "t_min"),
        (["synthetic=gaussian", "regimes=trained"], "ckpt="),
        (["synthetic=gaussian", "kernel.dtype=float16"], "dtype"),
        (["synthetic=gaussian", "regimes.analyses=[spectrum,bogus]"], "bogus"),
    ],
)
def test_bad_input_is_a_config_error(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        _run(tmp_path, overrides)
    assert not (tmp_path / "regimes.json").exists()


def test_command_line_errors_are_one_line(tmp_path):
    exe = Path(sys.executable).with_name("ddpm-regimes")
    r = subprocess.run(
        [str(exe), "synthetic=gaussian", "synthetic.n=0", f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: synthetic.n must be >= 2 (the memorisation ratio needs two training points), got 0"]
    assert not (tmp_path / "regimes.json").exists()


def test_a_second_run_refuses_to_replace_the_outputs(tmp_path):
    """An earlier run's regimes.json, curves.npz and plots stay: one line, exit 2; overwrite=true replaces them."""
    quick = ["synthetic=gaussian", "synthetic.n=50", "synthetic.d=4", "regimes.analyses=[spectrum]"]
    _run(tmp_path, quick)
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix in (".json", ".npz", ".png")}
    assert {"regimes.json", "curves.npz", "regimes.png", "spectrum.png"} <= set(written)
    exe = Path(sys.executable).with_name("ddpm-regimes")
    r = subprocess.run([str(exe), *quick, "plots=false", f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {tmp_path} already holds regimes.json, curves.npz, regimes.png, spectrum.png from an earlier run; "
        "choose another hydra.run.dir or pass overwrite=true"
    ]
    assert {name: (tmp_path / name).read_bytes() for name in written} == written
    rec = _run(tmp_path, [*quick, "seed=1", "overwrite=true"])
    assert json.loads((tmp_path / "regimes.json").read_text())["config"]["seed"] == 1 == rec["config"]["seed"]


@pytest.mark.parametrize("law", ["gaussian", "gaussian_spectrum", "mixture", "hierarchical"])
def test_synthetic_n_and_seed_draw_what_points_n_and_seed_drew(law):
    """synthetic.n / synthetic.seed draw from the same random streams as points.n / points.seed did:
    the points are those of sample_synthetic with that seed (held-out ones: seed + 1,000,003)."""
    from omegaconf import OmegaConf

    from ddpm.regimes.data import sample_synthetic

    cfg = compose_config("regimes", [f"synthetic={law}", "synthetic.n=50", "synthetic.seed=3", "synthetic.d=8"])
    law_keys = {k: v for k, v in OmegaConf.to_container(cfg.synthetic).items() if k not in ("n", "seed")}
    node = OmegaConf.create({**law_keys, "seed": 3})  # the node that points.seed=3 made (its means and tree too)
    for split, seed in (("train", 3), ("test", 3 + 1_000_003)):
        pts = load_points(data_source(cfg), "unused", "unused", split=split)
        x, labels = sample_synthetic(node, 50, seed)
        assert pts.n == 50 and torch.equal(pts.x, x)
        assert (pts.labels is None) == (labels is None) and (labels is None or torch.equal(pts.labels, labels))
    other = compose_config("regimes", [f"synthetic={law}", "synthetic.n=50", "synthetic.seed=4", "synthetic.d=8"])
    train = load_points(data_source(cfg), "unused", "unused")
    assert not torch.equal(load_points(data_source(other), "unused", "unused").x, train.x)


def test_mnist_points_are_training_scaled_and_downsampled(data_dir, tmp_path):
    cfg = compose_config(
        "regimes", ["dataset=mnist", "dataset.n=300", "points.downsample=4", f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path}"]
    )
    pts = load_points(data_source(cfg), cfg.paths.data_dir, cfg.paths.cache_dir)
    assert pts.x.shape == (300, 49) and pts.shape == (1, 7, 7)
    assert float(pts.x.min()) >= -1.0 and float(pts.x.max()) <= 1.0
    assert pts.reference.shape == (60000, 49)
    # 4x4 average pooling of the training scaling (uint8 / 127.5 - 1) of the same images.
    full = compose_config("regimes", ["dataset=mnist", "dataset.n=300", f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path}"])
    big = load_points(data_source(full), full.paths.data_dir, full.paths.cache_dir)
    pooled = torch.nn.functional.avg_pool2d(big.x.view(300, 1, 28, 28), 4).flatten(1)
    torch.testing.assert_close(pts.x, pooled)
    assert torch.equal(pts.labels, big.labels)
    bad = compose_config("regimes", ["dataset=mnist", "dataset.n=70000", f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path}"])
    with pytest.raises(DataError, match="^dataset.n=70000 exceeds the 60000 training images of mnist$"):
        load_points(data_source(bad), bad.paths.data_dir, bad.paths.cache_dir)


def test_trained_checkpoint_analysis(data_dir, tmp_path):
    from conftest import tiny_train_overrides

    from ddpm.train import train

    # a network trained on 400 images: the exact score is that of exactly those (dataset.n must match)
    over = {"dataset.n": 400, "train.max_steps": 20, "train.ckpt_every": 20, "runtime.num_threads": 1}
    train(compose_config("train", tiny_train_overrides(data_dir, tmp_path / "cache", **over)), tmp_path / "train")
    rec = _run(
        tmp_path,
        [
            "dataset=mnist",
            "regimes=trained",
            f"ckpt={tmp_path / 'train'}",  # a training run dir: its checkpoints/last.pt
            "dataset.n=400",
            f"paths.data_dir={data_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "trained.samples=6",
            "trained.steps=10",
            "trained.gap_points=4",
            "trained.gap_queries=16",
            "collapse.t_max=4.0",
        ],
    )
    # The checkpoint's schedule (T = 100) and resolution (32x32, zero-padded MNIST) are used.
    assert rec["schedule"]["T"] == 100 and rec["d"] == 1024 and rec["n"] == 400
    assert rec["schedule"]["t_end"] == pytest.approx(
        float(NoiseSchedule.from_config(compose_config("train", ["schedule.T=100"]).schedule).ou_times[-1])
    )
    # a 20-step network copies none of its 400 images: f_mem 0 and no collapse time (null, not a number)
    assert rec["network_memorised_fraction"] == 0.0 and rec["network_copies"] == 0 and rec["network_t_C"] is None
    assert rec["memorisation_threshold"] == pytest.approx(1 / 3)
    assert rec["ckpt_step"] == 20
    curves = np.load(tmp_path / "curves.npz")
    assert np.all(curves["gap_train_k"] < 100)
    assert np.all(np.isfinite(curves["gap_train_gap"])) and np.all(curves["gap_train_gap"] > 0)
    assert np.all(np.isfinite(curves["gap_heldout_gap"]))
    assert rec["k_C"] is None or rec["k_C"] <= 99
    assert (tmp_path / "gap.png").is_file() and (tmp_path / "tracking.png").is_file()


def test_gap_is_zero_for_the_exact_score():
    from ddpm.regimes.trained import eps_gap
    from ddpm.score import ExactScore

    a = torch.randn(20, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ks = ExactScore(a, dtype="float64")
    sched = NoiseSchedule.from_config(compose_config("regimes", ["synthetic=gaussian"]).schedule)
    pre = type("P", (), {"diffusion": type("D", (), {"schedule": sched})()})()
    out = eps_gap(lambda x, k, t: ks.eps(x, t), ks, pre, a, [0, 100, 500, 999], 10, seed=0)
    assert np.all(out["gap"] < 1e-20)


def test_collect_sweep_reads_a_multirun_dir(tmp_path):
    for i, (n, tc) in enumerate([(100, 0.5), (1000, 0.3)]):
        job = tmp_path / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- synthetic=gaussian\n- synthetic.n={n}\n")
        (job / ".hydra" / "config.yaml").write_text(f"synthetic:\n  name: gaussian\n  d: 16\n  n: {n}\nseed: 0\n")
        (job / "regimes.json").write_text(json.dumps({"t_C": tc, "t_S": 0.1, "times": {"t_C": {"t": tc, "k": 5}}, "curve": [1, 2]}))
    (tmp_path / "2" / ".hydra").mkdir(parents=True)  # a job that failed: no result file
    (tmp_path / "2" / ".hydra" / "overrides.yaml").write_text("- synthetic.n=5\n")
    out = tmp_path / "sweep.csv"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "collect_sweep.py"),
            str(tmp_path),
            "--result",
            "regimes.json",
            "--out",
            str(out),
            "--config-keys",
            "synthetic.d",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2
    assert [int(r["synthetic.n"]) for r in rows] == [100, 1000]
    assert [float(r["t_C"]) for r in rows] == [0.5, 0.3]
    assert rows[0]["times.t_C.k"] == "5" and rows[0]["synthetic.d"] == "16" and "curve" not in rows[0]
    assert "1 job(s) without regimes.json" in r.stderr


@pytest.mark.slow
def test_multirun_sweep_with_joblib(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    exe = Path(sys.executable).with_name("ddpm-regimes")
    env = dict(os.environ)
    cmd = [
        str(exe),
        "-m",
        "synthetic=gaussian",
        "synthetic.n=50,200",
        "synthetic.d=4",
        "regimes=collapse",
        "collapse.queries=128",
        "tracking.samples=4",
        "tracking.steps=20",
        "plots=false",
        f"hydra.sweep.dir={tmp_path}",
        "hydra.launcher.n_jobs=2",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads((tmp_path / str(i) / "regimes.json").read_text()) for i in range(2)]
    assert sorted(x["n"] for x in recs) == [50, 200]
    # One torch thread per job under the joblib launcher.
    assert all(x["config"]["runtime"]["num_threads"] is None for x in recs)
    assert all("torch threads: 1" in (tmp_path / str(i) / "regimes.log").read_text() for i in range(2))
