"""ddpm.runtime.keep_freed_memory: freed activation-sized buffers are reused, not faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from ddpm.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def churn():
    for _ in range(10):
        torch.ones(8 << 20)  # 32 MiB, above glibc's mmap threshold: allocated, touched, freed
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(setting: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_removes_the_page_faults_of_buffer_churn() -> None:
    default, keep = faults("default"), faults("keep")
    assert default > 10 * 8192 * 0.9  # each 32 MiB buffer faults in its 8,192 pages again
    assert keep < 0.01 * default
