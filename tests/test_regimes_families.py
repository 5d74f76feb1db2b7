"""The regimes study beyond one speciation time, against closed forms: hierarchical data (one t_S per
level, from cloning on the exact score), the linear model (the Gaussian surrogate's score, its sampler
and the ε-distances of ``regimes=trained``) and the effective potential along two classes' axis."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config

from ddpm.errors import ConfigError
from ddpm.regimes import potential as pot
from ddpm.regimes.cli import run_regimes
from ddpm.regimes.hierarchy import Tree, chance_bases, conditional_normalised, level_lambdas, synthetic_tree, tree_from_classes
from ddpm.regimes.linear import eps_distances
from ddpm.schedules import NoiseSchedule
from ddpm.score import ExactScore, GaussianScore, covariance_eigen

FAST = ["runtime.num_threads=1", "speciation.points=24", "speciation.queries=512", "speciation.t_min=0.1"]


def _schedule() -> NoiseSchedule:
    return NoiseSchedule.from_config(compose_config("regimes", ["synthetic=gaussian"]).schedule)


# --- hierarchical data ---------------------------------------------------------------------------


@pytest.mark.parametrize(("branching", "depth"), [(2, 3), (3, 2)])
def test_synthetic_tree_has_lambda_d_mu2_over_b_minus_1_at_every_parent(branching: int, depth: int) -> None:
    sep = [2.0, 0.7, 0.3][:depth]
    tree = synthetic_tree(depth, branching, sep, 24, seed=0)
    assert tree.leaf_centres.shape == (branching**depth, 24) and np.allclose(tree.leaf_weights, branching**-depth)
    levels = level_lambdas(tree)
    for lv, mu in zip(levels, sep, strict=True):
        assert lv["clusters"] == branching ** lv["level"]
        assert len(lv["per_parent"]) == branching ** (lv["level"] - 1)
        for p in lv["per_parent"]:  # every parent: children at |m_c - m_P|² = d μ̃², covariance eigenvalue d μ̃²/(b-1)
            assert p["Lambda"] == pytest.approx(24 * mu**2 / (branching - 1), rel=1e-10)
        assert lv["t_S_theory"] == pytest.approx(0.5 * math.log(24 * mu**2 / (branching - 1)), rel=1e-10)
    # a parent is the mean of its children, and the children lie at the stated distance
    for level in range(1, depth + 1):
        cen, par = tree.centres(level), tree.parents(level)
        pc = tree.centres(level - 1)
        dist2 = ((cen - pc[par]) ** 2).sum(1)
        torch.testing.assert_close(dist2, torch.full_like(dist2, 24 * sep[level - 1] ** 2))


def test_conditional_normalisation_of_the_clone_agreement() -> None:
    tree = synthetic_tree(2, 3, [1.0, 0.5], 8, seed=0)
    p = np.full(9, 1 / 9)
    assert chance_bases(tree, p) == pytest.approx([1 / 3, 1 / 3])  # b equal children: chance 1/b at every level
    # independent clones (φ_ℓ = Σ p_ℓ²) give 0, always-agreeing ones 1
    assert conditional_normalised(np.array([1 / 9]), np.array([1 / 3]), 1 / 3) == pytest.approx([0.0])
    assert conditional_normalised(np.array([1.0]), np.array([1.0]), 1 / 3) == pytest.approx([1.0])


def test_hierarchical_speciation_times_from_cloning(tmp_path: Path) -> None:
    """A depth-2 binary tree in d = 16 with Λ_1 = 64 and Λ_2 = 10.24: the cloning experiment on the
    exact score (256 trajectories per branch time) puts each level's φ̃ = ½ crossing within 0.3 of
    ½ log Λ_ℓ, and within 0.2 of the two-class closed form of that level's split; the class-posterior
    identity within 0.1 of it."""
    over = ["synthetic=hierarchical", "regimes=hierarchy", "synthetic.d=16", "synthetic.depth=2", "synthetic.separation=[2.0,0.8]"]
    over += ["synthetic.sigma2=0.05", "synthetic.n=400", "speciation.clone_traj=256", *FAST]
    rec = run_regimes(compose_config("regimes", over), tmp_path)
    levels = rec["hierarchy_levels"]
    assert [lv["clusters"] for lv in levels] == [2, 4]
    assert [lv["Lambda"] for lv in levels] == pytest.approx([64.0, 10.24], rel=1e-9)
    for lv in levels:
        assert abs(lv["t_S_clone"] - lv["t_S_theory"]) < 0.3, lv
        assert abs(lv["t_S_clone"] - lv["t_S_two_class_closed_form"]) < 0.2, lv
        assert abs(lv["t_S_posterior"] - lv["t_S_two_class_closed_form"]) < 0.1, lv
        assert lv["k_S_clone"] == int(_schedule().time_to_step(lv["t_S_clone"]))
    assert levels[0]["t_S_clone"] > levels[1]["t_S_clone"] + 0.5  # the coarse split comes first
    on_disk = json.loads((tmp_path / "regimes.json").read_text())
    assert on_disk["hierarchy_levels"][0]["t_S_clone"] == levels[0]["t_S_clone"]
    curves = np.load(tmp_path / "curves.npz")
    assert curves["hierarchy_clone_phi_tilde"].shape == (2, len(curves["hierarchy_clone_t"]))
    assert (tmp_path / "hierarchy.png").stat().st_size > 5000


def test_dendrogram_of_class_means_nests_the_classes() -> None:
    """Six classes at three well separated pairs of centres: the dendrogram cut into 3 groups finds
    the pairs, and the levels nest (root, pairs, classes)."""
    g = torch.Generator().manual_seed(0)
    pair = torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]], dtype=torch.float64)
    means = torch.cat([pair + 1.0, pair - 1.0])  # classes c and c + 3 are a pair
    labels = torch.arange(6).repeat(50)
    x = means[labels] + 0.1 * torch.randn(300, 3, generator=g, dtype=torch.float64)
    tree, link = tree_from_classes(x, labels, [3])
    assert tree.depth == 2 and [tree.nodes(lv) for lv in range(3)] == [1, 3, 6]
    assert sorted(tree.names[1]) == ["{0,3}", "{1,4}", "{2,5}"]
    assert link["method"] == "ward" and sorted(link["class_order"]) == list(range(6))
    with pytest.raises(ConfigError, match="hierarchy.cuts must increase strictly and lie in 2..5"):
        tree_from_classes(x, labels, [6])


def test_a_level_that_does_not_split_is_refused() -> None:
    tree = Tree(torch.zeros(2, 3, dtype=torch.float64), np.array([0.5, 0.5]), [np.zeros(2, dtype=int), np.arange(2)], [["r"], ["a", "b"]])
    with pytest.raises(ConfigError, match="Λ_1 = 0"):
        level_lambdas(tree)


# --- the linear model ----------------------------------------------------------------------------


def _known_gaussian(d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(d, generator=g, dtype=torch.float64), a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_gaussian_surrogate_score_is_the_analytic_score_of_a_known_gaussian() -> None:
    """N(μ, Σ) noised to t is N(e^{-t} μ, e^{-2t} Σ + Δ_t I): the score -(e^{-2t} Σ + Δ_t I)^{-1}(x - e^{-t} μ),
    ε = -sqrt(Δ_t) × score, x̂_0 by Tweedie, and the score is the gradient of the log density."""
    mu, cov = _known_gaussian()
    lam, vec = torch.linalg.eigh(cov)
    gs = GaussianScore(mu, lam, vec)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for t in (0.01, 0.3, 1.0, 4.0):
        e2, dt = math.exp(-2 * t), -math.expm1(-2 * t)
        cov_t = e2 * cov + dt * torch.eye(5, dtype=torch.float64)
        want = -torch.linalg.solve(cov_t, (x - math.exp(-t) * mu).T).T
        torch.testing.assert_close(gs.score(x, t), want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(gs.eps(x, t), -math.sqrt(dt) * want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(gs.denoised(x, t), mu + math.exp(-t) * (cov @ torch.linalg.solve(cov_t, (x - math.exp(-t) * mu).T)).T)
        dist = torch.distributions.MultivariateNormal(math.exp(-t) * mu, cov_t)
        torch.testing.assert_close(gs.log_density(x, t), dist.log_prob(x), rtol=1e-10, atol=1e-10)
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(dist.log_prob(xr).sum(), xr)
        torch.testing.assert_close(gs.score(x, t), grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("gram", [False, True])
def test_surrogate_of_points_is_their_mean_and_covariance(gram: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """From points: the mean and the 1/n covariance, also of rank < d (n < d, through the Gram matrix)."""
    import ddpm.score as score

    n, d = (6, 20) if gram else (200, 5)
    if gram:
        monkeypatch.setattr(score, "FULL_EIG_MAX", 8)  # take the n x n route
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * torch.linspace(0.5, 2, d, dtype=torch.float64)
    mu, lam, vec, rest = covariance_eigen(x)
    xc = x - x.mean(0)
    cov = xc.T @ xc / n
    assert rest == 0.0 and len(lam) == min(n - 1, d)
    torch.testing.assert_close(mu, x.mean(0))
    torch.testing.assert_close(vec @ torch.diag(lam) @ vec.T, cov, rtol=1e-9, atol=1e-9)
    gs = GaussianScore.from_points(x)
    q = torch.randn(4, d, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = 0.5
    cov_t = math.exp(-2 * t) * cov + -math.expm1(-2 * t) * torch.eye(d, dtype=torch.float64)
    torch.testing.assert_close(gs.score(q, t), -torch.linalg.solve(cov_t, (q - math.exp(-t) * x.mean(0)).T).T, rtol=1e-8, atol=1e-8)


def test_surrogate_beyond_the_gram_size_keeps_the_top_and_the_total_variance(monkeypatch: pytest.MonkeyPatch) -> None:
    """n and d beyond the exact routes: the top eigenvalues by a randomised SVD, the rest of the
    variance spread evenly over the other directions (the trace is kept)."""
    import ddpm.score as score

    monkeypatch.setattr(score, "FULL_EIG_MAX", 8)
    scale = torch.cat([torch.tensor([5.0, 4.0, 3.0], dtype=torch.float64), torch.full((27,), 0.3, dtype=torch.float64)])
    x = torch.randn(400, 30, generator=torch.Generator().manual_seed(10), dtype=torch.float64) * scale
    mu, lam, vec, rest = covariance_eigen(x, top=5)
    xc = x - x.mean(0)
    exact = torch.linalg.eigvalsh(xc.T @ xc / 400).flip(0)
    torch.testing.assert_close(lam[:3], exact[:3], rtol=1e-6, atol=0)
    assert float(lam.sum()) + 25 * rest == pytest.approx(float(exact.sum()), rel=1e-9)
    gs = GaussianScore(mu, lam, vec, rest)
    assert torch.isfinite(gs.eps(x[:4], 1e-3)).all()


def test_gaussian_score_sampler_draws_the_surrogate() -> None:
    """sampler=gaussian_score: samples with the points' mean and covariance (d = 2, correlated)."""
    from test_samplers import make_diffusion

    from ddpm.generate import generate
    from ddpm.samplers import GaussianScoreSampler, build_sampler

    diff = make_diffusion()
    g = torch.Generator().manual_seed(7)
    pts = (torch.randn(3000, 2, generator=g) @ torch.tensor([[0.5, 0.2], [0.0, 0.3]])).view(3000, 1, 1, 2) + 0.1
    sampler = build_sampler(
        compose_config("sample", ["sampler=gaussian_score", "sampler.steps=100", "sampler.clip_denoised=false"]).sampler, diff, points=pts
    )
    assert isinstance(sampler, GaussianScoreSampler)
    x = generate(None, sampler, (1, 1, 2), 1500, 0, 1500, torch.device("cpu")).double().flatten(1)
    p = pts.flatten(1).double()
    # 1,500 samples: standard errors about 0.014 (means) and 0.01 (covariances)
    torch.testing.assert_close(x.mean(0), p.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), torch.cov(p.T), atol=0.04, rtol=0)
    with pytest.raises(ConfigError, match="sampler=gaussian_score needs training points"):
        build_sampler(compose_config("sample", ["sampler=gaussian_score"]).sampler, diff)


