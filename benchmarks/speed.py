"""Speed and memory: training time and scale, ONNX Runtime vs torch eager, 1M-cell streaming, cold start.

1. Training wall time per dataset: ``SCCSA.fit`` with the default settings (protocol U, K = the
   number of true labels, seed 0) on every dataset, one after another in this process, with the
   stage times and the number of stage-2 epochs from the fitted model's history.
   ``training_vs_scanpy``: CPU seconds of ``sccsa-train`` (defaults) and of Scanpy's standard
   pipeline on ``--scanpy-dataset``, each in fresh processes, alternating, median of 3; one more
   ``sccsa-train`` row per ``--precisions`` value other than the default and per ``--train-options``
   string (e.g. ``'--cc off'``: what the SA-CC block costs in the whole command).
   ``training_scale``: ``sccsa-train`` with 1000-step budgets per stage on files of
   ``--train-cells`` cells (default 100,000, 300,000 and 1,000,000) resampled from PBMC-Zheng4k
   with Poisson counts: wall/CPU seconds, peak memory, stage times, ARI after the fit.
2. Inference throughput of the same PBMC-Zheng4k model in ONNX Runtime (the exported graph,
   through ``Predictor.run``) and in torch eager (``ServingGraph``), at batch sizes 1, 64 and 1024,
   in one run with the same number of threads; cells/s from the median of ``--repeats`` timed
   passes, the two runtimes' passes interleaved; the ratio is ORT / torch.
3. ``sccsa-infer predict --threads 1`` end to end on ``.h5ad`` files of ``--cells`` (default 1,000,000
   and 5,000,000) cells made by replicating the real PBMC-Zheng4k cells (CSR, written in chunks),
   to ``.parquet`` and to ``.h5ad``: wall and CPU seconds, cells per CPU-second and the peak
   resident memory of the process (results are written block by block, so it should not grow
   with the number of cells).
4. Contention: ``sccsa-infer predict`` (all cores) on a replicated file and ``sccsa-train`` (all
   cores) on ``--contention-dataset``, each alone and beside one busy process per half of the
   cores, with idle threads spinning or sleeping (ONNX Runtime ``--spin-wait``; OpenMP
   ``OMP_WAIT_POLICY=ACTIVE``/``PASSIVE`` for torch, and ``sccsa-train --spin-wait``'s brief spin
   before sleeping): median wall and CPU seconds of 3 runs.
5. Data-parallel training: ``sccsa-train`` on ``--processes-dataset`` (default settings, seed 0) as
   one process with all cores and under ``torchrun`` as one process per core (one thread each,
   gloo): wall and CPU seconds, peak memory of the largest process, stage times and ARI.
6. Graph forms: the served model and a 500-gene fit of the same data, each exported with the
   autocorrelation as three dense d × d DFT MatMuls (the graph before) and as the four-step
   factorisation (today's export): multiply-adds
   per cell counted from each graph (MatMul, Gemm, Conv, ConvTranspose), and ``sccsa-infer
   predict --threads 1`` end to end on the same ``--forms-cells`` replicated cells, median CPU
   seconds of 3 runs per form, the forms alternating. With ``--baseline-bin`` (the ``sccsa-infer``
   of an install of commit 4c23f25, the serving code before issue 15) that install also labels
   the same cells with the served model's dense graph: issue 15's "today's" pipeline and graph.
7. Cold start: ``sccsa-infer --help``, a wrong input path, a fresh ``python -c "Predictor(bundle)"``
   (import + session creation) and a fresh ``sccsa-infer verify`` (import, hashes, session,
   self-test), median of 5.

``--sections`` runs only some of these; the others are kept from the existing ``--out`` with the
commit and date they were measured at (each section records its own).

Results: ``results/speed.json`` and ``results/speed.md``.

    python benchmarks/speed.py
    python benchmarks/speed.py --sections streaming cold_start --work /tmp/sccsa-speed
    python benchmarks/speed.py --sections training_vs_scanpy training_scale --work /tmp/sccsa-speed
    python benchmarks/speed.py --cells 200000 --work /tmp/sccsa-speed --datasets goolam pollen_simlr_log
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from common import (
    DEFAULT_DATA,
    LABEL_KEY,
    RESULTS,
    Timer,
    datasets,
    finish,
    load,
    machine,
    markdown_table,
    score,
    write_json,
)
from sccsa_infer import Predictor
from sccsa_train import SCCSA
from sccsa_train.openmp import USER_SETTINGS as WAIT_SETTINGS

BATCHES = (1, 64, 1024)
SERVED = "pbmc_zheng4k_top2000"  # the dataset whose model inference is measured on
FORMS_SMALL_PANEL = 500  # graph_forms times this panel size beside the default model's 1000 genes


def train_timed(path: Path, device: str = "cpu", precision: str = "32") -> tuple[dict, SCCSA]:
    """Fit the default model (seed 0) on one dataset: the wall time of ``fit`` and of its stages,
    ARI/NMI against the true labels (read after the fit), and the model. On a GPU each row names
    its ``precision``, so that bfloat16's speed is read beside what it does to the clusters."""
    adata, truth, k, kind = load(path)
    with Timer() as timer:
        model = SCCSA(k, input_kind=kind, random_state=0, progress=False, device=device, precision=precision).fit(adata)
    history = model.history_
    stages = {f"{name}_s": round(seconds, 1) for name, seconds in history.seconds.items()}
    row = {"dataset": path.stem, **({"precision": precision} if device != "cpu" else {}), "cells": adata.n_obs,
           "genes_in": adata.n_vars, "seconds": round(timer.seconds, 1),
           "preprocess_and_genes_s": round(timer.seconds - sum(history.seconds.values()), 1), **stages,
           "cluster_epochs": len(history.cluster), "converged": history.converged, "stage2_stop": history.stop,
           **{key: value for key, value in score(truth, model.labels_).items() if key != "acc"}}
    print(f"trained {path.stem} ({device}, {precision}) in {timer.seconds:.0f} s", flush=True)
    return row, model


