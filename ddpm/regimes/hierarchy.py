"""Hierarchical data: one speciation time per level of a tree of clusters.

A tree has levels ℓ = 0 (the root) .. L (the leaves); every node is a cluster whose centre is the
weighted mean of its leaves. For each parent P at level ℓ - 1 its children c at level ℓ have the
covariance about P

    C_ℓ^P = Σ_{c child of P} (w_c / w_P) (m_c - m_P)(m_c - m_P)ᵀ,

and Λ_ℓ^P is its largest eigenvalue. The level's speciation time is t_S^ℓ = ½ log Λ_ℓ, with Λ_ℓ the
weighted mean of Λ_ℓ^P over the parents that split (all equal for ``synthetic=hierarchical``).

Measurement: with the exact empirical score of the points, two clones started from the same x_t
(the state of one backward trajectory at t) are finished with independent noise and the leaf of
each end is read off its nearest training point; φ_ℓ(t) is the probability that the two ends lie in
the same level-ℓ cluster. Since agreeing at level ℓ implies agreeing at ℓ - 1, the level's own
split is read from the conditional probability r_ℓ = φ_ℓ / φ_{ℓ-1}, normalised by its chance value
B_ℓ = Σ p_ℓ² / Σ p_{ℓ-1}² (clusters drawn independently from their weights):

    φ̃_ℓ = (r_ℓ - B_ℓ) / (1 - B_ℓ),

0 when the clones agree at level ℓ only by chance and 1 when they always agree; its ½-crossing is the
measured t_S^ℓ. The same curves come without sampling from the class posterior identity
φ_ℓ = E[Σ_c π_c²] (π_c the exact posterior weight of the level-ℓ cluster c at forward-noised points).

On images the leaves are the classes and the coarser levels come from a dendrogram of the class
means (``scipy.cluster.hierarchy``), cut into ``hierarchy.cuts`` super-classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ddpm.errors import ConfigError
from ddpm.regimes.collapse import draw_queries, last_crossing, log_grid
from ddpm.regimes.config import LINKAGES  # noqa: F401  (the linkage methods, checked by validate_regimes)
from ddpm.regimes.sampling import EpsFnT
from ddpm.regimes.seeds import generator
from ddpm.regimes.speciation import clone_pairs
from ddpm.regimes.theory import clone_probability_two_class, speciation_time
from ddpm.schedules import NoiseSchedule
from ddpm.score import ExactScore


@dataclass
class Tree:
    """A tree of clusters over K leaves.

    Args:
        leaf_centres: centres of the leaves (K, d), float64.
        leaf_weights: probabilities of the leaves (K,), summing to 1.
        leaf_to: for each level ℓ = 0..L, the node of level ℓ that contains each leaf (K,) (level 0:
            all zeros; level L: 0..K-1).
        names: for each level, a name per node (e.g. the classes a super-class holds).
    """

    leaf_centres: torch.Tensor
    leaf_weights: np.ndarray
    leaf_to: list[np.ndarray]
    names: list[list[str]]

    @property
    def depth(self) -> int:
        return len(self.leaf_to) - 1

    def nodes(self, level: int) -> int:
        return int(self.leaf_to[level].max()) + 1

    def weights(self, level: int) -> np.ndarray:
        """Node probabilities of a level (N_ℓ,)."""
        return np.bincount(self.leaf_to[level], weights=self.leaf_weights, minlength=self.nodes(level))

    def centres(self, level: int) -> torch.Tensor:
        """Node centres of a level (N_ℓ, d): weighted means of their leaves."""
        w = torch.as_tensor(self.leaf_weights, dtype=torch.float64)
        idx = torch.as_tensor(self.leaf_to[level], dtype=torch.long)
        num = torch.zeros(self.nodes(level), self.leaf_centres.shape[1], dtype=torch.float64).index_add_(
            0, idx, w[:, None] * self.leaf_centres
        )
        return num / torch.as_tensor(self.weights(level), dtype=torch.float64)[:, None]

    def parents(self, level: int) -> np.ndarray:
        """The parent (a node of level ℓ - 1) of every node of level ℓ >= 1 (N_ℓ,)."""
        out = np.zeros(self.nodes(level), dtype=np.int64)
        out[self.leaf_to[level]] = self.leaf_to[level - 1]
        return out


def simplex_offsets(branching: int, d: int, radius2: float, g: torch.Generator) -> torch.Tensor:
    """``branching`` offsets that sum to zero, each of squared length ``radius2``, along random
    orthonormal directions: o_i = r (u_i - ū), so their covariance (1/b) Σ o_i o_iᵀ has b - 1
    eigenvalues equal to radius2 / (b - 1) (the largest one, Λ) and the rest 0."""
    u, _ = torch.linalg.qr(torch.randn(d, branching, generator=g, dtype=torch.float64))
    u = u.T  # (b, d) orthonormal rows
    r2 = radius2 * branching / (branching - 1)
    return math.sqrt(r2) * (u - u.mean(0, keepdim=True))


def synthetic_tree(depth: int, branching: int, separation: list[float], d: int, seed: int) -> Tree:
    """The tree of ``synthetic=hierarchical``: each node of level ℓ - 1 has ``branching`` children at
    squared distance d μ̃_ℓ² from it (μ̃_ℓ = ``separation[ℓ - 1]``), along random orthonormal
    directions drawn per parent, so Λ_ℓ = d μ̃_ℓ² / (b - 1) for every parent. Equal-weight leaves."""
    if depth < 1 or branching < 2:
        raise ConfigError(f"a hierarchy needs depth >= 1 and branching >= 2, got depth={depth}, branching={branching}")
    if len(separation) != depth:
        raise ConfigError(f"synthetic.separation needs one value per level (depth={depth}), got {list(separation)}")
    if branching > d:
        raise ConfigError(f"synthetic.branching={branching} needs as many dimensions: synthetic.d={d}")
    g = generator(seed, "hierarchy-tree")
    centres = torch.zeros(1, d, dtype=torch.float64)
    for level in range(1, depth + 1):
        r2 = d * float(separation[level - 1]) ** 2
        centres = torch.cat([c[None] + simplex_offsets(branching, d, r2, g) for c in centres])
    K = branching**depth
    leaf_to = [np.arange(K) // branching ** (depth - level) for level in range(depth + 1)]
    names = [
        [".".join(str(int(i)) for i in _digits(j, branching, level)) or "root" for j in range(branching**level)]
        for level in range(depth + 1)
    ]
    return Tree(centres, np.full(K, 1.0 / K), leaf_to, names)


def _digits(j: int, base: int, n: int) -> list[int]:
    return [(j // base ** (n - 1 - i)) % base for i in range(n)]


def tree_from_classes(x: torch.Tensor, labels: torch.Tensor, cuts: list[int], method: str = "ward") -> tuple[Tree, dict[str, Any]]:
    """The classes as leaves, grouped into super-classes by a dendrogram of the class means.

    Args:
        x: points (n, d).
        labels: their classes (n,).
        cuts: numbers of super-classes of the coarser levels, increasing, each below the number of classes.
        method: the ``scipy.cluster.hierarchy.linkage`` method.

    Returns:
        the tree (levels: root, one per cut, the classes) and the linkage record (matrix and class order).
    """
    from scipy.cluster.hierarchy import cut_tree, dendrogram, linkage

    classes = np.unique(labels.numpy())
    K = len(classes)
    if K < 3:
        raise ConfigError(f"a hierarchy of classes needs at least 3 classes, the points have {K}")
    cuts = [int(c) for c in cuts]
    if any(not 2 <= c < K for c in cuts) or cuts != sorted(set(cuts)):
        raise ConfigError(f"hierarchy.cuts must increase strictly and lie in 2..{K - 1} (the points have {K} classes), got {cuts}")
    counts = np.array([int((labels == c).sum()) for c in classes], dtype=np.float64)
    means = torch.stack([x[labels == c].mean(0) for c in classes]).to(torch.float64)
    Z = linkage(means.numpy(), method=method)
    groups = cut_tree(Z, n_clusters=cuts)  # (K, len(cuts)), nested
    leaf_to = [np.zeros(K, dtype=np.int64)]
    for j in range(len(cuts)):
        # renumber so that node ids follow the smallest class they hold
        _, first = np.unique(groups[:, j], return_index=True)
        order = {int(groups[i, j]): r for r, i in enumerate(sorted(first))}
        leaf_to.append(np.array([order[int(v)] for v in groups[:, j]], dtype=np.int64))
    leaf_to.append(np.arange(K))
    names = []
    for level in leaf_to:
        names.append(
            ["{" + ",".join(str(int(classes[i])) for i in np.nonzero(level == node)[0]) + "}" for node in range(int(level.max()) + 1)]
        )
    order = dendrogram(Z, no_plot=True)["leaves"]
    record = {"method": method, "linkage": Z.tolist(), "class_order": [int(classes[i]) for i in order], "classes": classes.tolist()}
    return Tree(means, counts / counts.sum(), leaf_to, names), record


def level_lambdas(tree: Tree) -> list[dict[str, Any]]:
    """Per level ℓ = 1..L: Λ_ℓ^P of every parent that splits, their weighted mean Λ_ℓ and t_S^ℓ = ½ log Λ_ℓ."""
    out = []
    for level in range(1, tree.depth + 1):
        cen, w = tree.centres(level), tree.weights(level)
        pcen, pw = tree.centres(level - 1), tree.weights(level - 1)
        par = tree.parents(level)
        per_parent = []
        for p in range(tree.nodes(level - 1)):
            kids = np.nonzero(par == p)[0]
            if len(kids) < 2:
                continue  # a cluster that does not split at this level
            rows = torch.as_tensor(np.sqrt(w[kids] / pw[p]))[:, None] * (cen[kids] - pcen[p])
            lam = float(torch.linalg.eigvalsh(rows @ rows.T)[-1])  # top eigenvalue of rowsᵀ rows, from the small Gram matrix
            per_parent.append(
                {
                    "parent": tree.names[level - 1][p],
                    "into": " / ".join(tree.names[level][k] for k in kids),
                    "weight": float(pw[p]),
                    "children": len(kids),
                    "Lambda": lam,
                    "t_S": speciation_time(lam),
                }
            )
        if not per_parent:
            raise ConfigError(f"level {level} of the hierarchy splits no cluster")
        ws = np.array([q["weight"] for q in per_parent])
        lam = float(np.sum(ws * np.array([q["Lambda"] for q in per_parent])) / ws.sum())
        if not lam > 0:
            raise ConfigError(
                f"the centres of level {level} coincide with their parents' (Λ_{level} = {lam:g}): that level never separates"
            )
        out.append(
            {"level": level, "clusters": tree.nodes(level), "Lambda": lam, "t_S_theory": 0.5 * math.log(lam), "per_parent": per_parent}
        )
    return out


def within_parent_lambdas(x: torch.Tensor, leaf_labels: torch.Tensor, tree: Tree) -> list[float]:
    """Per level ℓ = 1..L: the weighted mean over the parents that split of the largest eigenvalue of
    the covariance of the points inside the parent (the paper's ½ log Λ applied within a cluster,
    which adds the within-cluster variance to Λ_ℓ)."""
    from ddpm.score import covariance_eigenvalues

    out = []
    lab = leaf_labels.numpy()
    for level in range(1, tree.depth + 1):
        par = tree.parents(level)
        pw = tree.weights(level - 1)
        vals, ws = [], []
        for p in range(tree.nodes(level - 1)):
            if (par == p).sum() < 2:
                continue
            keep = np.isin(lab, np.nonzero(tree.leaf_to[level - 1] == p)[0])
            if keep.sum() < 2:
                continue
            vals.append(float(covariance_eigenvalues(x[torch.as_tensor(keep)])[0]))
            ws.append(pw[p])
        out.append(float(np.dot(ws, vals) / np.sum(ws)) if ws else math.nan)
    return out


def conditional_normalised(phi: np.ndarray, phi_parent: np.ndarray, base: float) -> np.ndarray:
    """φ̃_ℓ = (φ_ℓ / φ_{ℓ-1} - B_ℓ) / (1 - B_ℓ)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(phi_parent > 0, phi / phi_parent, np.nan)
    return (r - base) / (1.0 - base)


