"""The allocator setting: a step's freed activations are reused by the next step without new page faults."""

from __future__ import annotations

import subprocess
import sys

import pytest
from train_helpers import child_env

PROBE = """
import ctypes, ctypes.util, resource, sys
import torch
from scratchllm.train.allocator import M_MMAP_THRESHOLD, keep_freed_cpu_memory
if sys.argv[1] == "keep":
    assert keep_freed_cpu_memory()
else:  # glibc's default threshold, held fixed: left alone, glibc may raise it after the first free
    assert ctypes.CDLL(ctypes.util.find_library("c")).mallopt(M_MMAP_THRESHOLD, 128 << 10)
def faults_of_one_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    activations = [torch.ones(5 << 20) for _ in range(10)]  # 10 x 20 MB, touched, all freed at the end
    del activations
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_step()
print(min(faults_of_one_step() for _ in range(3)))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=child_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_activation_memory_is_reused_without_page_faults():
    # 200 MB = 51,200 pages of 4 KB, faulted in again every step while blocks this large are mmapped
    assert _faults("default") > 20_000
    assert _faults("keep") < 1_000