def throughput(model: SCCSA, predictor: Predictor, counts: np.ndarray, totals: np.ndarray, repeats: int) -> list[dict]:
    graph = model.serving_graph()
    rows = []
    for batch in BATCHES:
        n = 256 if batch == 1 else max(4096, batch * 4)
        x, t = counts[:n], totals[:n].reshape(-1, 1)
        xt, tt = torch.from_numpy(x), torch.from_numpy(t)

        def run_ort() -> None:
            for s in range(0, n, batch):
                predictor.run(x[s : s + batch], t[s : s + batch])

        def run_torch() -> None:
            with torch.inference_mode():
                for s in range(0, n, batch):
                    graph(xt[s : s + batch], tt[s : s + batch])

        runners = {"onnxruntime": run_ort, "torch_eager": run_torch}
        samples: dict[str, list[float]] = {name: [] for name in runners}
        for fn in runners.values():
            fn()  # warm-up
        for repeat in range(repeats):  # interleaved, alternating which goes first: drift hits both alike
            for name in (list(runners) if repeat % 2 == 0 else list(runners)[::-1]):
                with Timer() as timer:
                    runners[name]()
                samples[name].append(timer.seconds)
        timings = {name: n / statistics.median(seconds) for name, seconds in samples.items()}
        rows.append({"batch": batch, "onnxruntime_cells_per_s": round(timings["onnxruntime"]),
                     "torch_eager_cells_per_s": round(timings["torch_eager"]),
                     "ratio_ort_over_torch": round(timings["onnxruntime"] / timings["torch_eager"], 2)})
        print(rows[-1], flush=True)
    return rows


def write_csr_h5ad(path: Path, blocks: Iterable[sp.csr_matrix], genes: list[str], obs: pd.DataFrame) -> None:
    """An AnnData .h5ad whose X (CSR, float32) is written block by block, so that no copy of all
    cells is held; ``obs`` has one row per cell of all blocks together."""
    from anndata.io import write_elem

    with h5py.File(path, "w") as f:
        group = f.create_group("X")
        group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (len(obs), len(genes))})
        data = group.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 20,))
        indices = group.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 20,))
        indptr = [np.zeros(1, dtype=np.int64)]
        written = 0
        for part in blocks:
            size = data.shape[0]
            data.resize((size + part.nnz,))
            indices.resize((size + part.nnz,))
            data[size:] = part.data
            indices[size:] = part.indices
            indptr.append(part.indptr[1:].astype(np.int64) + written)
            written += part.nnz
        n_cells = sum(len(part) for part in indptr[1:])
        if n_cells != len(obs):
            raise ValueError(f"the blocks hold {n_cells} cells but obs has {len(obs)} rows")
        group.create_dataset("indptr", data=np.concatenate(indptr))
        # object dtype: pandas ≥ 3 makes strings StringDtype, which anndata writes only when opted in
        write_elem(f, "obs", obs.set_axis(obs.index.astype(object)))
        write_elem(f, "var", pd.DataFrame(index=pd.Index(genes, dtype=object)))
        for key in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
            write_elem(f, key, {})


def write_replicated_h5ad(path: Path, matrix: sp.csr_matrix, genes: list[str], n_cells: int, chunk: int = 100_000) -> None:
    """An AnnData .h5ad of ``n_cells`` cells cycling through the rows of ``matrix`` (CSR, chunked)."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    reps = max(1, chunk // matrix.shape[0])
    chunk = reps * matrix.shape[0]  # whole copies per chunk, so the cycle continues across chunks
    block = sp.vstack([matrix] * reps).tocsr()
    blocks = (block[: min(chunk, n_cells - start)] for start in range(0, n_cells, chunk))
    write_csr_h5ad(path, blocks, genes, pd.DataFrame(index=pd.Index([f"cell{i}" for i in range(n_cells)], name="cell")))


def write_resampled_h5ad(path: Path, matrix: sp.csr_matrix, genes: list[str], labels: np.ndarray, n_cells: int,
                         seed: int = 0, chunk: int = 100_000) -> None:
    """An AnnData .h5ad of ``n_cells`` cells drawn at random (with replacement) from the rows of
    ``matrix`` (counts), each count redrawn from a Poisson distribution with that mean, so that no
    two cells are exact copies; ``obs['cell_type']`` carries the source cell's label."""
    rng = np.random.default_rng(seed)
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    rows = rng.integers(0, matrix.shape[0], size=n_cells)

    def blocks() -> Iterator[sp.csr_matrix]:
        for start in range(0, n_cells, chunk):
            block = matrix[rows[start : start + chunk]]
            block.data = rng.poisson(block.data).astype(np.float32)
            block.eliminate_zeros()
            yield block

    drawn = np.asarray(labels, dtype=object)[rows]
    obs = pd.DataFrame({LABEL_KEY: pd.Categorical(drawn, categories=pd.Index(np.unique(drawn), dtype=object))},
                       index=pd.Index([f"cell{i}" for i in range(n_cells)], name="cell"))
    write_csr_h5ad(path, blocks(), genes, obs)


# Run argv[1:] from this small interpreter and print the child's peak RSS (KiB) and CPU seconds. A
# child's ru_maxrss also counts the memory of the process that forked it, so the benchmark process
# (which holds the data and a trained model) must not be the one that starts sccsa-infer.
RUSAGE_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
print(usage.ru_maxrss, usage.ru_utime + usage.ru_stime, usage.ru_stime, usage.ru_minflt)
sys.exit(child.returncode)
"""


class Usage(NamedTuple):
    """What a finished process used: peak resident memory (KiB), CPU seconds (user + system), the
    system seconds among them, and its minor page faults (memory faulted in without disk reads)."""

    peak_kib: int
    cpu_s: float
    system_s: float
    page_faults: int


def run_with_rusage(command: list[str], env: dict[str, str] | None = None) -> Usage:
    """Run ``command`` to completion; what it used."""
    done = subprocess.run([sys.executable, "-c", RUSAGE_LAUNCHER, *command], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    peak, cpu, system, faults = done.stdout.split()[-4:]
    return Usage(int(peak), float(cpu), float(system), int(faults))


INFER_BIN = Path(sys.executable).with_name("sccsa-infer")  # the default of --infer-bin


def install_env() -> dict[str, str]:
    """The environment an installed ``sccsa-infer`` (``--infer-bin``, ``--baseline-bin``) is timed in:
    this one without ``PYTHONPATH``, which would make it import another source tree (e.g. the
    checkout running this script) instead of the code of its own install."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def streaming(infer_bin: Path, bundle: Path, source: sp.csr_matrix, genes: list[str], cell_counts: list[int],
              work: Path) -> list[dict]:
    """``sccsa-infer predict --threads 1`` on each file size, to .parquet and to .h5ad."""
    rows = []
    for n_cells in cell_counts:
        big = work / f"replicated_{n_cells}.h5ad"
        with Timer() as timer:
            write_replicated_h5ad(big, source, genes, n_cells)
        size = big.stat().st_size / 2**30
        print(f"wrote {n_cells} cells to {big} ({size:.2f} GiB) in {timer.seconds:.0f} s", flush=True)
        for suffix in (".parquet", ".h5ad"):
            out = work / f"labels_{n_cells}{suffix}"
            command = [str(infer_bin), "predict", str(big), "--model", str(bundle), "--out", str(out), "--threads", "1",
                       "--no-progress"]
            with Timer() as timer:
                usage = run_with_rusage(command, install_env())
            peak_kib, cpu = usage.peak_kib, usage.cpu_s
            if suffix == ".parquet":
                labelled = len(pd.read_parquet(out, columns=["sccsa_cluster"]))
            else:
                with h5py.File(out, "r") as f:
                    labelled = int(f["obs/sccsa_cluster/codes"].shape[0])
            rows.append({"cells": n_cells, "output": suffix, "labelled": labelled,
                         "input_gib": round(big.stat().st_size / 2**30, 2), "seconds": round(timer.seconds, 1),
                         "cpu_seconds": round(cpu, 1), "cells_per_cpu_s": round(n_cells / cpu),
                         "peak_rss_mib": round(peak_kib / 1024), "command": " ".join(["sccsa-infer", *command[1:]])})
            print(rows[-1], flush=True)
            out.unlink()
        big.unlink()
    return rows