def chance_bases(tree: Tree, leaf_probs: np.ndarray) -> list[float]:
    """B_ℓ = Σ p_ℓ² / Σ p_{ℓ-1}² for ℓ = 1..L, with the cluster probabilities of ``leaf_probs``."""
    sq = [
        float(np.square(np.bincount(tree.leaf_to[level], weights=leaf_probs, minlength=tree.nodes(level))).sum())
        for level in range(tree.depth + 1)
    ]
    return [sq[level] / sq[level - 1] for level in range(1, tree.depth + 1)]


def _level_matrix(tree: Tree, level: int, columns: int) -> torch.Tensor:
    """One-hot (columns, N_ℓ): leaf column -> its level-ℓ node (columns beyond the tree's leaves: none)."""
    m = torch.zeros(columns, tree.nodes(level), dtype=torch.float64)
    k = min(columns, len(tree.leaf_to[level]))
    m[torch.arange(k), torch.as_tensor(tree.leaf_to[level][:k])] = 1.0
    return m


def posterior_levels(score: ExactScore, tree: Tree, times: np.ndarray, queries: int, batch: int, seed: int) -> dict[str, np.ndarray]:
    """φ_ℓ(t) = E[Σ_c π_c²] for every level ℓ = 0..L at forward-noised training points (leaf labels).

    Returns ``t``, ``phi`` (L+1, T) and ``phi_se`` (L+1, T); level 0 is 1.
    """
    index, z = draw_queries(score.n, score.d, queries, seed)
    tt = torch.as_tensor(np.asarray(times), dtype=torch.float64)
    mats = [_level_matrix(tree, level, score.num_classes) for level in range(tree.depth + 1)]
    vals = [[] for _ in mats]
    for s in range(0, queries, batch):
        cw = score.forward_stats(index[s : s + batch], z[s : s + batch], tt, classes=True)["class_w"].cpu()  # (T, B, K)
        for level, m in enumerate(mats):
            pi = cw @ m
            vals[level].append((pi * pi).sum(-1).numpy())
    v = np.stack([np.concatenate(x, 1) for x in vals])  # (L+1, T, Q)
    return {"t": np.asarray(times, dtype=np.float64), "phi": v.mean(-1), "phi_se": v.std(-1, ddof=1) / math.sqrt(v.shape[-1])}


