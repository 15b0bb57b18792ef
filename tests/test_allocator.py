"""sccsa-train keeps freed memory in glibc's heap, so repeated steps stop faulting pages in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from sccsa_train import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

STEPS = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from sccsa_train.allocator import keep_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "keep" else False
    def step():  # a training step's pattern: several 5-30 MB buffers live at once, then all freed
        buffers = [np.ones(n) for n in (700_000, 2_600_000, 1_500_000, 3_700_000)]
        del buffers
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True, env=env)
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_repeated_steps_stop_faulting_pages():
    default_kept, default_faults = _faults("default")
    kept, faults = _faults("keep")
    assert (default_kept, kept) == ("False", "True")
    assert default_faults > 5_000  # glibc's defaults give the 67 MB back after every step (~38,000 faults here)
    assert faults < default_faults / 10


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_the_users_own_malloc_settings_win():
    kept, _ = _faults("keep", env={**os.environ, "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"})
    assert kept == "False"


@pytest.mark.parametrize(("environ", "user"), [
    ({}, False),
    ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}, False),
    ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2:glibc.malloc.mmap_threshold=65536"}, True),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, True),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, True),
])
def test_user_malloc_settings(environ, user):
    assert allocator.user_malloc_settings(environ) is user


def test_other_systems_are_left_alone(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