def contention(infer_bin: Path, bundle: Path, source: sp.csr_matrix, genes: list[str], dataset: Path, work: Path,
               repeats: int = 3) -> list[dict]:
    """Wall and CPU seconds of serving and training, alone and beside busy neighbours, with idle
    threads spinning or sleeping (the neighbours take half of the cores)."""
    cells = work / "contention.h5ad"
    write_replicated_h5ad(cells, source, genes, 200_000)
    adata, _, k, kind = load(dataset)
    del adata
    runs = {
        ("sccsa-infer predict", "spinning"): ([str(infer_bin), "predict", str(cells), "-m", str(bundle), "-o",
                                               str(work / "c.parquet"), "--no-progress", "--spin-wait"], {}),
        ("sccsa-infer predict", "sleeping"): ([str(infer_bin), "predict", str(cells), "-m", str(bundle), "-o",
                                               str(work / "c.parquet"), "--no-progress"], {}),
        ("sccsa-train", "spinning"): (train_command(dataset, k, kind, work / "contention_model"),
                                       {"OMP_WAIT_POLICY": "ACTIVE"}),
        ("sccsa-train", "sleeping"): (train_command(dataset, k, kind, work / "contention_model"), {}),
        ("sccsa-train", "spinning briefly, then sleeping"): (
            [*train_command(dataset, k, kind, work / "contention_model"), "--spin-wait"], {}),
    }
    # sccsa-train's own choice (sccsa_train.openmp) applies only where the user set neither variable
    own = {key: value for key, value in os.environ.items() if key not in WAIT_SETTINGS}
    n_busy = max(1, (os.cpu_count() or 2) // 2)
    rows = []
    for (what, waiting), (command, env) in runs.items():
        for neighbours in (0, n_busy):
            busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(neighbours)]
            try:
                samples = []
                for _ in range(repeats):
                    with Timer() as timer:
                        base = install_env() if what.startswith("sccsa-infer") else own  # train: this checkout
                        cpu = run_with_rusage(command, env={**base, **env}).cpu_s
                    samples.append((timer.seconds, cpu))
            finally:
                for process in busy:
                    process.kill()
                    process.wait()
            rows.append({"command": what, "idle_threads": waiting, "busy_neighbours": neighbours,
                         "wall_s": round(statistics.median(s[0] for s in samples), 1),
                         "cpu_s": round(statistics.median(s[1] for s in samples), 1)})
            print(rows[-1], flush=True)
    cells.unlink()
    return rows


def train_launcher(processes: int = 1) -> list[str]:
    """What starts ``sccsa-train``: its script, or under ``torchrun`` with ``processes`` processes.
    Where this environment has no script (a source tree on ``PYTHONPATH``, as on a lent GPU
    machine) it runs as a module."""
    script = Path(sys.executable).with_name("sccsa-train")
    if processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m",
                "sccsa_train.cli"]
    return [str(script)] if script.exists() else [sys.executable, "-m", "sccsa_train.cli"]


def shown(command: list[str]) -> str:
    """A ``sccsa-train`` command as the page prints it: its arguments after the program's name."""
    return " ".join(["sccsa-train", *command[len(train_launcher()):]])


def train_command(dataset: Path, k: int, kind: str, out: Path, processes: int = 1) -> list[str]:
    """``sccsa-train`` with the default settings on ``dataset`` (all cores, torch's default), or
    under ``torchrun`` with ``processes`` processes."""
    return [*train_launcher(processes), str(dataset), "-k", str(k), "--input-kind", kind, "--out", str(out), "--overwrite",
            "--no-progress", "-q"]


def graph_macs(path: Path) -> int:
    """Multiply-adds per cell of an ONNX graph: its inputs' batch axis fixed to 1, shapes inferred,
    then MatMul/Gemm (output size × inner size), Conv (output size × inputs per output) and
    ConvTranspose (input size × outputs per input) summed; element-wise work is not counted."""
    import onnx

    model = onnx.load(str(path))
    for value in model.graph.input:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    total = 0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            transposed = node.op_type == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)
            total += int(np.prod(out)) * (a[-2] if transposed else a[-1])
        elif node.op_type == "Conv":
            weight = shapes[node.input[1]]
            total += int(np.prod(shapes[node.output[0]])) * int(np.prod(weight[1:]))
        elif node.op_type == "ConvTranspose":
            weight = shapes[node.input[1]]
            total += int(np.prod(shapes[node.input[0]])) * int(np.prod(weight[1:]))
    return total


BASELINE_COMMIT = "4c23f25"  # the last commit before issue 15's work on the serving half
BASELINE_FORM = f"dense, serving code of {BASELINE_COMMIT}"


def graph_forms(models: list[SCCSA], infer_bin: Path, source: sp.csr_matrix, genes: list[str], n_cells: int,
                work: Path, repeats: int = 3, baseline_bin: Path | None = None) -> list[dict]:
    """Each fitted model exported with each autocorrelation form, counted and timed end to end.
    ``baseline_bin``: the ``sccsa-infer`` of an install of the serving code before issue 15
    (:data:`BASELINE_COMMIT`), timed on the dense export of the largest model beside the others:
    issue 15's "today's" pipeline and graph, on the same cells in the same run."""
    from sccsa_train.export import export_bundle
    from sccsa_train.sacc import EXPORT_FORMS

    cells = work / "forms.h5ad"
    write_replicated_h5ad(cells, source, genes, n_cells)
    rows = []
    for model in models:
        d = len(model.genes_)
        bundles = {form: export_bundle(model.fitted(), work / f"bundle_{d}_{form}", metrics={}, overwrite=True,
                                       form=form) for form in EXPORT_FORMS}
        runs = {form: (infer_bin, form) for form in EXPORT_FORMS}  # row → (sccsa-infer, graph form it labels with)
        if baseline_bin is not None and model is models[-1]:
            runs[BASELINE_FORM] = (baseline_bin, "dense")
        outputs = {row: work / f"forms_{i}.parquet" for i, row in enumerate(runs)}
        commands = {row: [str(binary), "predict", str(cells), "--model", str(bundles[graph]), "--out",
                          str(outputs[row]), "--threads", "1", "--no-progress", "--overwrite"]
                    for row, (binary, graph) in runs.items()}
        cpu: dict[str, list[float]] = {row: [] for row in commands}
        for repeat in range(repeats):
            for row in (list(commands) if repeat % 2 == 0 else list(commands)[::-1]):
                cpu[row].append(run_with_rusage(commands[row], install_env()).cpu_s)
        for form, (_, graph) in runs.items():
            seconds = statistics.median(cpu[form])
            rows.append({"form": form, "genes": d,
                         "macs_per_cell": graph_macs(bundles[graph] / "model.onnx"),
                         "cells": n_cells, "cpu_seconds": round(seconds, 1), "cells_per_cpu_s": round(n_cells / seconds)})
            print(rows[-1], flush=True)
        for path in outputs.values():  # only what this section wrote (--work may be the user's folder)
            path.unlink()
    cells.unlink()
    return rows