def clone_levels(
    eps_fn: EpsFnT,
    classify: Callable[[torch.Tensor], torch.Tensor],
    tree: Tree,
    schedule: NoiseSchedule,
    d: int,
    branch_times: np.ndarray,
    trajectories: int,
    steps: int,
    seed: int,
    batch: int = 256,
) -> dict[str, np.ndarray]:
    """The cloning experiment for every level (:func:`ddpm.regimes.speciation.clone_pairs`): ``same[ℓ]``
    records whether the two copies' leaves lie in the same level-ℓ cluster.

    Args:
        eps_fn: noise prediction ε(x, k, t) (the exact score of the points).
        classify: the leaf of each final sample (B, d) -> (B,).
        tree: the tree (leaf -> cluster of each level).
        schedule: the discrete schedule.
        d: dimension.
        branch_times: requested branch times (the nearest visited steps are used).
        trajectories: trajectories per branch time.
        steps: sampler steps over the whole schedule.
        seed: seed of all noise.
        batch: trajectories per backward pass.

    Returns:
        ``t``, ``k`` (branch times and steps, decreasing), ``same`` (L+1, T, trajectories) as 0/1.
    """
    ks, ts, first, second = clone_pairs(eps_fn, classify, schedule, d, branch_times, trajectories, steps, seed, "hierarchy-clone", batch)
    same = np.stack([(torch.as_tensor(m)[first] == torch.as_tensor(m)[second]).double().numpy() for m in tree.leaf_to])
    return {"t": ts, "k": np.array(ks), "same": same}


