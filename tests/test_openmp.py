"""How sccsa-train's idle OpenMP threads wait: sleep at once by default, spin briefly with --spin-wait."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from sccsa_train.openmp import SPIN_COUNT, USER_SETTINGS, set_wait_policy

PROCESS = textwrap.dedent("""
    import sys
    from sccsa_train.openmp import set_wait_policy
    if sys.argv[1] != "untouched":
        set_wait_policy(spin=sys.argv[1] == "spin")
    import torch
    torch.set_num_threads(2)
    torch.randn(256, 256) @ torch.randn(256, 256)  # a parallel region: the OpenMP runtime starts
""")


def _spin_count(mode: str) -> str:
    """The spin count torch's OpenMP runtime runs with (GNU OpenMP prints it with OMP_DISPLAY_ENV)."""
    env = {name: value for name, value in os.environ.items() if name not in USER_SETTINGS}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    out = subprocess.run([sys.executable, "-c", PROCESS, mode], capture_output=True, text=True, check=True, env=env)
    found = re.search(r"GOMP_SPINCOUNT = '(\w+)'", out.stderr + out.stdout)
    if found is None:
        pytest.skip("torch's OpenMP runtime is not GNU OpenMP (no GOMP_SPINCOUNT in OMP_DISPLAY_ENV's report)")
    return found.group(1)


def test_torchs_openmp_runtime_runs_with_the_wait_policy_set():
    """Set before torch loads, the variables reach its OpenMP runtime: no spinning by default (GNU
    OpenMP's own default spins 300,000 iterations), SPIN_COUNT with --spin-wait. What each costs in
    time is measured on the speed page (contention rows)."""
    assert _spin_count("untouched") == "300000"
    assert _spin_count("default") == "0"
    assert _spin_count("spin") == str(SPIN_COUNT)


@pytest.mark.parametrize("user", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"},
                                  {"GOMP_SPINCOUNT": "0"}, {"GOMP_SPINCOUNT": "infinite"}])
@pytest.mark.parametrize("spin", [False, True])
def test_the_users_own_wait_policy_wins(user, spin, caplog):
    environ = dict(user)
    assert set_wait_policy(spin, environ) is False
    assert environ == user
    assert ("--spin-wait ignored" in caplog.text) is spin  # the flag that had no effect is named


@pytest.mark.parametrize(("spin", "set_"), [(False, {"OMP_WAIT_POLICY": "PASSIVE"}),
                                            (True, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(SPIN_COUNT)})])
def test_sets_the_variables_when_the_user_set_neither(spin, set_):
    environ = {"OMP_NUM_THREADS": "2"}
    assert set_wait_policy(spin, environ) is True
    assert environ == {"OMP_NUM_THREADS": "2", **set_}
