"""Where a training step's time goes (issue 14): stage 1's optimizer step under each torch setting, and its operators.

On the H200 of the speed page's GPU rows a stage-1 step (256 cells, the 1,000-gene panel of
PBMC-Zheng4k) took ~20 ms, a sixth of one CPU thread's ~120 ms: slow for its arithmetic. The step timed here is the
pipeline's own (:func:`sccsa_train.fit.pretrain` on the :class:`~sccsa_train.network_input.NetworkInput`
the estimator builds, genes selected as the defaults select them), ``--steps`` steps after a
warm-up, ``--repeats`` times in turns (the median is shown), under each configuration of :data:`CONFIGS`:
the defaults (deterministic algorithms, as ``seed_everything`` asks, without filling new memory;
cuDNN's autotuner off), deterministic mode's fill of new memory (the defaults before), deterministic
algorithms off, the cuDNN autotuner on, bf16-mixed, and the network under ``torch.compile`` (inductor,
issue 14's "torch.compile where it pays"; its one-time compiling shows in the warm-up's seconds, which
the page gives for every configuration). The time to make the batches
dense on the device (``NetworkInput.take``) is timed alone. torch.profiler then lists the
operators of the default step by their own device and CPU time: when the device's busy time is a
small part of the wall time, the step waits on Python and kernel launches, not on arithmetic.
No labels are read.

    python benchmarks/step_profile.py --device cuda
    python benchmarks/step_profile.py --device cpu --steps 20 --out /tmp/step_profile_cpu.json
    python benchmarks/step_profile.py --merge /tmp/step_profile_cpu.json
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from common import finish, load, markdown_table, merge_or_resume, page_parser, training_threads, write_json
from sccsa_train import SCCSA
from sccsa_train import estimator as estimator_module
from sccsa_train import fit as fit_module

# name → (torch.use_deterministic_algorithms, torch.utils.deterministic.fill_uninitialized_memory,
#         torch.backends.cudnn.benchmark, precision, torch.compile); the fill only acts in deterministic mode
CONFIGS: dict[str, tuple[bool, bool, bool, str, bool]] = {
    "defaults": (True, False, False, "32", False),
    "deterministic, new memory filled (the defaults before)": (True, True, False, "32", False),
    "not deterministic": (False, False, False, "32", False),
    "not deterministic, cuDNN autotuner": (False, False, True, "32", False),
    "bf16-mixed": (True, False, False, "bf16-mixed", False),
    "bf16-mixed, not deterministic, cuDNN autotuner": (False, False, True, "bf16-mixed", False),
    "torch.compile": (True, False, False, "32", True),
}
PROFILED_STEPS = 20
TOP_OPERATORS = 15


class _Captured(Exception):
    """Stops the fit once the training inputs are built."""


def network_input(adata, kind: str, k: int, device: str) -> tuple[Any, Any, Any]:
    """The estimator's own network factory, input and schedule for ``adata`` (gene selection as
    the defaults do it), captured where training would start."""
    captured: dict[str, Any] = {}

    def capture(make_net, x, schedule, **_):
        captured.update(make_net=make_net, x=x, schedule=schedule)
        raise _Captured

    original = estimator_module.train
    estimator_module.train = capture
    try:
        SCCSA(k, input_kind=kind, random_state=0, progress=False, device=device).fit(adata)
    except _Captured:
        pass
    finally:
        estimator_module.train = original
    return captured["make_net"], captured["x"], captured["schedule"]


@contextmanager
def torch_settings(name: str) -> Iterator[tuple[str, bool]]:
    """Configuration ``name``'s global torch settings while inside; its precision and whether the
    network is compiled are yielded. The settings before are restored afterwards."""
    deterministic, fill, autotune, precision, compiled = CONFIGS[name]
    before = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory,
              torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.backends.cudnn.benchmark = autotune
    try:
        yield precision, compiled
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = before[1]
        torch.backends.cudnn.benchmark = before[2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_steps(make_net, x, schedule, steps: int, generator: torch.Generator, compiled: bool = False) -> None:
    """``steps`` stage-1 steps of a new network (compiled: inside ``torch.compile``; a new network
    of the same class reuses what the first one compiled)."""
    net = make_net()
    fit_module.pretrain(torch.compile(net) if compiled else net, x,
                        replace(schedule, pretrain_epochs=10**6, pretrain_max_steps=steps),
                        fit_module.History(), generator, progress=False)


def _timed_steps(make_net, x, schedule, name: str, steps: int, generator: torch.Generator) -> float:
    """Milliseconds per step of ``steps`` stage-1 steps of a new network under configuration ``name``."""
    with torch_settings(name) as (precision, compiled):
        schedule = replace(schedule, precision=precision)
        _sync(x.device)
        started = time.perf_counter()
        _run_steps(make_net, x, schedule, steps, generator, compiled)
        _sync(x.device)
    return 1000 * (time.perf_counter() - started) / steps


def time_configs(make_net, x, schedule, steps: int, warmup: int, repeats: int) -> list[dict[str, Any]]:
    """Median milliseconds per stage-1 step under each configuration. The repeats take the
    configurations in turn (all of them once, then again), so that a machine that slows down
    for a while slows every configuration alike rather than the one timed then."""
    generator = torch.Generator().manual_seed(0)
    warm_s = {name: _timed_steps(make_net, x, schedule, name, warmup, generator) * warmup / 1000 for name in CONFIGS}
    runs: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(repeats):
        for name in CONFIGS:
            runs[name].append(_timed_steps(make_net, x, schedule, name, steps, generator))
    return [{"kind": "config", "config": name, "ms_per_step": round(statistics.median(values), 2),
             "runs": [round(value, 2) for value in values], "warmup_s": round(warm_s[name], 4), "warmup_steps": warmup}
            for name, values in runs.items()]


def time_input(x, schedule, steps: int) -> dict[str, Any]:
    """Milliseconds per step spent making a batch dense on the device, alone."""
    generator = torch.Generator().manual_seed(0)
    batches = (fit_module._batches(len(x), schedule.batch_size, generator) * (steps // 10 + 1))[:steps]
    _sync(x.device)
    started = time.perf_counter()
    for index in batches:
        x.take(index)
    _sync(x.device)
    return {"kind": "input", "config": "NetworkInput.take alone",
            "ms_per_step": round(1000 * (time.perf_counter() - started) / steps, 2)}


def operators(make_net, x, schedule) -> list[dict[str, Any]]:
    """The default step's operators by their own device (else CPU) time, per step."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if x.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    generator = torch.Generator().manual_seed(0)
    with torch_settings("defaults"):
        _run_steps(make_net, x, schedule, 5, generator)
        with torch.profiler.profile(activities=activities) as profile:
            _run_steps(make_net, x, schedule, PROFILED_STEPS, generator)
            _sync(x.device)
    rows = []
    for event in profile.key_averages():
        device_us = event.self_device_time_total  # 0 where nothing ran on a device
        rows.append({"kind": "operator", "operator": event.key, "calls_per_step": round(event.count / PROFILED_STEPS, 1),
                     "cpu_ms_per_step": round(event.self_cpu_time_total / 1000 / PROFILED_STEPS, 3),
                     "device_ms_per_step": round(device_us / 1000 / PROFILED_STEPS, 3)})
    total = {"kind": "busy", "config": "defaults",
             "device_ms_per_step": round(sum(r["device_ms_per_step"] for r in rows), 2),
             "cpu_ms_per_step": round(sum(r["cpu_ms_per_step"] for r in rows), 2),
             "launches_per_step": round(sum(r["calls_per_step"] for r in rows if r["device_ms_per_step"] > 0), 1)}
    by = "device_ms_per_step" if x.device.type == "cuda" else "cpu_ms_per_step"
    return [total, *sorted(rows, key=lambda r: -r[by])[:TOP_OPERATORS]]


