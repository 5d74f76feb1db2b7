"""Closed-form checks of the regimes analyses: time map, exact score kernel, collapse, speciation, spectrum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import posterior

from ddpm.regimes import theory
from ddpm.regimes.collapse import draw_queries, last_crossing, measure_collapse
from ddpm.regimes.data import mixture_means, sample_synthetic
from ddpm.regimes.sampling import backward, visited_steps
from ddpm.regimes.speciation import clone_experiment, mixture_posterior, posterior_clone_curve
from ddpm.regimes.tracking import exact_eps_fn, measure_trajectories
from ddpm.schedules import NoiseSchedule, make_betas
from ddpm.score import ExactScore, covariance_eigenvalues


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared machine two threads per test process oversubscribe the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def linear_schedule(T: int = 1000) -> NoiseSchedule:
    return NoiseSchedule(make_betas("linear", T, 1e-4, 2e-2))


def gaussian_points(n: int, d: int, sigma2: float, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed + 12345), dtype=torch.float64) * math.sqrt(sigma2)


# ------------------------------------------------------------------ time convention
def test_step_time_map_linear_schedule():
    s = linear_schedule()
    t = s.ou_times
    assert float(t[-1]) == pytest.approx(5.0589, abs=5e-4)
    assert float(t[0]) == pytest.approx(-0.5 * math.log(1 - 1e-4), rel=1e-12)
    # Δ_{t_k} = 1 - ᾱ_k, i.e. t_k = -½ log ᾱ_k.
    torch.testing.assert_close(1 - torch.exp(-2 * t), 1 - s.alphas_cumprod, rtol=1e-12, atol=1e-15)
    k = torch.arange(s.T)
    assert torch.equal(s.time_to_step(s.step_to_time(k)), k)
    # Between two steps, k(t) is the first step whose ᾱ is at or below e^{-2t}.
    mid = 0.5 * (t[:-1] + t[1:])
    assert torch.equal(s.time_to_step(mid), k[1:])
    assert int(s.time_to_step(100.0)) == s.T - 1
    assert int(s.time_to_step(0.0)) == 0


# ------------------------------------------------------------------ exact score kernel
def test_exact_score_single_point_closed_form():
    a = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    ks = ExactScore(a, dtype="float64")
    for t in (0.05, 0.7, 3.0):
        d = 1 - math.exp(-2 * t)
        torch.testing.assert_close(ks.score(x, t), (math.exp(-t) * a - x) / d, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ks.eps(x, t), (x - math.exp(-t) * a) / math.sqrt(d), rtol=1e-10, atol=1e-10)


def test_exact_score_is_gradient_of_log_density():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(7, 4, generator=g, dtype=torch.float64) * 1.5 + 0.5
    ks = ExactScore(a, dtype="float64", chunk_size=3)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    h = 1e-5
    for t in (0.1, 0.6):
        fd = torch.zeros_like(x)
        for j in range(4):
            e = torch.zeros(4, dtype=torch.float64)
            e[j] = h
            fd[:, j] = (ks.log_density(x + e, t) - ks.log_density(x - e, t)) / (2 * h)
        torch.testing.assert_close(ks.score(x, t), fd, rtol=1e-6, atol=1e-6)
    # log P_t integrates the mixture exactly: for n = 1 it is a Gaussian log-density.
    one = ExactScore(a[:1], dtype="float64")
    t, d = 0.4, 1 - math.exp(-0.8)
    ref = -((x - math.exp(-t) * a[:1]) ** 2).sum(1) / (2 * d) - 2 * math.log(2 * math.pi * d)
    torch.testing.assert_close(one.log_density(x, t), ref)


def test_chunk_size_does_not_change_results():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(53, 6, generator=g, dtype=torch.float64) + 2.0
    labels = torch.randint(0, 3, (53,), generator=g)
    x = torch.randn(9, 6, generator=g, dtype=torch.float64)
    t = torch.linspace(0.03, 2.0, 9, dtype=torch.float64)
    idx, z = torch.tensor([0, 5, 52]), torch.randn(3, 6, generator=g, dtype=torch.float64)
    times = torch.tensor([0.02, 0.3, 1.5], dtype=torch.float64)
    ref = ExactScore(a, labels, "float64", chunk_size=1000)
    rs, rf = ref.stats(x, t, classes=True), ref.forward_stats(idx, z, times, classes=True)
    for cs in (1, 7, 53):
        ks = ExactScore(a, labels, "float64", chunk_size=cs)
        st, fs = ks.stats(x, t, classes=True), ks.forward_stats(idx, z, times, classes=True)
        for name in ("lse", "mean", "max_w", "sum_w2", "class_w"):
            torch.testing.assert_close(getattr(st, name), getattr(rs, name), rtol=1e-12, atol=1e-12)
        assert torch.equal(st.argmax, rs.argmax)
        for name in ("log_w0", "sum_w2", "max_w", "class_w"):
            torch.testing.assert_close(fs[name], rf[name], rtol=1e-12, atol=1e-12)
    # float32 agrees with float64 to float32 accuracy, whatever the chunking.
    f32 = ExactScore(a, labels, "float32", chunk_size=8).stats(x, t)
    torch.testing.assert_close(f32.mean, rs.mean, rtol=1e-4, atol=1e-4)


def test_kernel_matches_brute_force_softmax():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(40, 5, generator=g, dtype=torch.float64) * 2
    ks = ExactScore(a, dtype="float64", chunk_size=16)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0.01, 0.1, 0.3, 0.8, 2.0, 4.0], dtype=torch.float64)
    et, dt = torch.exp(-t)[:, None, None], (1 - torch.exp(-2 * t))[:, None]
    w = torch.softmax(-((x[:, None] - et * a[None]) ** 2).sum(-1) / (2 * dt), 1)
    st = ks.stats(x, t)
    torch.testing.assert_close(st.mean, w @ a)
    torch.testing.assert_close(st.sum_w2, (w * w).sum(1))
    assert torch.equal(st.argmax, w.argmax(1))
    # The two-matrix-product path gives the same weights as noising explicitly.
    idx, z = torch.tensor([4, 17]), torch.randn(2, 5, generator=g, dtype=torch.float64)
    fs = ks.forward_stats(idx, z, t)
    for i, ti in enumerate(t.tolist()):
        xt = math.exp(-ti) * a[idx] + math.sqrt(1 - math.exp(-2 * ti)) * z
        lw = torch.log_softmax(-((xt[:, None] - math.exp(-ti) * a[None]) ** 2).sum(-1) / (2 * (1 - math.exp(-2 * ti))), 1)
        torch.testing.assert_close(fs["log_w0"][i], lw[torch.arange(2), idx])
    d, i = ks.nearest(x, k=2)
    bd = torch.cdist(x, a).sort(1)
    torch.testing.assert_close(d, bd.values[:, :2])
    assert torch.equal(i, bd.indices[:, :2])


def test_bad_times_are_config_errors():
    from ddpm.errors import ConfigError

    ks = ExactScore(torch.zeros(2, 2), dtype="float64")
    with pytest.raises(ConfigError, match="> 0"):
        ks.stats(torch.zeros(1, 2), 0.0)
    with pytest.raises(ConfigError, match="dtype"):
        ExactScore(torch.zeros(2, 2), dtype="float16")


# ------------------------------------------------------------------ collapse
def test_collapse_time_closed_forms():
    n, d, s2 = 1000, 16, 2.0
    tc = theory.collapse_time_isotropic(n, d, s2)
    assert tc == pytest.approx(0.5 * math.log(1 + s2 / (n ** (2 / d) - 1)), rel=1e-12)
    # The spectral root with equal eigenvalues is the isotropic time, and the excess entropy vanishes there.
    assert theory.collapse_time_spectral(n, np.full(d, s2)) == pytest.approx(tc, rel=1e-9)
    assert float(theory.excess_entropy(tc, n, np.full(d, s2))) == pytest.approx(0.0, abs=1e-10)
    # s_sep - s equals the excess entropy for Gaussian data.
    t = np.array([0.3, 1.0, 2.5])
    lam = np.linspace(0.2, 3.0, d)
    np.testing.assert_allclose(
        theory.separation_entropy(t, math.log(n) / d) - theory.gaussian_entropy(t, lam), theory.excess_entropy(t, n, lam), atol=1e-12
    )
    # A non-flat spectrum never collapses later than the isotropic law with its mean eigenvalue.
    assert theory.collapse_time_spectral(n, lam) <= theory.collapse_time_isotropic(n, d, float(lam.mean()))


@pytest.mark.parametrize(("n", "d", "sigma2"), [(4000, 32, 1.0), (6000, 48, 1.0)])
def test_isotropic_p_half_crossing_matches_theory(n, d, sigma2):
    ks = ExactScore(gaussian_points(n, d, sigma2), dtype="float32")
    summary, c = measure_collapse(ks, 0.05, 2.0, 20, 10, 4096, 512, seed=0, f_threshold=0.05)
    tc = theory.collapse_time_isotropic(n, d, sigma2)
    # The p_½ crossing sits a few percent above the large-d formula (finite-d bias).
    assert 0.0 <= summary["t_C"] / tc - 1.0 <= 0.08, (summary["t_C"], tc)
    # f/α approaches the excess-entropy theory above 1.4 t_C.
    alpha = math.log(n) / d
    f_th = theory.excess_entropy(c["t"], n, np.full(d, sigma2))
    above = c["t"] > 1.4 * tc
    assert above.sum() >= 5
    assert np.abs(c["f"][above] - f_th[above]).max() / alpha < 0.05
    # The f-threshold reading is earlier than the p_½ crossing (it underestimates t_C).
    assert summary["t_C_f_threshold"] < summary["t_C"]
    # Far below t_C every query sits on its own point; far above, weights are spread out.
    assert c["p_half"][0] > 0.99 and c["p_half"][-1] < 0.01
    assert c["sum_w2"][0] > 0.98


def test_last_crossing_interpolates_the_largest_crossing():
    t = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    v = np.array([1.0, 0.4, 0.8, 0.2, 0.0])  # crosses ½ twice: the larger crossing counts
    tc, i = last_crossing(t, v)
    assert i == 2 and tc == pytest.approx(0.3 + 0.1 * (0.8 - 0.5) / 0.6)
    assert last_crossing(t, np.full(5, 0.9)) == (None, None)
    assert last_crossing(t, np.full(5, 0.1)) == (None, None)


# ------------------------------------------------------------------ speciation
def test_two_class_clone_probability_at_speciation():
    # Analytic: a function of sqrt(d) e^{-t}; at t_S = ½ log(d μ̃² + σ²) it tends to 0.775.
    for d in (1_000, 100_000):
        assert float(theory.clone_probability_two_class(0.5 * math.log(d + 1), d)) == pytest.approx(0.775, abs=2e-3)
    assert float(theory.clone_probability_two_class(0.0 + 1e-9, 64)) == pytest.approx(1.0, abs=1e-6)
    assert float(theory.clone_probability_two_class(8.0, 64)) == pytest.approx(0.5, abs=1e-3)

    # Simulated cloning with the exact score of the mixture agrees within its standard error.
    d = 16
    means = mixture_means(2, d, 1.0, 0)
    post = mixture_posterior(means, 1.0)

    def eps(x, k, t):
        return post(x, torch.full((x.shape[0],), t, dtype=torch.float64))[1]

    def classify(x):
        return (x @ means[0] > 0).long()

    sched = linear_schedule()
    t_s = 0.5 * math.log(d + 1)
    r = clone_experiment(eps, classify, sched, d, np.array([t_s]), trajectories=4000, steps=400, seed=0, batch=4000)
    phi = float(theory.clone_probability_two_class(r["t"][0], d))
    assert abs(r["phi"][0] - phi) < 2 * r["phi_se"][0], (r, phi)
    assert r["phi_se"][0] < 0.01


def test_posterior_identity_on_an_empirical_mixture():
    # φ(t) = E[Σ_c π_c²] with the class weights of the exact empirical score of mixture samples.
    d, n = 32, 4000
    cfg = type("C", (), {"name": "mixture", "d": d, "classes": 2, "mu": 1.0, "sigma": 1.0, "seed": 0})()
    x, labels = sample_synthetic(cfg, n, 0)
    ks = ExactScore(x, labels, "float64")
    t_s = 0.5 * math.log(d + 1)
    cur = posterior_clone_curve(ks, np.array([0.5 * t_s, t_s, 2 * t_s]), 4000, 1000, seed=0)
    phi = theory.clone_probability_two_class(cur["t"], d)
    assert np.all(np.abs(cur["phi"] - phi) < 3 * cur["phi_se"] + 2e-3), (cur["phi"], phi)


def test_mixture_spectrum_largest_eigenvalue():
    d, n, mu, sigma = 64, 3000, 1.0, 1.0
    cfg = type("C", (), {"name": "mixture", "d": d, "classes": 2, "mu": mu, "sigma": sigma, "seed": 0})()
    x, _ = sample_synthetic(cfg, n, 0)
    lam = covariance_eigenvalues(x)
    assert lam[0] == pytest.approx(d * mu**2 + sigma**2, rel=0.05)
    assert theory.speciation_time(lam[0]) == pytest.approx(0.5 * math.log(d + 1), abs=0.03)
    # The rest of the spectrum is the class variance (Marchenko–Pastur edge below (1 + sqrt(d/n))²).
    assert lam[1] < sigma**2 * (1 + math.sqrt(d / n)) ** 2 * 1.05


def test_large_d_spectrum_keeps_the_trace():
    # d > 4096 and n > 4096: randomised top eigenvalues, the rest spread evenly (the trace is kept).
    g = torch.Generator().manual_seed(4)
    n, d = 4200, 4100
    u = torch.randn(d, generator=g)
    u = u / u.norm()
    x = 0.3 * torch.randn(n, d, generator=g) + 5.0 * torch.randn(n, 1, generator=g) * u
    lam = covariance_eigenvalues(x, top=16)
    xc = x.double() - x.double().mean(0)
    assert lam.sum() == pytest.approx(float((xc * xc).sum() / n), rel=1e-6)
    assert lam[0] == pytest.approx(25.0, rel=0.06)
    assert lam[20] < 0.09 * 4.1


# ------------------------------------------------------------------ backward sampling and tracking
def test_backward_sampling_of_a_gaussian_follows_the_discrete_chain():
    # N(0, s² I) data: the exact ε is x sqrt(Δ) / (s² e^{-2t} + Δ), so each ancestral move is linear,
    # x' = m x + sqrt(v) z, and the sample variance must follow Var' = m² Var + v from Var = 1.
    s2, d = 0.25, 8
    sched = linear_schedule()
    seq = visited_steps(sched, 250)
    abar, ts = sched.alphas_cumprod.tolist(), sched.ou_times.tolist()

    def c(k):
        dt = 1 - math.exp(-2 * ts[k])
        return math.sqrt(dt) / (s2 * math.exp(-2 * ts[k]) + dt)

    def eps(x, k, t):
        return x * c(k)

    var = 1.0
    for i in range(len(seq) - 1, -1, -1):
        a, ap = abar[seq[i]], abar[seq[i - 1]] if i > 0 else 1.0
        v = (1 - ap) / (1 - a) * (1 - a / ap)
        m = ap**0.5 * (1 - (1 - a) ** 0.5 * c(seq[i])) / a**0.5 + max(1 - ap - v, 0.0) ** 0.5 * c(seq[i])
        var = m * m * var + v
    x = torch.randn(4000, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = backward(eps, sched, x, seq, torch.Generator().manual_seed(6))
    assert float(out.var()) == pytest.approx(var, rel=0.03)
    # ... and the chain is close to the data variance (the ancestral sampler's small deficit).
    assert var == pytest.approx(s2, rel=0.1)


def test_exact_score_samples_end_on_training_points():
    a = gaussian_points(30, 6, 1.0)
    ks = ExactScore(a, dtype="float64")
    sched = linear_schedule(200)
    summary, tc = measure_trajectories(exact_eps_fn(ks), ks, a, sched, 12, 200, 0, 1 / 3, "exact")
    assert summary["exact_memorised_fraction"] == 1.0 and summary["exact_copies"] == 12
    assert summary["exact_nn_distance_median"] < 1e-6  # each sample is its training point
    # every trajectory has a collapse time on the schedule's time range
    assert np.all(np.isfinite(tc["collapse_t"]))
    assert np.all((tc["collapse_t"] > 0) & (tc["collapse_t"] <= float(sched.ou_times[-1])))


def test_queries_are_independent_of_the_data_stream():
    # The same integer seed for data and queries must not make the query noise repeat the data
    # (two generators with one seed give shifted copies of one stream).
    n, d = 500, 8
    cfg = type("C", (), {"name": "gaussian", "d": d, "sigma2": 1.0})()
    a, _ = sample_synthetic(cfg, n, 0)
    for q in (n // 2, 2 * n):
        _, z = draw_queries(n, d, q, 0)
        assert not bool(torch.isin(z.flatten(), a.flatten()).any())


def test_backward_step_is_the_diffusion_posterior_on_adjacent_steps():
    """regimes' reverse step is GaussianDiffusion's: on adjacent steps it is q(x_{k-1} | x_k, x̂_0)."""
    from omegaconf import OmegaConf

    from ddpm.diffusion import GaussianDiffusion

    sched = NoiseSchedule.from_config(OmegaConf.create({"name": "linear", "T": 50, "beta_start": 1e-4, "beta_end": 0.02}))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    abar = sched.alphas_cumprod.double()
    for k in (1, 10, 49):
        xk = abar[k].sqrt() * x0 + (1 - abar[k]).sqrt() * eps
        torch.testing.assert_close(GaussianDiffusion.x0_at(xk, eps, float(abar[k])), x0)
        mean, var = GaussianDiffusion.respaced_step(x0, eps, float(abar[k]), float(abar[k - 1]))
        ref_mean, ref_var = posterior(sched, x0, xk, torch.full((4,), k))
        torch.testing.assert_close(mean, ref_mean.double(), rtol=1e-5, atol=1e-6)
        assert var == pytest.approx(float(ref_var.flatten()[0]), rel=1e-5)
    # the backward chain with ε = the true noise of one point lands on that point (no noise at the last move)
    seq = [0, 1]
    x1 = abar[1].sqrt() * x0 + (1 - abar[1]).sqrt() * eps
    out = backward(lambda x, k, t: eps if k == 1 else (x - abar[0].sqrt() * x0) / (1 - abar[0]).sqrt(), sched, x1, seq, g)
    torch.testing.assert_close(out, x0, rtol=1e-3, atol=1e-2)