def clone_curves(clone: dict[str, np.ndarray], bases: list[float]) -> dict[str, np.ndarray]:
    """φ_ℓ and the conditional normalised φ̃_ℓ (ℓ = 1..L) with binomial standard errors, in increasing t."""
    same = clone["same"]
    order = np.argsort(clone["t"])
    n = same.shape[-1]
    phi = same.mean(-1)[:, order]
    agree = same.sum(-1)[:, order]
    out = {"t": clone["t"][order], "k": clone["k"][order], "phi": phi, "phi_se": np.sqrt(phi * (1 - phi) / max(n - 1, 1))}
    tilde, tilde_se = [], []
    for level in range(1, same.shape[0]):
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(agree[level - 1] > 0, agree[level] / agree[level - 1], np.nan)
            r_se = np.sqrt(r * (1 - r) / np.maximum(agree[level - 1] - 1, 1))
        tilde.append((r - bases[level - 1]) / (1 - bases[level - 1]))
        tilde_se.append(r_se / (1 - bases[level - 1]))
    out["phi_tilde"], out["phi_tilde_se"] = np.array(tilde), np.array(tilde_se)
    return out


def branch_times(centres: list[float], t_min: float, t_max: float, per_level: int, width: float = 0.5) -> np.ndarray:
    """Branch times of the cloning runs: ``per_level`` log-spaced times within a factor e^±``width``
    of each level's expected crossing (its posterior-identity crossing), clipped to [t_min, t_max]."""
    out = []
    for c in centres:
        c = min(max(float(c), t_min), t_max)
        out.append(log_grid(max(t_min, c * math.exp(-width)), min(t_max, c * math.exp(width)), max(per_level, 2)))
    return np.unique(np.concatenate(out))


