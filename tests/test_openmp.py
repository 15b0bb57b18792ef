"""How sccsa-train's idle OpenMP threads wait: sleep at once by default, spin briefly with --spin-wait."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from sccsa_train.openmp import SPIN_COUNT, set_wait_policy

STEPS = textwrap.dedent("""
    import resource, sys
    from sccsa_train.openmp import set_wait_policy
    set_wait_policy(spin=sys.argv[1] == "spin")
    import torch
    torch.set_num_threads(2)
    x, w = torch.randn(64, 4, 32, 32), torch.randn(8, 4, 3, 3)
    def step():  # short parallel operators one after the other, as in a training step
        for _ in range(10):
            torch.conv2d(x, w, padding=1).relu_().sum()
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    for _ in range(100):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before)
""")


def _switches(mode: str) -> int:
    env = {name: value for name, value in os.environ.items() if name not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2,
                    reason="GNU OpenMP's wait policy; needs two cores for two threads")
def test_a_brief_spin_catches_the_next_operator_without_sleeping():
    at_once, spin = _switches("default"), _switches("spin")
    assert at_once > 1_000  # a futex sleep and wake-up per operator (~8,000 here)
    assert spin < at_once / 4


@pytest.mark.parametrize("user", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"},
                                  {"GOMP_SPINCOUNT": "0"}, {"GOMP_SPINCOUNT": "infinite"}])
@pytest.mark.parametrize("spin", [False, True])
def test_the_users_own_wait_policy_wins(user, spin):
    environ = dict(user)
    assert set_wait_policy(spin, environ) is False
    assert environ == user


@pytest.mark.parametrize(("spin", "set_"), [(False, {"OMP_WAIT_POLICY": "PASSIVE"}),
                                            (True, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(SPIN_COUNT)})])
def test_sets_the_variables_when_the_user_set_neither(spin, set_):
    environ = {"OMP_NUM_THREADS": "2"}
    assert set_wait_policy(spin, environ) is True
    assert environ == {"OMP_NUM_THREADS": "2", **set_}