def data_parallel(dataset: Path, work: Path) -> list[dict]:
    """The same fit as one process (all cores) and as one torchrun process per core (one thread each)."""
    _, _, k, kind = load(dataset)
    cores = os.cpu_count() or 2
    rows = []
    for processes in (1, cores):
        out = work / f"processes{processes}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"} if processes > 1 else None
        with Timer() as timer:
            usage = run_with_rusage([*train_command(dataset, k, kind, out, processes), "--eval-key", LABEL_KEY], env=env)
        peak, cpu = usage.peak_kib, usage.cpu_s
        report = json.loads((out / "report.json").read_text())
        metrics = json.loads((out / "bundle.json").read_text())["metrics"]
        rows.append({"processes": processes, "threads_each": 1 if processes > 1 else cores,
                     "wall_s": round(timer.seconds, 1), "cpu_s": round(cpu, 1), "peak_rss_mib": round(peak / 1024),
                     "pretrain_s": round(report["history"]["seconds"]["pretrain"], 1),
                     "cluster_s": round(report["history"]["seconds"]["cluster"], 1),
                     "stage2_epochs": len(report["history"]["cluster"]),
                     **{key: round(metrics[key], 4) for key in ("ari", "nmi", "acc")}})
        print(rows[-1], flush=True)
    return rows


SCALE_BUDGET = ("--pretrain-max-steps", "1000", "--cluster-max-steps", "1000")  # training steps, whatever the cells


def device_flags(device: str, precision: str) -> list[str]:
    """``sccsa-train``'s options for a run on ``device`` at ``precision`` (on the CPU only a precision
    other than the default's, so that the defaults run as a user runs them)."""
    if device == "cpu":
        return [] if precision == "32" else ["--precision", precision]
    return ["--device", device, "--precision", precision]


def training_scale(source: ad.AnnData, truth: np.ndarray, k: int, cell_counts: list[int], work: Path,
                   flags: list[str] | None = None) -> list[dict]:
    """``sccsa-train`` (all cores, seed 0, step budgets :data:`SCALE_BUDGET`) on files of each
    size resampled from ``source`` (Poisson counts): wall and CPU seconds, peak memory, the
    stages' seconds (``other``: reading, storing the fit and the export), the clusters the
    consensus's Leiden members ended with (from the fit's report) and ARI after the fit."""
    rows = []
    for n_cells in cell_counts:
        path = work / f"resampled_{n_cells}.h5ad"
        write_resampled_h5ad(path, source.X, list(source.var_names), truth, n_cells)
        out = work / f"scale_{n_cells}"
        command = [*train_command(path, k, "counts", out), *(flags or []), *SCALE_BUDGET, "--eval-key", LABEL_KEY]
        with Timer() as timer:
            usage = run_with_rusage(command)
        peak, cpu = usage.peak_kib, usage.cpu_s
        report = json.loads((out / "report.json").read_text())
        seconds, timings = report["history"]["seconds"], report["timings_seconds"]
        stages = {"preprocess_s": timings["preprocess"], "gene_selection_s": timings["gene_selection"],
                  "pretrain_s": seconds["pretrain"], "kmeans_init_s": seconds["kmeans_init"],
                  "cluster_s": seconds["cluster"]}
        rows.append({"cells": n_cells, "input_gib": round(path.stat().st_size / 2**30, 2),
                     "wall_s": round(timer.seconds, 1), "cpu_s": round(cpu, 1),
                     "us_per_cell": round(1e6 * timer.seconds / n_cells, 1), "peak_rss_mib": round(peak / 1024),
                     **{key: round(value, 1) for key, value in stages.items()},
                     "other_s": round(timer.seconds - sum(stages.values()), 1),
                     "stage2_epochs": len(report["history"]["cluster"]),
                     "leiden_clusters": report["genes"]["pseudo_label_ensemble"]["leiden_clusters"],
                     **{key: round(report["metrics"][key], 4) for key in ("ari", "nmi")},
                     "command": shown(command)})
        print(rows[-1], flush=True)
        path.unlink()
    return rows


def _other_settings(rows: pd.DataFrame) -> str:
    """The page's sentence on CPU rows with other options than the defaults (``--precisions``,
    ``--train-options``), if run."""
    others = [name for name in rows.index if name.startswith("sccsa-train --")]
    return "".join(f" `{name}`: {rows.loc[name, 'cpu_s']:.1f} CPU-s, {rows.loc[name, 'cpu_vs_scanpy']:.1f}× Scanpy's."
                   for name in others)


def _earlier_training(rows: pd.DataFrame) -> str:
    """The page's sentence on the row of an earlier commit's ``sccsa-train`` (``--train-baseline-src``), if run."""
    earlier = [name for name in rows.index if name.startswith("sccsa-train at ")]
    if not earlier:
        return ""
    today, before = rows["cpu_s"].iloc[0], rows.loc[earlier[0], "cpu_s"]
    return (f" The same command from the source of commit {earlier[0].removeprefix('sccsa-train at ')}, with the same "
            f"packages, in the same run: {before:.1f} CPU-s ({rows.loc[earlier[0], 'cpu_vs_scanpy']:.1f}× Scanpy's), "
            f"today's {today:.1f} ({abs(100 * (before - today) / before):.0f} % {'less' if today <= before else 'more'}).")


def _leiden_reach(rows: pd.DataFrame, k: int) -> str:
    """The page's sentence on the consensus's Leiden members at each size (``leiden_clusters``)."""
    missed = rows.loc[rows["leiden_clusters"] != k, "cells"]
    where = ("at none of these sizes" if len(missed) == len(rows) else "at every size" if missed.empty else
             "at all sizes but " + ", ".join(f"{n:,}" for n in missed))
    return (f"The Leiden members of the consensus pseudo-labels came down to K = {k} clusters {where} "
            "(`leiden_clusters`: their clusters where the resolution search ended, from each fit's report.json)"
            + ("" if missed.empty else "; where they did not, the pseudo-labels rest on the K-means members "
               "(presumably the resampled cells, noisy copies of 4,271 cells, make the sketch's kNN graph fall apart "
               "into groups of copies)") + ".")