def test_eps_distances_vanish_against_themselves_and_the_gaussian_limit() -> None:
    """ε_θ = ε* gives net_exact = 0, ε_θ = ε_G gives net_gauss = 0; for many Gaussian points the exact
    empirical score is the surrogate's above the collapse time (exact_gauss small there)."""
    sched = _schedule()
    mu, cov = _known_gaussian(4)
    g = torch.Generator().manual_seed(8)
    x = mu + torch.randn(4000, 4, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    exact, gauss = ExactScore(x, dtype="float64"), GaussianScore.from_points(x)
    steps = [300, 600, 999]
    same = eps_distances(lambda q, k, t: exact.eps(q, t), exact, gauss, sched, x, steps, 64, seed=0)
    assert np.all(same["net_exact"] < 1e-20)
    lin = eps_distances(lambda q, k, t: gauss.eps(q, t), exact, gauss, sched, x, steps, 64, seed=0)
    assert np.all(lin["net_gauss"] < 1e-20)
    assert np.all(same["exact_gauss"] < 0.01)  # t >= 0.8 >> t_C of 4000 points in d = 4


# --- potentials ----------------------------------------------------------------------------------


def test_mixture_potential_and_its_curvature_closed_form() -> None:
    """V_t along the axis of N(±a e, σ² I) against the d-dimensional density on the line; its
    curvature at 0 against finite differences; the sign change at t* = ½ log(1 + a² - σ²), negative
    below and positive above, next to t_S = ½ log(a² + σ²)."""
    a, sigma, d = 3.0, 0.8, 6
    e = torch.zeros(d, dtype=torch.float64)
    e[0] = 1.0
    q = np.linspace(-4, 4, 81)
    for t in (0.3, 1.2, 2.5):
        et, gam = math.exp(-t), sigma**2 * math.exp(-2 * t) - math.expm1(-2 * t)
        comps = [torch.distributions.MultivariateNormal(s * et * a * e, gam * torch.eye(d, dtype=torch.float64)) for s in (1, -1)]
        line = torch.as_tensor(q)[:, None] * e
        logp = torch.logsumexp(torch.stack([c.log_prob(line) for c in comps]), 0) - math.log(2)
        v = pot.mixture_potential(q, t, a, sigma)
        # the section of the d-dim density equals the 1-D potential up to a constant
        np.testing.assert_allclose(v - v[40], -(logp - logp[40]).numpy(), atol=1e-10)
        h = 1e-3
        fd = (
            pot.mixture_potential(h, t, a, sigma) - 2 * pot.mixture_potential(0.0, t, a, sigma) + pot.mixture_potential(-h, t, a, sigma)
        ) / h**2
        assert float(pot.mixture_curvature(t, a, sigma)) == pytest.approx(float(fd), rel=1e-5)
    t_star = pot.mixture_curvature_time(a, sigma)
    assert t_star == pytest.approx(0.5 * math.log(1 + a * a - sigma**2))
    assert abs(float(pot.mixture_curvature(t_star, a, sigma))) < 1e-10
    assert pot.mixture_curvature(t_star - 0.05, a, sigma) < 0 < pot.mixture_curvature(t_star + 0.05, a, sigma)
    t_s = 0.5 * math.log(a * a + sigma**2)
    assert t_star - t_s == pytest.approx(0.5 * math.log(1 + (1 - 2 * sigma**2) / (a * a + sigma**2)))
    assert pot.mixture_curvature_time(0.5, 1.0) is None  # classes closer than their width: never two wells


def test_empirical_potential_converges_to_the_closed_form() -> None:
    """20,000 draws of the two-Gaussian mixture in d = 8: the exact empirical marginal along the axis,
    its curvature and its sign change agree with the closed form; the section has the curvature formula."""
    from ddpm.regimes.data import mixture_means

    means = mixture_means(2, 8, 0.9, seed=0)
    g = torch.Generator().manual_seed(9)
    labels = torch.randint(0, 2, (20000,), generator=g)
    x = means[labels] + torch.randn(20000, 8, generator=g, dtype=torch.float64)
    axis, _ = pot.class_axis(x, labels, [0, 1], "mixture")
    a = float(means[0].norm())
    assert axis.half == pytest.approx(a, rel=0.01) and axis.within_var == pytest.approx(1.0, rel=0.03)
    q = np.linspace(-3, 3, 61)
    for t in (0.5, 1.0, 2.0):
        v, vc = pot.potential(axis, q, t), pot.mixture_potential(q, t, a, 1.0)
        np.testing.assert_allclose(v - v[30], vc - vc[30], atol=0.05)
        for kind in ("marginal", "section"):
            h = 1e-3
            fd = (pot.potential(axis, [h], t, kind) - 2 * pot.potential(axis, [0.0], t, kind) + pot.potential(axis, [-h], t, kind)) / h**2
            assert float(pot.curvature(axis, [0.0], t, kind)[0]) == pytest.approx(float(fd[0]), rel=1e-4, abs=1e-4)
    t_star = pot.curvature_sign_change(axis, 0.05, 5.0)
    assert t_star == pytest.approx(pot.mixture_curvature_time(a, 1.0), abs=0.03)


def test_potential_run_on_the_mixture(tmp_path: Path) -> None:
    over = ["synthetic=mixture", "regimes=potential", "synthetic.d=32", "synthetic.n=4000", "runtime.num_threads=1"]
    rec = run_regimes(compose_config("regimes", over), tmp_path)
    assert rec["potential_t_curvature_closed_form"] == pytest.approx(0.5 * math.log(32))  # 1 + dμ̃² - σ² = d
    assert rec["potential_t_curvature"] == pytest.approx(rec["potential_t_curvature_closed_form"], abs=0.05)
    assert rec["potential_t_S_two_class"] == pytest.approx(rec["potential_t_S_closed_form"], abs=0.05)
    curves = np.load(tmp_path / "curves.npz")
    mid = curves["potential_q"].size // 2
    for t, v in zip(curves["potential_times"], curves["potential_V"], strict=True):
        # a double well below the sign change (the midpoint a local maximum), a single one above
        assert (v[mid] > v[mid - 5]) == (t < rec["potential_t_curvature"]), t
    assert (tmp_path / "potential.png").stat().st_size > 5000


def test_potential_classes_must_exist(tmp_path: Path) -> None:
    x, labels = torch.randn(10, 3, dtype=torch.float64), torch.tensor([0, 1] * 5)
    with pytest.raises(ConfigError, match="has no class 7"):
        pot.class_axis(x, labels, [0, 7], "toy")
    with pytest.raises(ConfigError, match="needs labelled data"):
        pot.class_axis(x, None, [0, 1], "cats")
    with pytest.raises(ConfigError, match="synthetic=mixture has classes 0..1"):
        run_regimes(compose_config("regimes", ["synthetic=mixture", "regimes=potential", "potential.classes=[0,2]"]), tmp_path)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["synthetic.depth=0"], "synthetic.depth must be >= 1"),
        (["synthetic.branching=0"], "synthetic.branching must be >= 2"),
        (["synthetic.separation=[2.0,0.0,0.3]"], r"synthetic.separation must be > 0 .*got \[2.0, 0.0, 0.3\]"),
        (["synthetic.separation=[2.0,0.7]"], "one value per level"),
        (["synthetic.depth=1", "synthetic.separation=[1.0]", "synthetic.branching=40"], "needs as many dimensions"),
    ],
)
def test_bad_hierarchies_are_refused(overrides: list[str], match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        run_regimes(compose_config("regimes", ["synthetic=hierarchical", "regimes=hierarchy", *overrides]), tmp_path)


# --- real data -----------------------------------------------------------------------------------


def test_mnist_hierarchy_and_potential(data_dir: Path, tmp_path: Path) -> None:
    """MNIST at 7x7 (1,000 digits): the dendrogram levels nest and every level gets its times; the
    potential of the digits 0 and 1 has its curvature sign change."""
    base = ["dataset=mnist", "dataset.n=1000", "points.downsample=4", f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'cache'}"]
    over = [*base, "regimes=hierarchy", "speciation.clone_traj=16", "speciation.clone_steps=20", "speciation.clone_points=2", *FAST]
    rec = run_regimes(compose_config("regimes", over), tmp_path / "h")
    assert [lv["clusters"] for lv in rec["hierarchy_levels"]] == [2, 4, 10]
    names = rec["hierarchy_names"]
    assert sorted(c for g in names[1] for c in g.strip("{}").split(",")) == [str(i) for i in range(10)]
    for lv in rec["hierarchy_levels"]:
        assert lv["Lambda"] > 0 and lv["t_S_theory"] == pytest.approx(0.5 * math.log(lv["Lambda"]))
    rec = run_regimes(compose_config("regimes", [*base, "regimes=potential", "runtime.num_threads=1"]), tmp_path / "p")
    assert rec["potential_classes"] == [0, 1] and rec["potential_t_curvature"] is not None
    with pytest.raises(ConfigError, match="mnist has classes 0..9"):
        run_regimes(compose_config("regimes", [*base, "regimes=potential", "potential.classes=[0,12]"]), tmp_path / "q")


def test_trained_run_sets_the_network_beside_the_gaussian_surrogate(data_dir: Path, tmp_path: Path) -> None:
    """regimes=trained adds the three ε-distances (linear.png); the network-to-exact one is the gap
    curve itself (same points and noise). ddpm-sample sampler=gaussian_score draws from the surrogate."""
    from conftest import tiny_train_overrides

    from ddpm.sample import sample
    from ddpm.train import train

    data = [f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'cache'}"]
    over = {"dataset.n": 64, "dataset.image_size": 8, "dataset.resize": True, "model.channel_mult": "[1]", "train.max_steps": 4}
    over.update({"train.ckpt_every": 4, "train.sample_every": 0, "train.num_sample_images": 0, "runtime.num_threads": 1})
    train(compose_config("train", tiny_train_overrides(data_dir, tmp_path / "cache", **over)), tmp_path / "train")
    regimes = ["regimes=trained", f"ckpt={tmp_path / 'train'}", "trained.samples=4", "trained.steps=10", "trained.gap_points=4"]
    regimes += ["trained.gap_queries=16", "collapse.queries=64", "collapse.points=8", "collapse.refine=2", "runtime.num_threads=1"]
    rec = run_regimes(compose_config("regimes", [*regimes, *data]), tmp_path / "regimes")
    curves = np.load(tmp_path / "regimes" / "curves.npz")
    np.testing.assert_allclose(curves["eps_distance_net_exact"], curves["gap_train_gap"], rtol=1e-9)
    for name in ("net_gauss", "exact_gauss"):
        assert np.all(np.isfinite(curves[f"eps_distance_{name}"])) and np.all(curves[f"eps_distance_{name}"] >= 0)
        assert rec[f"eps_{name}_small_t"] == curves[f"eps_distance_{name}"][0]
    assert (tmp_path / "regimes" / "linear.png").stat().st_size > 5000
    out = tmp_path / "sample"
    over = [f"ckpt={tmp_path / 'train'}", "sampler=gaussian_score", "sampler.steps=20", "num_samples=4", "batch_size=4", "save_images=true"]
    sample(compose_config("sample", [*over, "gif.num_images=2", "runtime.num_threads=1", *data]), out)
    assert len(list((out / "images").glob("*.png"))) == 4