def fitted_crossing(t: np.ndarray, y: np.ndarray, se: np.ndarray, centre: float, width: float = 0.5) -> float | None:
    """Where a noisy φ̃ crosses ½ near ``centre``: a weighted least-squares line in log t through the
    points within a factor e^±``width`` of it (weights 1/se², se floored at 0.02), solved for ½;
    the last crossing of the points when the line does not fall."""
    ok = np.isfinite(y) & (t >= centre * math.exp(-width) * 0.999) & (t <= centre * math.exp(width) * 1.001)
    if ok.sum() >= 3:
        w = 1.0 / np.maximum(np.asarray(se)[ok], 0.02) ** 2
        slope, icpt = np.polyfit(np.log(t[ok]), y[ok], 1, w=np.sqrt(w))
        if slope < 0:
            return float(math.exp((0.5 - icpt) / slope))
    fin = np.isfinite(y)
    return last_crossing(t[fin], y[fin])[0] if fin.sum() >= 2 else None


def level_crossings(t: np.ndarray, tilde: np.ndarray) -> list[float | None]:
    """The largest t at which each level's φ̃ falls through ½ (NaN points left out)."""
    out = []
    for row in tilde:
        ok = np.isfinite(row)
        out.append(last_crossing(t[ok], row[ok])[0] if ok.sum() >= 2 else None)
    return out


def two_class_level_theory(tree_cfg: Any, level: int) -> tuple[float, float]:
    """For ``synthetic=hierarchical`` with two children per node: the (μ̃, σ_eff) of the two-class
    closed form for level ℓ (:func:`ddpm.regimes.theory.clone_probability_two_class`), with the
    within-leaf variance and the deeper levels' offsets (random directions: μ̃_ℓ'² per
    dimension each) as the class variance σ_eff²."""
    sep = [float(s) for s in tree_cfg.separation]
    var = float(tree_cfg.sigma2) + sum(s * s for s in sep[level:])
    return sep[level - 1], math.sqrt(var)


