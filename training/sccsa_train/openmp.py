"""How torch's idle OpenMP threads wait in the ``sccsa-train`` process (GNU OpenMP, which torch's
Linux wheels bundle). Both variables are read once, when torch loads its OpenMP runtime, so this
must run before ``import torch``; a user who set either keeps their choice.

By default idle threads sleep at once (``OMP_WAIT_POLICY=PASSIVE``): beside busy processes,
spinning threads take the cores the working thread needs (speed page, contention). Alone on a
machine, sleeping at once costs a futex sleep and wake-up per thread and operator (a training step
runs a few dozen short ones). ``--spin-wait`` lets them spin ``GOMP_SPINCOUNT`` = 10,000
iterations first (about the gap between two operators), which catches the next operator without a
sleep. The speed page's contention rows measure the three ways to wait, alone and beside a busy
process: alone the brief spin is faster than sleeping at once (about as fast as spinning
throughout), beside a busy process nearly as slow as spinning throughout, so it is not the default.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

SPIN_COUNT = 10_000
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def set_wait_policy(spin: bool = False, environ: MutableMapping[str, str] = os.environ) -> bool:
    """Idle OpenMP threads sleep at once, or with ``spin`` spin :data:`SPIN_COUNT` iterations first,
    unless the user set how they wait (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``). Returns whether
    it set the variables."""
    chosen = [name for name in USER_SETTINGS if name in environ]
    if chosen:
        (log.warning if spin else log.debug)("idle OpenMP threads wait as %s in the environment says%s",
                                             " and ".join(chosen), " (--spin-wait ignored)" if spin else "")
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if spin:
        environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    log.debug("idle OpenMP threads %s", f"spin {SPIN_COUNT} iterations, then sleep" if spin else "sleep at once")
    return True
