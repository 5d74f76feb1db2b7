"""``ddpm.checkpoint.atomic_write``: the one atomic file write behind checkpoints and exports."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import pytest
import torch

from ddpm.checkpoint import PARTIAL_RE, atomic_save, atomic_write


def test_writes_the_bytes_and_creates_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "new" / "w.json"
    assert atomic_write(target, lambda f: f.write(b'{"step": 3}\n')) == target
    assert target.read_bytes() == b'{"step": 3}\n'
    assert sorted(p.name for p in target.parent.iterdir()) == ["w.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "step_0000010.pt"
    target.write_bytes(b"old")

    def torn(f: BinaryIO) -> None:
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, torn)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["step_0000010.pt"]


def test_temp_files_are_the_ones_a_killed_writer_is_cleaned_of(tmp_path: Path) -> None:
    seen: list[str] = []
    atomic_write(tmp_path / "last.pt", lambda f: seen.extend(p.name for p in tmp_path.iterdir()))
    assert len(seen) == 1 and PARTIAL_RE.match(seen[0]), seen  # clean_partial_writes would remove it


def test_atomic_save_is_torch_save(tmp_path: Path) -> None:
    state = {"format": "x", "w": torch.arange(4.0)}
    atomic_save(state, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    assert loaded["format"] == "x" and torch.equal(loaded["w"], torch.arange(4.0))