def measure_hierarchy(
    score: ExactScore,
    tree: Tree,
    schedule: NoiseSchedule,
    cfg: Any,
    seed: int,
    clone_eps: EpsFnT | None,
    classify: Callable[[torch.Tensor], torch.Tensor] | None,
    clone_leaf_probs: np.ndarray | None,
    d: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Per-level speciation: theory (Λ_ℓ from the tree), the posterior identity and the cloning experiment.

    Args:
        score: the exact score of all points, labelled by leaf.
        tree: the tree.
        schedule: the discrete schedule (cloning runs on its steps).
        cfg: the ``speciation`` config node (grid, queries, clone_* sizes).
        seed: the run's seed.
        clone_eps, classify: the exact score of the cloning points and the leaf of a final sample
            (None: no cloning).
        clone_leaf_probs: leaf frequencies of the cloning points (its chance agreement).
        d: dimension.
    """
    levels = level_lambdas(tree)
    t_max = float(cfg.t_max) if cfg.t_max is not None else float(schedule.ou_times[-1])
    curves: dict[str, np.ndarray] = {}
    probs = np.bincount(score.labels.cpu().numpy(), minlength=len(tree.leaf_weights)) / score.n
    post = posterior_levels(score, tree, log_grid(cfg.t_min, t_max, cfg.points), cfg.queries, cfg.batch, seed)
    bases = chance_bases(tree, probs)
    post_tilde = np.array([conditional_normalised(post["phi"][lv], post["phi"][lv - 1], bases[lv - 1]) for lv in range(1, tree.depth + 1)])
    curves.update(
        {"posterior_t": post["t"], "posterior_phi": post["phi"], "posterior_phi_se": post["phi_se"], "posterior_phi_tilde": post_tilde}
    )
    for rec, t in zip(levels, level_crossings(post["t"], post_tilde), strict=True):
        rec["t_S_posterior"] = t
    if clone_eps is not None and classify is not None and cfg.clone_traj > 0:
        centres = [rec.get("t_S_posterior") or rec["t_S_theory"] for rec in levels]
        branch = branch_times(centres, float(cfg.t_min), t_max, int(cfg.clone_points))
        raw = clone_levels(clone_eps, classify, tree, schedule, d, branch, cfg.clone_traj, cfg.clone_steps, seed + 1)
        cl = clone_curves(raw, chance_bases(tree, clone_leaf_probs if clone_leaf_probs is not None else probs))
        curves.update({f"clone_{k}": v for k, v in cl.items()})
        for i, rec in enumerate(levels):
            rec["t_S_clone"] = fitted_crossing(cl["t"], cl["phi_tilde"][i], cl["phi_tilde_se"][i], centres[i])
            rec["clone_branch_window"] = [centres[i] * math.exp(-0.5), centres[i] * math.exp(0.5)]
    for rec in levels:
        for key in ("t_S_posterior", "t_S_clone"):
            if rec.get(key) is not None:
                rec[f"{key}_minus_theory"] = rec[key] - rec["t_S_theory"]
    summary = {
        "hierarchy_levels": levels,
        "hierarchy_names": tree.names,
        "hierarchy_chance_bases": bases,
        "hierarchy_grid": [float(cfg.t_min), t_max, int(cfg.points), int(cfg.clone_points)],
    }
    return summary, curves


def run_hierarchy(
    cfg: Any, data_cfg: Any, points: Any, score: ExactScore, schedule: NoiseSchedule, device: Any
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``regimes=hierarchy``: the tree of the data, Λ_ℓ per level and the measured speciation times.

    Args:
        cfg: the composed ``regimes`` config (``hierarchy``, ``speciation``, ``kernel``, ``seed``).
        data_cfg: the data source node (:func:`ddpm.regimes.data.data_source`).
        points: the :class:`ddpm.regimes.data.Points`.
        score: the exact score of all points (its labels are replaced by the leaves when they differ).
        schedule: the discrete schedule.
        device: where the kernels run.
    """
    from ddpm.regimes.data import hierarchical_tree

    if points.labels is None:
        raise ConfigError(f"regimes=hierarchy needs labelled points (classes as leaves); {data_cfg.name} has no labels")
    record: dict[str, Any] = {}
    if data_cfg.name == "hierarchical":
        tree = hierarchical_tree(data_cfg)
        leaves = points.labels
        record["hierarchy_source"] = "synthetic tree: Λ_ℓ = d μ̃_ℓ² / (b - 1) for every parent"
        record["hierarchy_Lambda_formula"] = [int(data_cfg.d) * float(s) ** 2 / (int(data_cfg.branching) - 1) for s in data_cfg.separation]
    else:
        tree, link = tree_from_classes(points.x, points.labels, list(cfg.hierarchy.cuts), str(cfg.hierarchy.linkage))
        classes = torch.as_tensor(link["classes"])
        leaves = torch.searchsorted(classes, points.labels)
        record["hierarchy_source"] = f"classes grouped by a {link['method']} dendrogram of their means, cut into {list(cfg.hierarchy.cuts)}"
        record["hierarchy_dendrogram"] = link
    if score.labels is None or not torch.equal(score.labels.cpu(), leaves):
        score = ExactScore(points.x, leaves, cfg.kernel.dtype, cfg.kernel.chunk_size, device)
    s = cfg.speciation
    clone_eps = classify = probs = None
    if s.clone_traj > 0:
        from ddpm.regimes.tracking import exact_eps_fn

        x, lab = points.x, leaves
        if s.clone_n is not None and s.clone_n < points.n:
            keep = torch.randperm(points.n, generator=generator(cfg.seed, "clone-subset"))[: int(s.clone_n)]
            x, lab = x[keep], lab[keep]
        clone_score = score if x is points.x else ExactScore(x, lab, cfg.kernel.dtype, cfg.kernel.chunk_size, device)
        clone_eps = exact_eps_fn(clone_score)

        def classify(ends: torch.Tensor) -> torch.Tensor:
            return lab[clone_score.nearest(ends, k=1)[1][:, 0].cpu()]

        probs = np.bincount(lab.numpy(), minlength=len(tree.leaf_weights)) / len(lab)
        record["hierarchy_clone_n"] = len(lab)
    summary, curves = measure_hierarchy(score, tree, schedule, s, int(cfg.seed), clone_eps, classify, probs, points.d)
    if data_cfg.name == "hierarchical" and int(data_cfg.branching) == 2:
        # two children per node: each level's split is a two-class problem (closed form, dotted in the plot)
        t_max = float(s.t_max) if s.t_max is not None else float(schedule.ou_times[-1])
        tt = log_grid(float(s.t_min), t_max, 400)
        curves["theory_t"] = tt
        for rec in summary["hierarchy_levels"]:
            mu, sig = two_class_level_theory(data_cfg, rec["level"])
            y = 2 * clone_probability_two_class(tt, points.d, mu, sig) - 1
            curves[f"theory_phi_tilde_{rec['level']}"] = y
            rec["t_S_two_class_closed_form"] = last_crossing(tt, y)[0]
    for rec, lam in zip(summary["hierarchy_levels"], within_parent_lambdas(points.x, leaves, tree), strict=True):
        rec["Lambda_within_parent_data"] = lam
        rec["t_S_within_parent_data"] = speciation_time(lam) if math.isfinite(lam) else None
        for key in ("t_S_theory", "t_S_posterior", "t_S_clone", "t_S_two_class_closed_form"):
            if rec.get(key) is not None:
                rec[key.replace("t_S", "k_S")] = int(schedule.time_to_step(float(rec[key])))
    record.update(summary)
    return record, curves
