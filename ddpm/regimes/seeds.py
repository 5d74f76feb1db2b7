"""Independent random streams per purpose.

Seeding two torch generators with the same integer and drawing different amounts gives shifted
copies of one stream: noise drawn for the queries would then repeat the training points
themselves. Every purpose therefore gets its own seed, hashed from (seed, purpose).
"""

from __future__ import annotations

import hashlib

import torch


def stable_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed derived from ``seed`` and a purpose string (stable across runs and platforms)."""
    digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded with :func:`stable_seed`."""
    return torch.Generator().manual_seed(stable_seed(seed, purpose))
