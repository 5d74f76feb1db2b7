"""Class-balanced subsets (``dataset.n``, ``dataset.subset_part``) on random label sets: for every n
the subset of n lies inside the subset of n + 1, and the classes that still have images hold
shares within one of each other; the two parts are disjoint and each has the same properties."""

from __future__ import annotations

import torch

from ddpm.data.subset import balanced_subset, subset_order


def random_labels(g: torch.Generator) -> torch.Tensor:
    """Labels of 2..12 classes of very unequal sizes (some of 1..3 images), shuffled."""
    classes = int(torch.randint(2, 13, (1,), generator=g))
    sizes = [int(s) for s in torch.randint(1, 4, (classes,), generator=g)]
    for c in torch.randperm(classes, generator=g)[: classes // 2 + 1].tolist():
        sizes[c] = int(torch.randint(4, 80, (1,), generator=g))
    labels = torch.cat([torch.full((s,), 3 * c + 1) for c, s in enumerate(sizes)])  # labels need not be 0..C-1
    return labels[torch.randperm(len(labels), generator=g)]


def check_prefixes(labels: torch.Tensor, seed: int, part: int | None, n_max: int) -> set[int]:
    """Checks nesting and balance for every n = 1..n_max; returns the subset of n_max."""
    total = len(labels)
    order = subset_order(total, labels, seed, part)
    assert len(set(order.tolist())) == len(order) >= n_max  # each n adds one new image: nested
    for n in {1, 2, n_max // 3 + 1, n_max // 2 + 1, n_max}:  # balanced_subset(n) is the sorted first n
        assert torch.equal(balanced_subset(total, labels, n, seed, part), order[:n].sort().values), (n, part)
    classes = labels.unique()
    one_hot = (labels[order][:, None] == classes[None, :]).long()
    counts = one_hot.cumsum(0)[:n_max]  # row n-1: each class's images in the subset of n
    available = one_hot.sum(0)  # each class's images in this part
    open_ = counts < available
    lo = torch.where(open_, counts, torch.iinfo(torch.long).max).min(1).values
    hi = torch.where(open_, counts, -1).max(1).values
    some = open_.any(1)
    assert bool((hi[some] - lo[some] <= 1).all()), part  # open classes within one of each other
    ahead = torch.where(open_, 0, counts).max(1).values  # an exhausted class never got ahead of them
    assert bool((ahead[some] <= hi[some] + 1).all()), part
    return set(order[:n_max].tolist())


def test_random_label_sets_nest_and_stay_balanced() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        labels = random_labels(g)
        total = len(labels)
        assert check_prefixes(labels, trial, None, total) == set(range(total))
        halves = [check_prefixes(labels, trial, p, total // 2) for p in (0, 1)]
        assert not halves[0] & halves[1]  # disjoint halves


def test_unlabelled_parts_are_disjoint_and_nested() -> None:
    a = [set(balanced_subset(101, None, n, 4, 0).tolist()) for n in range(1, 51)]
    b = [set(balanced_subset(101, None, n, 4, 1).tolist()) for n in range(1, 51)]
    assert all(x < y for x, y in zip(a, a[1:], strict=False)) and all(x < y for x, y in zip(b, b[1:], strict=False))
    assert not a[-1] & b[-1] and len(a[-1] | b[-1]) == 100


def test_exhausted_class_surplus_does_not_break_nesting() -> None:
    """Cases the old share allocation got wrong: once a class ran out its surplus restarted the
    round-robin, so a class lost an image from n = 51 to n = 52, and open classes differed by 2."""
    sizes = [57, 32, 37, 56, 1, 21, 2, 2, 33, 5, 3, 1]
    labels = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    a, b = (set(balanced_subset(len(labels), labels, n, seed=0).tolist()) for n in (51, 52))
    assert a < b
    assert torch.bincount(labels[list(b)], minlength=12).tolist() == [7, 6, 6, 6, 1, 6, 2, 2, 7, 5, 3, 1]
    labels = torch.tensor([0] * 1 + [1] * 10 + [2] * 10 + [3] * 10)
    for n in range(1, 32):
        counts = torch.bincount(labels[balanced_subset(len(labels), labels, n, seed=0)], minlength=4)[1:]
        assert int(counts.max() - counts.min()) <= 1, (n, counts.tolist())