def run(path: Path, device: str, steps: int, warmup: int, repeats: int) -> list[dict[str, Any]]:
    adata, _, k, kind = load(path)
    make_net, x, schedule = network_input(adata, kind, k, device)
    where = torch.cuda.get_device_name(x.device) if x.device.type == "cuda" else f"CPU, {training_threads()} thread(s)"
    records = [time_input(x, schedule, steps),
               *time_configs(make_net, x, schedule, steps, warmup, repeats),
               *operators(make_net, x, schedule)]
    for record in records:
        record.update(dataset=path.stem, device=where, cells=len(x), genes=x.n_genes, batch_size=schedule.batch_size,
                      steps=steps)
    return records


def _key(record: dict[str, Any]) -> tuple:
    return record["device"], record["kind"], record.get("config") or record.get("operator")


def summarise(records: list[dict[str, Any]]) -> str:
    parts = []
    frame = pd.DataFrame(records)
    for device, group in frame.groupby("device", sort=False):
        first = group.iloc[0]
        timed = group[group["kind"].isin(["config", "input"])].set_index("config")
        defaults = timed.loc["defaults", "ms_per_step"]
        table = pd.DataFrame({"ms per step (median)": timed["ms_per_step"],
                              "vs defaults": (timed["ms_per_step"] / defaults).round(2)})
        if "warmup_s" in timed and timed["warmup_s"].notna().any():  # sections measured before have none
            steps = int(timed["warmup_steps"].dropna().iloc[0])
            table[f"warm-up s ({steps} steps, compiling included)"] = timed["warmup_s"].map(
                lambda s: "–" if pd.isna(s) else f"{s:.3g}")
        table.index.name = "configuration"
        busy = group[group["kind"] == "busy"].iloc[0]
        ops = group[group["kind"] == "operator"].set_index("operator")[
            ["calls_per_step", "device_ms_per_step", "cpu_ms_per_step"]]
        ops.columns = ["calls per step", "own device ms per step", "own CPU ms per step"]
        on_device = busy["device_ms_per_step"] > 0
        profiled = (f"kept the device busy {busy['device_ms_per_step']} ms of its {defaults} ms, in "
                    f"{busy['launches_per_step']:g} operator calls that ran there (the CPU: "
                    f"{busy['cpu_ms_per_step']} ms of operators' own time)" if on_device
                    else f"spent {busy['cpu_ms_per_step']} ms of its {defaults} ms in operators' own CPU time")
        parts.append(
            f"## {device}\n\n{first['dataset']}: {int(first['cells'])} cells, {int(first['genes'])} genes, batch "
            f"{int(first['batch_size'])}; {int(first['steps'])} steps per timing. Under torch.profiler the default "
            f"step {profiled}.\n\n" + markdown_table(table) + "\n\nOperators of the default step (top by own "
            + ("device" if on_device else "CPU") + " time):\n\n" + markdown_table(ops))
    return ("Stage 1's optimizer step as the pipeline runs it (`sccsa_train.fit.pretrain`), timed per "
            "configuration of torch; the profile is of the defaults.\n\n" + "\n\n".join(parts))


def main() -> None:
    parser = page_parser(__doc__, "step_profile", datasets=False, seeds=False)
    parser.add_argument("--dataset", default="pbmc_zheng4k_top2000")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--steps", type=int, default=100, help="steps per timing")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="timings per configuration, taken in turns (median)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    title = "Where a training step's time goes"
    records = merge_or_resume(args, title, summarise, _key)
    if records is None:
        return
    new = run(args.data / f"{args.dataset}.h5ad", args.device, args.steps, args.warmup, args.repeats)
    records = [r for r in records if r["device"] != new[0]["device"]] + new
    write_json(args.out, records)
    finish(args.out, title, summarise(records))


if __name__ == "__main__":
    main()
