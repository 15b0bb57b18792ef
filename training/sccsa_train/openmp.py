"""How torch's idle OpenMP threads wait in the ``sccsa-train`` process (GNU OpenMP, which torch's
Linux wheels bundle).

A training step runs a few dozen short parallel operators. Spinning idle threads (OpenMP's
default) burn the cores a busy shared machine needs for other work (speed page, contention), so
``sccsa-train`` has let them sleep at once (``OMP_WAIT_POLICY=PASSIVE``). But sleeping at once
costs a futex sleep and wake-up per thread and operator: a default fit on PBMC-Zheng4k made
~166,000 voluntary context switches per 300 steps. Spinning for ``GOMP_SPINCOUNT`` = 10,000
iterations first (tens of microseconds, about the gap between two operators) catches the next
operator without a sleep: ~2,400 switches. The speed page measures the whole fit with and without
it. Both variables are read once, when torch loads its OpenMP runtime, so this must run before
``import torch``; a user who set either keeps their choice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

SPIN_COUNT = 10_000
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def spin_briefly_then_sleep(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Make idle OpenMP threads spin :data:`SPIN_COUNT` iterations, then sleep, unless the user set
    how they wait (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``). Returns whether it set them."""
    if any(name in environ for name in USER_SETTINGS):
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    log.debug("idle OpenMP threads spin %d iterations, then sleep", SPIN_COUNT)
    return True
