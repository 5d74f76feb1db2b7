"""The memorisation law: the copy criterion, the network collapse time, the collector and its fit,
the Gaussian-mixture runs and the disjoint-halves statistics."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.errors import ConfigError
from ddpm.memorisation import bootstrap_se, memorisation, reference_images
from ddpm.regimes.collapse import measure_collapse
from ddpm.regimes.halves import pair_statistics
from ddpm.regimes.law import collect, first_reach, fit_power_law, tau_gen
from ddpm.regimes.monitor import append_row, read_rows, regimes_steps
from ddpm.regimes.plan import Job, check_budget, pack
from ddpm.regimes.tracking import exact_eps_fn, measure_trajectories
from ddpm.schedules import NoiseSchedule
from ddpm.score import ExactScore

ROOT = Path(__file__).resolve().parents[1]


def _schedule(T: int = 1000) -> NoiseSchedule:
    from omegaconf import OmegaConf

    return NoiseSchedule.from_config(OmegaConf.create({"name": "linear", "T": T, "beta_start": 1e-4, "beta_end": 0.02}))


# ---------------------------------------------------------------- the copy criterion


def test_copy_criterion_on_hand_made_points() -> None:
    train = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=torch.float64)
    samples = torch.tensor(
        [
            [0.0, 0.0],  # an exact copy: d1 = 0, ratio 0
            [0.5, 0.0],  # the midpoint of two images: d1 = d2, ratio 1
            [20.0, 20.0],  # far from all: ratio near 1
            [1.05, 0.0],  # nearly a copy: d1 = 0.05, d2 = 1.05 (the origin)
        ],
        dtype=torch.float64,
    )
    m = memorisation(samples, train, 1 / 3)
    assert m.ratio[0] == 0.0 and m.ratio[1] == pytest.approx(1.0)
    assert m.ratio[2] == pytest.approx(np.hypot(15, 15) / np.hypot(19, 20), rel=1e-6)
    assert m.ratio[3] == pytest.approx(0.05 / 1.05, rel=1e-5)  # images are compared in float32
    assert m.memorised.tolist() == [True, False, False, True]
    assert m.nearest[[0, 3]].tolist() == [0, 1]
    assert m.fraction == 0.5
    for k in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"memorisation.threshold must lie in \(0, 1\)"):
            memorisation(samples, train, k)


def test_bootstrap_error_matches_the_binomial_error() -> None:
    flags = np.r_[np.ones(30), np.zeros(70)]
    se = bootstrap_se(flags)
    assert se == pytest.approx(math.sqrt(0.3 * 0.7 / 100), rel=0.1)
    assert bootstrap_se(flags) == se  # seeded
    assert bootstrap_se(np.ones(50)) == 0.0 and bootstrap_se(np.ones(1)) == 0.0


def test_reference_set_holds_the_mirrors_of_a_flipped_run() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 4, 4, generator=g)
    ref = reference_images(images, hflip=True)
    assert ref.shape == (12, 1, 4, 4) and torch.equal(ref[:6], images) and torch.equal(ref[6:], images.flip(-1))
    assert reference_images(images, hflip=False) is images
    # a mirrored training image is a copy for a run that trained with flips, and is not otherwise
    mirror = images[2:3].flip(-1)
    assert memorisation(mirror, ref, 1 / 3).memorised.tolist() == [True]
    assert memorisation(mirror, images, 1 / 3).memorised.tolist() == [False]
    # ddpm-evaluate's lazy form: the mirrors compared chunk by chunk, indices from n on, as in the 2n set
    lazy = memorisation(torch.cat([mirror, images[4:5]]), images, 1 / 3, mirrored=True)
    full = memorisation(torch.cat([mirror, images[4:5]]), ref, 1 / 3)
    assert lazy.nearest.tolist() == full.nearest.tolist() == [8, 4]
    assert np.allclose(lazy.ratio, full.ratio) and lazy.memorised.tolist() == [True, True]


def test_regimes_loads_the_mirrored_points_of_a_flipped_run(data_dir: Path, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from ddpm.config import DatasetConfig
    from ddpm.regimes.data import load_points

    dataset = OmegaConf.merge(
        OmegaConf.structured(DatasetConfig), {"name": "mnist", "root": "MNIST", "channels": 1, "image_size": 8, "resize": True, "n": 20}
    )
    node = OmegaConf.create({"name": "mnist", "downsample": 1, "dataset": dataset})
    plain = load_points(node, data_dir, tmp_path)
    flipped = load_points(node, data_dir, tmp_path, mirrored=True)
    assert plain.n == 20 and flipped.n == 40
    assert torch.equal(flipped.x[:20], plain.x)
    assert torch.equal(flipped.x[20:].view(20, 1, 8, 8), plain.x.view(20, 1, 8, 8).flip(-1))


# ---------------------------------------------------------------- the collapse time


@pytest.mark.parametrize(("n", "d", "seed"), [(48, 12, 1), (32, 8, 2)])
def test_collapse_time_of_the_exact_score_is_the_exact_t_c(n: int, d: int, seed: int) -> None:
    """Sampling with the exact score, the collapse time of the trajectories lands on the p_½ crossing
    of the exact score within the resolution of the visited grid; the per-trajectory last excursions
    above ½ lie a little above it (up to 15%), their quartiles around it."""
    a = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ks = ExactScore(a, dtype="float64")
    summary, tc = measure_trajectories(exact_eps_fn(ks), ks, a, _schedule(), 512, 200, 0, 1 / 3, "exact")
    exact, _ = measure_collapse(ks, 0.01, 3.0, 40, 16, 2048, 256, 0, 0.05)
    t = tc["t"]
    i = int(np.searchsorted(t, exact["t_C"]))
    assert summary["exact_memorised_fraction"] == 1.0 and summary["exact_copies"] == 512
    assert abs(summary["exact_t_C"] - exact["t_C"]) <= float(t[i] - t[i - 1]), (summary["exact_t_C"], exact["t_C"])
    median = summary["exact_t_C_trajectory_median"]
    assert exact["t_C"] <= median <= 1.15 * exact["t_C"]
    q25, q75 = summary["exact_t_C_trajectory_quartiles"]
    assert q25 < exact["t_C"] < q75


def test_collapse_time_is_null_for_a_network_that_copies_nothing() -> None:
    """The exact denoiser of the Gaussian N(0, I) the points come from generalises: its samples copy
    none of the points, so there is no collapse time (null, not a small number)."""
    d = 12
    a = torch.randn(48, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ks = ExactScore(a, dtype="float64")
    sched = _schedule()

    def gaussian_eps(x: torch.Tensor, k: int, t: float) -> torch.Tensor:
        # unit-variance data: x_t ~ N(0, I), so the score is -x and ε = sqrt(Δ_t) x
        return x * math.sqrt(1 - math.exp(-2 * t))

    summary, tc = measure_trajectories(gaussian_eps, ks, a, sched, 64, 100, 0, 1 / 3, "network")
    assert summary["network_copies"] == 0 and summary["network_memorised_fraction"] == 0.0
    assert summary["network_t_C"] is None and summary["network_t_C_trajectory_quartiles"] == [None, None]
    assert summary["network_t_C_trajectory_median"] is None
    assert np.isnan(tc["collapse_t"]).all()


# ---------------------------------------------------------------- training-time curves and the collector


def test_regimes_steps_linear_and_log() -> None:
    assert regimes_steps(100, 0, 450) == [100, 200, 300, 400]
    assert regimes_steps(100, 4, 1000) == [100, 178, 316, 562, 1000]
    assert regimes_steps(100, 2, 2000) == [100, 316, 1000, 2000]
    assert regimes_steps(0, 4, 1000) == [] and regimes_steps(500, 4, 100) == [100]


def test_jsonl_rows_replace_those_a_resumed_run_repeats(tmp_path: Path) -> None:
    path = tmp_path / "regimes.jsonl"
    for step in (100, 200, 300):
        append_row(path, {"step": step, "memorised_fraction": 0.0})
    append_row(path, {"step": 200, "memorised_fraction": 0.5})  # resumed from step 100's checkpoint
    assert [(r["step"], r["memorised_fraction"]) for r in read_rows(path)] == [(100, 0.0), (200, 0.5)]


def test_first_reach_and_tau_gen_interpolate_in_log_steps() -> None:
    steps = np.array([100.0, 1000.0, 10000.0])
    assert first_reach(steps, [0.0, 0.05, 0.15], 0.1) == pytest.approx(10**3.5)
    assert first_reach(steps, [0.2, 0.3, 0.4], 0.1) == 100.0
    assert first_reach(steps, [0.0, 0.0, 0.05], 0.1) is None
    # best 1.0 at the end; within 5% (1.05) first between 1,000 (1.1) and 10,000 (1.0): at 1.05, halfway in log
    assert tau_gen(steps, [2.0, 1.1, 1.0], 0.05) == pytest.approx(10**3.5)
    assert tau_gen(steps, [np.nan, np.nan, np.nan]) is None


def test_power_law_fit_recovers_a_known_exponent() -> None:
    n = np.array([64, 128, 256, 512, 1024], dtype=float)
    noise = np.exp(np.array([0.03, -0.02, 0.01, -0.03, 0.02]))
    fit = fit_power_law(n, 20 * n**1.0 * noise)
    lo, hi = fit["interval95"]
    assert lo < 1.0 < hi and fit["exponent"] == pytest.approx(1.0, abs=0.05) and hi - lo < 0.2
    exact = fit_power_law(n, 3 * n**0.5)
    assert exact["exponent"] == pytest.approx(0.5, abs=1e-12) and exact["prefactor"] == pytest.approx(3.0)
    assert fit_power_law(n[:2], [1.0, 2.0])["interval95"] is None  # two points: no interval
    assert fit_power_law(n, [None] * 5)["exponent"] is None


def test_collector_fits_synthetic_runs_with_tau_proportional_to_n(tmp_path: Path) -> None:
    """Curves f(s) = 1 / (1 + (τ/s)³) with τ = 25 n: the collector finds τ_mem at f = 0.1 and an exponent of 1."""
    for n in (64, 128, 256, 512, 1024):
        tau = 25.0 * n
        steps = np.unique(np.round(np.geomspace(50, 80 * n, 40))).astype(int)
        for s in steps:
            f = 1 / (1 + (tau / s) ** 3)
            append_row(
                tmp_path / f"n{n}" / "regimes.jsonl",
                {"step": int(s), "n": n, "d": 64, "memorised_fraction": f, "heldout_loss": 1 + 300 / s},
            )
    result = collect(tmp_path)
    want = 25.0 * np.array([64, 128, 256, 512, 1024]) / 9 ** (1 / 3)  # f = 0.1 where (τ/s)³ = 9
    got = np.array([r["tau_mem"] for r in result["runs"]])
    assert got == pytest.approx(want, rel=0.02)
    fit = result["fits"]["64"]["tau_mem"]
    assert fit["exponent"] == pytest.approx(1.0, abs=0.01) and fit["interval95"][0] < 1.0 < fit["interval95"][1]
    assert (tmp_path / "law.csv").read_text().splitlines()[0].startswith("job,n,d,part")
    assert json.loads((tmp_path / "law.json").read_text())["plots"] == [
        "law_fmem_vs_steps.png",
        "law_fmem_vs_steps_over_n.png",
        "law_tau_vs_n.png",
    ]


def test_gaussian_mixture_run_writes_the_same_rows(tmp_path: Path) -> None:
    from ddpm.regimes.gmm import GMMRun, train_gmm

    torch.set_num_threads(1)
    rows = train_gmm(GMMRun(n=8, d=2, width=32, depth=2, steps=60, first=20, per_decade=2, samples=32, sampler_steps=10), tmp_path / "g")
    assert [r["step"] for r in rows] == [20, 60]
    assert read_rows(tmp_path / "g" / "regimes.jsonl") == rows
    assert all(0.0 <= r["memorised_fraction"] <= 1.0 and r["heldout_loss"] > 0 for r in rows)
    result = collect(tmp_path, plots=False)
    assert result["runs"][0]["n"] == 8 and result["runs"][0]["d"] == 2 and result["runs"][0]["final_step"] == 60


# ---------------------------------------------------------------- study planning and the halves statistics


def test_study_budget_refuses_a_grid_too_long() -> None:
    jobs = [Job(f"j{i}", 100, s) for i, s in enumerate([600, 500, 400, 300])]
    plan = pack(jobs, 2)
    assert [[j.seconds for j in core] for core in plan] == [[600, 300], [500, 400]]
    assert check_budget(plan, 15) == pytest.approx(15.0)
    with pytest.raises(ConfigError, match="needs 15.0 min of wall time on 2 cores"):
        check_budget(plan, 14)
    with pytest.raises(ConfigError, match="needs 30.0 CPU-minutes"):
        check_budget(plan, 20, cpu=True)


def test_study_script_refuses_an_over_budget_grid_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "study"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "memorisation_law.py"),
            str(out),
            "--n",
            "64,1024",
            "--steps-per-image",
            "100",
            "--budget-min",
            "10",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: the grid's scaled training needs")
    assert not out.exists()  # nothing written


def test_halves_statistics_on_hand_made_samples() -> None:
    g = torch.Generator().manual_seed(0)
    train_a = torch.rand(10, 1, 4, 4, generator=g) * 2 - 1
    train_b = torch.rand(10, 1, 4, 4, generator=g) * 2 - 1
    # both networks copy the same images of set a: identical pairs, network 0 copies its own set
    same = pair_statistics(train_a[:5], train_a[:5].clone(), train_a, train_b, 1 / 3)
    assert same["cosine_mean"] == pytest.approx(1.0) and same["l2_normalised_mean"] == pytest.approx(0.0, abs=1e-9)
    assert same["f_mem_0"] == 1.0 and same["nn_rms_0"] == pytest.approx(0.0, abs=1e-9)
    # each copies its own set: different images; a sign-flipped pair has cosine -1
    own = pair_statistics(train_a[:5], train_b[:5], train_a, train_b, 1 / 3)
    assert own["f_mem_0"] == 1.0 and own["f_mem_1"] == 1.0 and own["cosine_mean"] < 0.9
    mean = torch.cat([train_a, train_b]).double().mean(0)
    opposite = pair_statistics(train_a[:3], (2 * mean - train_a[:3].double()).float(), train_a, train_b, 1 / 3)
    assert opposite["cosine_mean"] == pytest.approx(-1.0, abs=1e-6)
