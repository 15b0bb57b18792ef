"""Which arithmetic the network's training passes use: ``precision='auto'`` resolved for a device.

bfloat16 autocast pays only where the hardware computes bfloat16 natively. On a 2-core AMD EPYC with
AVX-512-BF16 it cut the fit time to ~0.6× at the same mean ARI (clustering page, variant ``bf16``); on
an AVX2 CPU without those instructions the same passes ran ~17× slower. So ``auto`` asks the device:
a CUDA GPU that supports bfloat16 without emulation, or a CPU whose flags (``/proc/cpuinfo``, Linux)
name AVX-512-BF16 or AMX-BF16. Elsewhere (other systems, where the flags cannot be read) it is float32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path | None = None) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in ``cpuinfo`` (default :data:`CPUINFO`; empty
    where the file cannot be read)."""
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def native_bf16(device: torch.device, cpuinfo: Path | None = None) -> bool:
    """Whether ``device`` computes bfloat16 natively (see the module docstring)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(BF16_CPU_FLAGS & cpu_flags(cpuinfo))
    return False


def resolve_precision(precision: str, device: torch.device, cpuinfo: Path | None = None) -> str:
    """``precision`` itself, or for ``auto`` 'bf16-mixed' where :func:`native_bf16`, else '32'."""
    if precision != "auto":
        return precision
    chosen = "bf16-mixed" if native_bf16(device, cpuinfo) else "32"
    log.info("precision auto: %s on %s (%s)", chosen, device,
             "bfloat16 computed natively" if chosen != "32" else "no native bfloat16")
    return chosen
