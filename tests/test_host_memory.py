"""reuse_freed_memory: on the CPU with glibc, memory a step frees is reused by the next without
page faults; outside it glibc's defaults return and the kept memory goes back."""

import resource

import pytest
import torch

from trainer.train import host_memory
from trainer.train.host_memory import glibc, reuse_freed_memory

pytestmark = pytest.mark.skipif(glibc() is None, reason="glibc's malloc only (Linux)")
MB = 1 << 20


def faults_of_steps(steps: int = 4, size: int = 64 * MB) -> list[int]:
    """Minor page faults of each of ``steps`` 'training steps' that fill and free a big buffer."""
    faults = []
    for _ in range(steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = torch.empty(size, dtype=torch.uint8)
        buffer.fill_(1)  # touch every page
        del buffer
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_freed_step_memory_is_reused_without_page_faults_and_returned_after():
    pages = 64 * MB // resource.getpagesize()
    with reuse_freed_memory(torch.device("cpu")):
        # the heap settles within a few steps (glibc places small blocks between), then the
        # same memory serves every step
        steady = faults_of_steps(24)[-8:]
        kept = resident_mb()
    assert sum(steady) < pages  # measured 0
    assert resident_mb() < kept - 48  # what was kept went back to the system on leaving


def test_other_devices_leave_malloc_alone(monkeypatch):
    def no_glibc():
        raise AssertionError("malloc settings touched for a GPU run")

    monkeypatch.setattr(host_memory, "glibc", no_glibc)
    with reuse_freed_memory(torch.device("meta")):
        pass