SCANPY_PIPELINE = """
import sys, warnings
warnings.filterwarnings("ignore")
import scanpy as sc
adata = sc.read_h5ad(sys.argv[1])
sc.pp.normalize_total(adata, target_sum=1e4)
sc.pp.log1p(adata)
sc.pp.highly_variable_genes(adata, n_top_genes=min(2000, adata.n_vars - 1))
adata = adata[:, adata.var["highly_variable"]].copy()
sc.pp.scale(adata, max_value=10)
sc.pp.pca(adata, n_comps=50, random_state=0)
sc.pp.neighbors(adata, random_state=0)
sc.tl.leiden(adata, resolution=1.0, random_state=0, flavor="igraph", n_iterations=2, directed=False)
"""


def source_commit(source: Path) -> str:
    """The short commit a source tree (a git worktree) is checked out at."""
    return subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def training_vs_scanpy(dataset: Path, work: Path, repeats: int = 3, baseline_src: Path | None = None,
                       configurations: dict[str, list[str]] | None = None) -> list[dict]:
    """CPU and wall seconds of ``sccsa-train`` (default settings, seed 0, all cores) and of Scanpy's
    standard pipeline (normalise, log1p, 2000 HVGs, scale, PCA, kNN graph, Leiden) on the same
    file, each in its own process, the runs alternating; medians of ``repeats``.
    ``configurations``: a row name → ``sccsa-train`` options for each run of it (default: one row,
    the defaults; on a GPU, one row per precision). ``baseline_src``: the source tree of an earlier
    commit (a git worktree), whose ``sccsa-train`` runs with this environment's packages as one
    more row, so that a change is measured side by side rather than across sessions."""
    _, _, k, kind = load(dataset)
    scanpy = "Scanpy: normalise, HVG, PCA, kNN, Leiden"
    configurations = configurations or {"sccsa-train (default settings)": []}
    runs: dict[str, tuple[list[str], dict[str, str] | None]] = {
        name: ([*train_command(dataset, k, kind, work / "vs_scanpy"), *flags], None)
        for name, flags in configurations.items()}
    runs[scanpy] = ([sys.executable, "-c", SCANPY_PIPELINE, str(dataset)], None)
    if baseline_src is not None:
        command = train_command(dataset, k, kind, work / "vs_scanpy_baseline")
        source = baseline_src.absolute()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(source / part) for part in ("training", "inference")))
        runs[f"sccsa-train at {source_commit(source)}"] = ([sys.executable, "-m", "sccsa_train.cli", *command[len(train_launcher()):]], env)
    samples: dict[str, list[tuple[float, Usage]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (command, env) in runs.items():
            with Timer() as timer:
                usage = run_with_rusage(command, env)
            samples[name].append((timer.seconds, usage))
    scanpy_wall = statistics.median(wall for wall, _ in samples[scanpy])
    scanpy_cpu = statistics.median(usage.cpu_s for _, usage in samples[scanpy])
    rows = []
    for name, values in samples.items():
        wall, cpu = statistics.median(w for w, _ in values), statistics.median(u.cpu_s for _, u in values)
        rows.append({"pipeline": name, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                     "cpu_vs_scanpy": round(cpu / scanpy_cpu, 2), "wall_vs_scanpy": round(wall / scanpy_wall, 2),
                     "system_s": round(statistics.median(u.system_s for _, u in values), 1),
                     "page_faults": int(statistics.median(u.page_faults for _, u in values))})
        print(rows[-1], flush=True)
    return rows


def installed_packages(infer_bin: Path) -> str:
    """What the timed ``sccsa-infer``'s environment holds, beyond the serving dependencies."""
    probe = ("import importlib.util as u; print(' '.join(m for m in ('torch', 'dask', 'scanpy', 'pyarrow') "
             "if u.find_spec(m)))")
    done = subprocess.run([str(infer_bin.with_name("python")), "-c", probe], capture_output=True, text=True, check=True,
                          env=install_env())
    extras = done.stdout.split()
    return f"{infer_bin} (an environment with {', '.join(extras) if extras else 'no optional packages'})"


def cold_start(infer_bin: Path, bundle: Path, work: Path, repeats: int = 5) -> dict:
    """Median wall seconds of fresh processes: help, a wrong path, import + session, verify."""
    commands = {
        "sccsa_infer_help_s": ([str(infer_bin), "--help"], 0),
        "wrong_path_error_s": ([str(infer_bin), "predict", str(work / "missing.h5ad"), "-o", str(work / "x.csv")], 1),
        "import_and_session_s": ([str(infer_bin.with_name("python")), "-c",
                                  f"from sccsa_infer import Predictor; Predictor({str(bundle)!r})"], 0),
        "sccsa_infer_verify_s": ([str(infer_bin), "verify", str(bundle)], 0),
    }
    result = {}
    for name, (command, expected) in commands.items():
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, env=install_env())
            samples.append(time.perf_counter() - started)
            if done.returncode != expected:
                raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr.decode()[-2000:]}")
        result[name] = round(statistics.median(samples), 2)
    return result


GPU_SECTIONS = ("training", "training_vs_scanpy", "training_scale")  # what --device cuda measures
SECTIONS = ("training", "training_vs_scanpy", "training_scale", "throughput", "streaming", "contention", "processes",
            "graph_forms", "cold_start")
BUSY = "while True: pass"  # one CPU-bound neighbour process


def _measured(payload: dict, section: str) -> str:
    when = payload.get("measured", {}).get(section)
    if not when:
        return ""
    # sections kept from earlier sessions may have run on another host behind the same CPU name
    cpu = when.get("cpu", "a CPU whose model was not recorded (compare with other sessions' rows with care)")
    cores = f" ({when['cores']} cores)" if when.get("cores") else ""
    gpu = f" with an {when['gpu']} GPU" if when.get("gpu") else ""
    threads = f", {when['torch_threads']} torch thread(s) in the measuring process" if when.get("torch_threads") else ""
    return f" Measured at commit {when['commit']}, {when['date']}, on {cpu}{cores}{gpu}{threads}."


GPU_NOTE = ("On a lent GPU machine (the source tree on `PYTHONPATH`, that machine's own torch and packages); "
            "`--device cuda` at the `--precision` each row or command names (`bf16-mixed`: bfloat16 autocast of the "
            "network's forward pass). The CPU work of training (preprocessing, pseudo-labels, F-test, K-means) "
            "runs on that machine's cores. ")


