"""Memorisation: nearest / second-nearest distances, the 1/3 ratio test and the pairing grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.memorisation import memorisation, nearest_two, save_memorisation_grid


@pytest.fixture(scope="module")
def mnist_train(data_dir) -> torch.Tensor:
    from omegaconf import OmegaConf

    from ddpm.data import load_dataset

    cfg = OmegaConf.create({"name": "mnist", "root": "MNIST", "image_size": 32, "channels": 1, "resize": False, "download": False})
    return load_dataset(cfg, data_dir, data_dir / "unused-cache", "train").images[:3000]


def test_nearest_two_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    q, r = torch.rand(7, 1, 5, 5, generator=g), torch.rand(40, 1, 5, 5, generator=g)
    d, idx = nearest_two(q, r, chunk=9)  # chunks smaller than the set exercise the running top-2
    full = torch.cdist(q.flatten(1).double(), r.flatten(1).double())
    want_d, want_i = full.topk(2, dim=1, largest=False)
    assert torch.equal(idx, want_i)
    assert torch.allclose(d, want_d, atol=1e-9)


def test_copies_of_training_images_are_all_memorised(mnist_train):
    picks = torch.arange(0, 3000, 60)  # 50 training images, copied exactly
    res = memorisation(mnist_train[picks], mnist_train)
    assert res.fraction == 1.0
    assert np.allclose(res.d1, 0.0, atol=1e-5)  # exact in float64 up to rounding
    # the nearest neighbour is the copied image itself, or an identical duplicate of it
    assert torch.equal(mnist_train[torch.as_tensor(res.nearest)], mnist_train[picks])


def test_random_noise_is_never_memorised(mnist_train):
    noise = torch.randint(0, 256, (50, 1, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    res = memorisation(noise, mnist_train)
    assert res.fraction == 0.0
    assert res.ratio.min() > 0.9  # noise is about equally far from every digit


def test_lightly_perturbed_copies_are_still_memorised_but_other_digits_are_not(mnist_train):
    g = torch.Generator().manual_seed(2)
    base = mnist_train[:20].float()
    near_copies = (base + torch.randn(base.shape, generator=g) * 8).clamp(0, 255).to(torch.uint8)
    res = memorisation(near_copies, mnist_train[20:].clone())  # originals removed from the training set
    assert res.fraction < 0.5  # the digits themselves are not in the set: mostly novel
    res_in = memorisation(near_copies, mnist_train)
    assert res_in.fraction >= 0.9  # with the originals present nearly all are flagged


def test_summary_carries_counts(mnist_train):
    res = memorisation(mnist_train[:10], mnist_train[:100])
    s = res.summary(100)
    assert s["num_samples"] == 10 and s["num_train"] == 100
    assert s["fraction_memorised"] == 1.0 and s["num_memorised"] == 10
    assert s["threshold"] == pytest.approx(1 / 3)


def test_grid_pairs_most_memorised_samples_with_their_neighbours(mnist_train, tmp_path):
    noise = torch.randint(0, 256, (5, 1, 32, 32), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    samples = torch.cat([noise, mnist_train[100:103]])  # the copies are samples 5, 6, 7
    res = memorisation(samples, mnist_train)
    path = save_memorisation_grid(samples, mnist_train, res, tmp_path / "mem.png", count=3)
    img = np.asarray(Image.open(path).convert("L"))
    assert img.shape == (2 * 32 + 3 * 2, 3 * 32 + 4 * 2)  # two rows of three with 2-px padding
    top, bottom = img[2:34, 2:34], img[36:68, 2:34]
    assert np.array_equal(top, bottom)  # a copy sits over its training image
    assert np.array_equal(top, mnist_train[100:103][torch.as_tensor(np.argsort(res.ratio[5:], kind="stable")[0])][0].numpy())
