"""Generate images from a trained network with any sampler, reproducibly per sample."""

from __future__ import annotations

import functools
import hashlib

import torch
from tqdm.auto import tqdm

from ddpm.errors import CheckpointError
from ddpm.samplers.base import Callback, EpsFn, Sampler, StackedRandomGenerator


def generate(
    eps_fn: EpsFn,
    sampler: Sampler,
    shape: tuple[int, int, int],
    num_samples: int,
    seed: int,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    callback: Callback | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return ``num_samples`` samples (float32 in model range, on CPU).

    Sample i starts from noise drawn by its own generator seeded ``seed + i``, and draws all its
    later noise from it too, so sample i is the same image whatever ``batch_size`` is.

    Args:
        eps_fn: the ε-predictor (see :func:`ddpm.samplers.make_eps_fn`).
        sampler: the reverse-process integrator.
        shape: (C, H, W) of one image.
        num_samples: how many images.
        seed: seed of sample 0.
        batch_size: images per network call.
        device: where to run.
        progress: show a tqdm bar over network evaluations.
        callback: forwarded to :meth:`Sampler.sample` (called per batch, per step).
        labels: (num_samples,) class of each sample for a conditional network (None: unconditional).
    """
    if labels is not None and len(labels) != num_samples:
        raise ValueError(f"{len(labels)} labels for {num_samples} samples")
    out = []
    bar = tqdm(total=sampler.num_evaluations * -(-num_samples // batch_size), desc="sampling", unit="eval", disable=not progress)
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        rng = StackedRandomGenerator(device, range(seed + start, seed + start + n))
        x_T = rng.randn(shape)
        fn = eps_fn if labels is None else functools.partial(eps_fn, y=labels[start : start + n].to(device))
        x = sampler.sample(fn, x_T, rng, callback=callback, progress=bar).cpu()
        _refuse_nonfinite(x, start)
        out.append(x)
    bar.close()
    return torch.cat(out)


class NonFiniteSamples(CheckpointError):
    """Sampling produced NaN or inf pixels: reported as one line instead of written as black images."""


def _refuse_nonfinite(x: torch.Tensor, start: int) -> None:
    """Raise :class:`NonFiniteSamples` when any of the samples ``start..start+len(x)-1`` has a non-finite pixel.

    Args:
        x: a batch of samples (N, C, H, W).
        start: the index of its first sample.
    """
    bad = ~torch.isfinite(x).flatten(1).all(dim=1)
    if bad.any():
        first = start + int(bad.nonzero()[0])
        raise NonFiniteSamples(
            f"sampling produced NaN or inf pixels in {int(bad.sum())} of samples {start}..{start + len(x) - 1} (first: sample {first}); "
            "nothing of this batch was written: the network's weights or its precision overflow (try fp32 or an earlier checkpoint)"
        )


def noise_to_step(diffusion, x0: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Noise clean images to step ``k`` with per-image generators (image i uses ``seed + i``)."""
    rng = StackedRandomGenerator(x0.device, range(seed, seed + x0.shape[0]))
    kk = torch.full((x0.shape[0],), k, device=x0.device, dtype=torch.long)
    return diffusion.q_sample(x0, kk, rng.randn(x0.shape[1:]))


def reverse_seed(image_seed: int) -> int:
    """The seed of the reverse-process noise of the image whose forward noise is seeded ``image_seed``.

    A hash of the image seed in its own stream: it never equals ``image_seed`` (which made x_k) nor,
    in practice, another image's forward seed, so the reverse noise is independent of the forward
    noise. Reusing the forward seed makes the first reverse noise equal ε and inflates the MSE.

    Args:
        image_seed: the forward-noise seed of the image (``seed + i``).
    """
    digest = hashlib.blake2b(f"ddpm-reverse-noise:{int(image_seed)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (1 << 63)


def denoise_from(eps_fn: EpsFn, sampler: Sampler, x_k: torch.Tensor, seed: int, callback: Callback | None = None) -> torch.Tensor:
    """Run ``sampler`` (built with ``max_step=k``) from the noised images ``x_k`` back to x_0.

    Image i was noised with seed ``seed + i`` (:func:`noise_to_step`); the sampler's fresh noise for
    it comes from a generator seeded :func:`reverse_seed` ``(seed + i)``, independent of that.

    Args:
        eps_fn: the ε-predictor.
        sampler: the reverse-process integrator, built with ``max_step=k``.
        x_k: the noised images.
        seed: the forward-noise seed of image 0.
        callback: forwarded to :meth:`Sampler.sample`.
    """
    rng = StackedRandomGenerator(x_k.device, [reverse_seed(seed + i) for i in range(x_k.shape[0])])
    return sampler.sample(eps_fn, x_k, rng, callback=callback)