def _training_rows(payload: dict, key: str) -> str:
    """The per-dataset training table: on the CPU (``training``) or a GPU (``training_cuda``)."""
    on_gpu = key.endswith("_cuda")
    return ((f"## Training wall time (protocol U, default settings, seed 0, {'GPU' if on_gpu else 'CPU'})\n\n"
             + (GPU_NOTE if on_gpu else "")
             + "`SCCSA.fit` on each dataset in turn, alone on the machine with the threads the footer states. "
             "`seconds` is the whole fit; the stages are preprocessing + consensus pseudo-labels + F-test, "
             "pretraining, the K-means initialisation of μ, and stage 2 (`cluster_epochs` of at most 100; "
             "`converged`: it stopped on its own rule rather than at the cap; `stage2_stop`, where given, names the "
             "rule: `tol`, fewer than 0.1 % of the labels changed in the last epoch, or `patience`, no new low of that "
             "fraction in 10 epochs). ARI/NMI (where given) against "
             "the true labels, read after the fit." + _measured(payload, key) + "\n\n")
            + markdown_table(pd.DataFrame(payload[key]).set_index(["dataset", "precision"] if on_gpu else "dataset")))


def _vs_scanpy(payload: dict, key: str) -> str:
    """The table of ``sccsa-train`` beside Scanpy's pipeline, on the CPU or a GPU."""
    rows = pd.DataFrame(payload[key]).set_index("pipeline")
    if key.endswith("_cuda"):
        ratios = "; ".join(f"`{name}` {row['wall_s']:.1f} s, {row['wall_vs_scanpy']:.1f}× Scanpy's wall time"
                           for name, row in rows.iterrows() if name.startswith("sccsa-train"))
        return ("## Training beside Scanpy's standard pipeline, on a GPU\n\n" + GPU_NOTE
                + f"Scanpy's pipeline (as below) runs on the same machine's CPU cores. On {payload.get('scanpy_dataset')}, "
                f"fresh processes, the runs alternating, medians of {payload.get('train_repeats', 3)}: {ratios}." + _measured(payload, key) + "\n\n"
                + markdown_table(rows))
    return ("## Training cost beside Scanpy's standard pipeline\n\n"
            "`sccsa-train` with the default settings (seed 0, all cores) and Scanpy's standard pipeline "
            "(normalise, log1p, 2000 HVGs, scale, 50 PCs, kNN graph, Leiden) on "
            f"{payload.get('scanpy_dataset')}, each in a fresh process (reading the file included), the runs "
            f"alternating; medians of {payload.get('train_repeats', 3)} (`system_s`: the CPU seconds spent in the "
            "kernel, `page_faults`: its minor page faults, where recorded). Training costs "
            f"{rows['cpu_vs_scanpy'].iloc[0]:.1f}× Scanpy's CPU seconds (issue 14 asks for at most 3×)."
            + _other_settings(rows) + _earlier_training(rows) + _measured(payload, key) + "\n\n"
            + markdown_table(rows))


def _scale(payload: dict, key: str) -> str:
    """The table of training on 10⁵–10⁶ resampled cells, on the CPU or a GPU."""
    rows = pd.DataFrame(payload[key]).sort_values("cells")
    first, last = rows.iloc[0], rows.iloc[-1]
    sizes = " to ".join(dict.fromkeys(f"{n:,}" for n in (first["cells"], last["cells"])))
    words = shlex.split(first["command"])
    k = int(words[words.index("-k") + 1])  # the K every row trained with: the source's number of types
    on_gpu = key.endswith("_cuda")
    return (f"## Training on {sizes} cells (resampled PBMC-Zheng4k{', GPU' if on_gpu else ''})\n\n"
            + (GPU_NOTE if on_gpu else "")
            + f"Cells drawn at random from PBMC-Zheng4k (4,271 cells × 2,000 genes, {k} types) with every count "
            "redrawn from a Poisson distribution of that mean (no two cells are copies), written in "
            f"chunks; `sccsa-train` with all cores, seed 0, K = {k} and step budgets of 1000 optimizer steps "
            "for each stage (`--pretrain-max-steps 1000 --cluster-max-steps 1000`; the defaults run "
            "epochs, 60 + up to 100, which at 10⁶ cells would be ~600,000 steps). Pseudo-labels, K-means "
            "of the consensus, the F-test, the gene order and the panel's scaling run on a sketch of "
            "50,000 cells; the network's input is made dense one mini-batch or chunk at a time. "
            "`kmeans_init_s`: the embedding of the 50,000 sampled cells the K-means of the latent fits its "
            "centres on, and that K-means (stage 2's first epoch labels every cell); `other_s`: reading "
            "the file, storing the fit (stage 2's last embedding, reused) and the export. "
            f"{_leiden_reach(rows, k=k)} "
            + (f"{last['cells'] / first['cells']:.0f}× the cells: {last['wall_s'] / first['wall_s']:.2f}× the wall "
               f"time, {last['peak_rss_mib'] / first['peak_rss_mib']:.2f}× the peak RSS. " if len(rows) > 1 else "")
            + "ARI/NMI against the "
            "source cells' types, read after the fit." + _measured(payload, key) + "\n\n"
            + markdown_table(rows.drop(columns=["command"]).set_index("cells"))
            + f"\n\nCommand (per row): `{rows['command'].iloc[-1]}`.")


def summarise(payload: dict) -> str:
    parts = []
    for section, render in (("training", _training_rows), ("training_vs_scanpy", _vs_scanpy), ("training_scale", _scale)):
        for key in (section, f"{section}_cuda"):  # the CPU's table, then the GPU's beside it
            if payload.get(key):
                parts.append(render(payload, key))
    if payload.get("throughput"):
        parts.append("## Inference: ONNX Runtime vs torch eager, same model, same threads\n\nCells/s from the median of "
                     f"{payload['repeats']} timed passes over the same cells per runtime, the passes of the two runtimes "
                     "interleaved." + _measured(payload, "throughput") + "\n\n"
                     + markdown_table(pd.DataFrame(payload["throughput"]).set_index("batch")))
    if payload.get("streaming"):
        rows = pd.DataFrame(payload["streaming"])
        growth = []
        for suffix, group in rows.groupby("output"):
            group = group.sort_values("cells")
            if len(group) > 1:
                first, last = group.iloc[0], group.iloc[-1]
                growth.append(f"{suffix}: {last['peak_rss_mib'] / first['peak_rss_mib']:.2f}× the peak RSS for "
                              f"{last['cells'] / first['cells']:.3g}× the cells")
        sizes = " and ".join(f"{n:,}" for n in sorted(rows["cells"].unique()))
        parts.append(f"## `sccsa-infer predict` on {sizes} cells (replicated PBMC-Zheng4k .h5ad, one thread)\n\n"
                     "The default model of PBMC-Zheng4k (1000 genes); `--threads 1`, one process; `peak_rss_mib` is "
                     "that process's peak resident memory, `cells_per_cpu_s` counts user + system CPU. Results are "
                     "written block by block (Parquet row groups; .h5ad: the input copied, obs columns filled by "
                     "slice)" + (": " + "; ".join(growth) + "." if growth else ".") + _measured(payload, "streaming")
                     + (f" Timed: {payload['infer_install']}." if payload.get("infer_install") else "")
                     + "\n\n" + markdown_table(rows.drop(columns=["command"]).set_index(["cells", "output"]))
                     + f"\n\nCommand (per row): `{rows['command'].iloc[0]}`.")
    if payload.get("contention"):
        rows = pd.DataFrame(payload["contention"])
        parts.append("## Contention: idle threads spinning or sleeping, alone and beside busy processes\n\n"
                     "Each command with all cores, alone and beside CPU-bound neighbour processes (one per two "
                     "cores); idle threads spinning (`sccsa-infer --spin-wait`, `OMP_WAIT_POLICY=ACTIVE` for "
                     "torch) or sleeping (the defaults of both commands: `OMP_WAIT_POLICY=PASSIVE` for torch); "
                     "for `sccsa-train` also spinning briefly, then sleeping (`--spin-wait`: `GOMP_SPINCOUNT=10000` "
                     "beside it). Median of 3 runs; `sccsa-infer` labels "
                     f"200,000 replicated PBMC-Zheng4k cells, `sccsa-train` fits {payload.get('contention_dataset')} "
                     "with the default settings." + _measured(payload, "contention") + "\n\n"
                     + markdown_table(rows.set_index(["command", "idle_threads", "busy_neighbours"])))
    if payload.get("processes"):
        parts.append("## Data-parallel training: one process or one `torchrun` process per core\n\n"
                     f"`sccsa-train` on {payload.get('processes_dataset')} (default settings, seed 0, `--eval-key` read "
                     "after the fit) as one process with all cores, and under `torchrun --standalone` as one process "
                     "per core with one thread each (gloo backend). `cpu_s` sums every process; `peak_rss_mib` is "
                     "the largest single process." + _measured(payload, "processes") + "\n\n"
                     + markdown_table(pd.DataFrame(payload["processes"]).set_index("processes")))
    if payload.get("graph_forms"):
        rows = pd.DataFrame(payload["graph_forms"])
        if "genes" not in rows:
            rows["genes"] = 1000
        gains = []
        for d, group in rows.groupby("genes"):
            speed, macs = group.set_index("form")["cells_per_cpu_s"], group.set_index("form")["macs_per_cell"]
            gains.append(f"{d} genes: {macs['dense'] / macs['four_step']:.2f}× fewer multiply-adds per cell, "
                         f"{speed['four_step'] / speed['dense']:.2f}× the cells per CPU-second")
            if BASELINE_FORM in speed:
                gains.append(f"against the serving code of {BASELINE_COMMIT} (before issue 15) on the dense graph of "
                             f"the same {d}-gene model, today's code and graph label "
                             f"{speed['four_step'] / speed[BASELINE_FORM]:.2f}× the cells per CPU-second")
        parts.append("## The autocorrelation in the graph: dense DFT matrices or the four-step factorisation\n\n"
                     "Models fitted on PBMC-Zheng4k with the default settings and 500 or 1000 genes (seed 0), each "
                     "exported twice: with three dense d × d DFT MatMuls (the graph before) and with the four-step "
                     "factorisation (today's export). Multiply-adds per cell counted from each graph "
                     "(MatMul/Gemm/Conv/ConvTranspose; element-wise work not counted); `sccsa-infer predict "
                     f"--threads 1` end to end (reading, checks, graph, writing) on {int(rows['cells'].iloc[0]):,} "
                     "replicated PBMC-Zheng4k cells to `.parquet`, median CPU seconds of 3 runs per form, the forms "
                     "alternating."
                     + (" The row of the serving code before issue 15 runs the same command with the `sccsa-infer` "
                        f"of an install of commit {BASELINE_COMMIT} (`--baseline-bin`; "
                        f"{payload.get('baseline_install') or 'its environment not recorded'}) on the dense export."
                        if (rows["form"] == BASELINE_FORM).any() else "")
                     + (f" The other rows: {payload['forms_install']}." if payload.get("forms_install") else "")
                     + " Four-step: " + "; ".join(gains) + "."
                     + _measured(payload, "graph_forms") + "\n\n"
                     + markdown_table(rows.set_index(["genes", "form"])))
    if payload.get("cold_start"):
        labels = {"sccsa_infer_help_s": "`sccsa-infer --help`", "wrong_path_error_s": "a wrong input path to its error",
                  "import_and_session_s": "import + ONNX Runtime session",
                  "sccsa_infer_verify_s": "`sccsa-infer verify` (import, hashes, session, self-test)"}
        timings = "; ".join(f"{label}: {payload['cold_start'][key]} s" for key, label in labels.items()
                            if key in payload["cold_start"])
        parts.append(f"## Cold start (median of 5 fresh processes)\n\n{timings}." + _measured(payload, "cold_start"))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--datasets", nargs="*", help="datasets to time training on (default: every .h5ad in --data)")
    parser.add_argument("--sections", nargs="*", choices=SECTIONS, default=list(SECTIONS),
                        help="what to measure; the other sections are kept from --out")
    parser.add_argument("--cells", type=int, nargs="*", default=[1_000_000, 5_000_000])
    parser.add_argument("--train-cells", type=int, nargs="*", default=[100_000, 300_000, 1_000_000],
                        help="cells of the resampled files the training_scale section trains on")
    parser.add_argument("--scanpy-dataset", default="pbmc_zheng4k_top2000",
                        help="the dataset the training_vs_scanpy section times both pipelines on")
    parser.add_argument("--contention-dataset", default="klein_subset_tmscc",
                        help="the dataset sccsa-train fits in the contention section")
    parser.add_argument("--forms-cells", type=int, default=200_000,
                        help="replicated cells that the graph_forms section labels with each form")
    parser.add_argument("--processes-dataset", default="pbmc_zheng4k_top2000",
                        help="the dataset sccsa-train fits in the processes section")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per runtime and batch size (median)")
    parser.add_argument("--train-repeats", type=int, default=3,
                        help="training_vs_scanpy: runs of each pipeline (median)")
    parser.add_argument("--infer-bin", type=Path, default=INFER_BIN,
                        help="the sccsa-infer to time in streaming and cold_start, e.g. that of a serving-only install "
                             "(what the Docker image holds) instead of this environment's")
    parser.add_argument("--baseline-bin", type=Path, default=None,
                        help=f"graph_forms: also time the sccsa-infer of an install of commit {BASELINE_COMMIT} (the serving "
                             "code before issue 15) on the dense graph of the 1000-gene model")
    parser.add_argument("--train-options", nargs="*", default=[],
                        help="training_vs_scanpy: one more sccsa-train row per string of options, e.g. '--cc off' "
                             "(what a setting costs in the whole command, measured in the same run)")
    parser.add_argument("--train-baseline-src", type=Path, default=None,
                        help="training_vs_scanpy: also time the sccsa-train of this source tree (a git worktree of an "
                             "earlier commit) with this environment's packages, beside today's")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help=f"where the training sections ({', '.join(GPU_SECTIONS)}) train; cuda: their results are "
                             "the page's GPU sections, kept beside the CPU ones, and no other section may run")
    parser.add_argument("--precisions", nargs="*", choices=("32", "bf16-mixed"), default=["32"],
                        help="with --device cuda: the training and training_vs_scanpy sections run each of these "
                             "(sccsa-train --precision), training_scale the first; on the CPU only training_vs_scanpy "
                             "runs each (the first row is the defaults')")
    parser.add_argument("--rewrite-page", action="store_true",
                        help="measure nothing: rewrite the page from --out (e.g. after sections measured on another "
                             "machine were copied into it), keeping the metadata of the run that wrote it")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS / "speed.json")
    args = parser.parse_args()
    if args.rewrite_page:
        finish(args.out, "Speed and memory", summarise(json.loads(args.out.read_text())), merged_from=[])
        return
    if args.device != "cpu" and set(args.sections) - set(GPU_SECTIONS):
        parser.error(f"--device {args.device} times only the training sections ({', '.join(GPU_SECTIONS)}); "
                     "run the others on the CPU in a separate run")
    precisions = args.precisions
    trained = precisions if args.device != "cpu" else ["32"]  # on the CPU the training sections run the defaults
    key = (lambda section: section) if args.device == "cpu" else (lambda section: f"{section}_{args.device}")
    warnings.filterwarnings("ignore")
    infer_bin = args.infer_bin.absolute()

    partial = args.out.exists() and set(args.sections) != set(SECTIONS)
    payload = json.loads(args.out.read_text()) if partial else {}
    payload.setdefault("measured", {})
    before = copy.deepcopy(payload)
    here = machine()
    stamp = {"commit": here["git_commit"], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": here["cpu"],
             "torch_threads": here["torch_threads"], "cores": here["cores"]}
    if args.device == "cuda":
        stamp["gpu"] = torch.cuda.get_device_name()
    model = None
    if "training" in args.sections:
        payload[key("training")] = []
        for path in datasets(args.data, args.datasets):
            for precision in trained:
                row, fitted = train_timed(path, args.device, precision)
                payload[key("training")].append(row)
                if path.stem == SERVED and args.device == "cpu":
                    model = fitted  # the served model is this same default fit: train it once
        payload["measured"][key("training")] = stamp
    adata, served_truth, k, kind = load(args.data / f"{SERVED}.h5ad")
    if model is None and set(args.sections) & {"throughput", "streaming", "contention", "graph_forms", "cold_start"}:
        model = SCCSA(k, input_kind=kind, random_state=0, progress=False).fit(adata)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        bundle = work / "bundle"
        if model is not None:
            model.export(bundle, overwrite=True)
        if "training_vs_scanpy" in args.sections:
            flag_sets = [device_flags(args.device, precision) for precision in precisions]
            flag_sets += [shlex.split(options) for options in args.train_options]
            configurations = {" ".join(["sccsa-train", *flags]) if flags else "sccsa-train (default settings)": flags
                              for flags in flag_sets}
            payload[key("training_vs_scanpy")] = training_vs_scanpy(args.data / f"{args.scanpy_dataset}.h5ad", work,
                                                                    repeats=args.train_repeats,
                                                                    baseline_src=args.train_baseline_src,
                                                                    configurations=configurations)
            payload["scanpy_dataset"] = args.scanpy_dataset
            payload["train_repeats"] = args.train_repeats
        if "training_scale" in args.sections:
            payload[key("training_scale")] = training_scale(adata, served_truth, k, args.train_cells, work,
                                                            device_flags(args.device, trained[0]))
        if "throughput" in args.sections:
            predictor = Predictor(bundle, n_threads=torch.get_num_threads())
            counts = predictor.align(list(adata.var_names)).take(adata.X)
            totals = np.asarray(adata.X.sum(axis=1), dtype=np.float32).ravel()
            payload["repeats"] = args.repeats
            payload["throughput"] = throughput(model, predictor, counts, totals, args.repeats)
        if "streaming" in args.sections:
            payload["streaming"] = streaming(infer_bin, bundle, sp.csr_matrix(adata.X), list(adata.var_names),
                                             args.cells, work)
        if "contention" in args.sections:
            payload["contention"] = contention(infer_bin, bundle, sp.csr_matrix(adata.X), list(adata.var_names),
                                               args.data / f"{args.contention_dataset}.h5ad", work)
            payload["contention_dataset"] = args.contention_dataset
        if "graph_forms" in args.sections:
            smaller = SCCSA(k, n_genes=FORMS_SMALL_PANEL, input_kind=kind, random_state=0, progress=False).fit(adata)
            baseline = args.baseline_bin.absolute() if args.baseline_bin else None
            payload["graph_forms"] = graph_forms([smaller, model], infer_bin, sp.csr_matrix(adata.X),
                                                 list(adata.var_names), args.forms_cells, work, baseline_bin=baseline)
            payload["baseline_install"] = installed_packages(baseline) if baseline else None
            payload["forms_install"] = installed_packages(infer_bin)
        if "processes" in args.sections:
            payload["processes"] = data_parallel(args.data / f"{args.processes_dataset}.h5ad", work)
            payload["processes_dataset"] = args.processes_dataset
        if "cold_start" in args.sections:
            payload["cold_start"] = cold_start(infer_bin, bundle, work)
        for section in set(args.sections) - {"training"}:
            payload["measured"][key(section)] = stamp
        if set(args.sections) & {"streaming", "cold_start"}:
            payload["infer_install"] = installed_packages(infer_bin)
    if partial:
        payload = _onto_latest(args.out, before, payload)
    write_json(args.out, payload)
    finish(args.out, "Speed and memory", summarise(payload),
           sections=[key(section) for section in args.sections] if partial else None)


def _onto_latest(out: Path, before: dict, payload: dict) -> dict:
    """What this run measured, laid onto ``out`` as it is now rather than as it was at the start:
    a run of other sections that finished meanwhile keeps its results."""
    latest = json.loads(out.read_text())
    latest.setdefault("measured", {}).update(
        {section: stamp for section, stamp in payload["measured"].items() if before["measured"].get(section) != stamp})
    latest.update({key: value for key, value in payload.items() if key != "measured" and before.get(key) != value})
    return latest


if __name__ == "__main__":
    main()
