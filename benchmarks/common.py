"""Shared pieces of the benchmark scripts: datasets, metrics, machine description, result files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from sccsa_infer.metrics import evaluate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
LABEL_KEY = "cell_type"

# What the data README says about the values of the files that are not raw counts.
INPUT_KINDS = {"pollen_simlr_log": "lognorm", "yan_embryo_rpkm": "abundance"}
SPLIT_FILE = ROOT / "benchmarks" / "split.json"


def split_of(dataset: str) -> str:
    """'tuning' or 'confirmation' (benchmarks/split.json), or 'unsplit' for a dataset not in it."""
    split = json.loads(SPLIT_FILE.read_text())
    return next((half for half in ("tuning", "confirmation") if dataset in split[half]), "unsplit")


def split_datasets(half: str) -> list[str]:
    """The datasets of one half of benchmarks/split.json."""
    return list(json.loads(SPLIT_FILE.read_text())[half])


def datasets(folder: Path, names: Iterable[str] | None = None) -> list[Path]:
    """The ``.h5ad`` files of ``folder`` (optionally only ``names``), sorted by name."""
    paths = sorted(folder.glob("*.h5ad"))
    if names:
        wanted = set(names)
        paths = [p for p in paths if p.stem in wanted]
    if not paths:
        raise SystemExit(f"no .h5ad datasets found in {folder}")
    return paths


def load(path: Path) -> tuple[ad.AnnData, np.ndarray, int, str]:
    """The dataset, its true labels (as strings), K = number of labels, and its input kind."""
    adata = ad.read_h5ad(path)
    labels = adata.obs[LABEL_KEY].astype(str).to_numpy()
    return adata, labels, len(np.unique(labels)), INPUT_KINDS.get(path.stem, "counts")


def scanpy_embedding(lognorm: Any, *, seed: int = 0, batches: np.ndarray | None = None) -> ad.AnnData:
    """The baselines' embedding: Scanpy's standard PCs (as sccsa's pseudo-labels use them;
    Harmony-corrected with ``batches``) and Scanpy's own ``sc.pp.neighbors`` graph, which is what a
    user's pipeline builds (sccsa computes the same graph without umap-learn's numba, with exact
    neighbours where Scanpy's are approximate: above 8,192 cells)."""
    import scanpy as sc
    from sccsa_train.knn_graph import neighbour_count
    from sccsa_train.pseudolabels import standard_pcs

    pcs = standard_pcs(lognorm, seed=seed, batches=batches).astype(np.float32)
    adata = ad.AnnData(obsm={"X_pca": pcs}, obs=pd.DataFrame(index=pd.RangeIndex(len(pcs)).astype(str)))
    sc.pp.neighbors(adata, n_neighbors=neighbour_count(len(pcs), 15), use_rep="X_pca", random_state=seed)
    return adata


def score(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """ARI, NMI, ACC (Hungarian) of a clustering."""
    metrics = evaluate(true, pred)
    return {k: round(float(metrics[k]), 4) for k in ("ari", "nmi", "acc")}


class Timer:
    """Wall-clock seconds of a ``with`` block."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


VECTOR_EXTENSIONS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))  # /proc/cpuinfo flag, name; widest first


def cpu_description() -> str:
    """The CPU's name with its family/model and widest vector extension: virtual machines may name
    only the vendor ("AMD EPYC"), and hosts behind the same name differ by 2-3x per core in the
    matrix products the graph is made of, so timings from different sessions compare only when
    this string matches."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if key.strip() == "flags":
                break
    except OSError:
        return "unknown"
    flags = set(fields.get("flags", "").split())
    vector = next((name for flag, name in VECTOR_EXTENSIONS if flag in flags), "no AVX")
    return (f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')}, model "
            f"{fields.get('model', '?')}, {vector})")


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    cpu = cpu_description()
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    """This checkout's commit, or ``SCCSA_GIT_COMMIT`` where that is set: a copy of the tree sent to
    a lent GPU machine carries the files of one commit but a ``.git`` that may name another."""
    if os.environ.get("SCCSA_GIT_COMMIT"):
        return os.environ["SCCSA_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def command_line() -> str:
    """How this script was invoked (recorded next to its results)."""
    return shlex.join(["python", str(Path(sys.argv[0]).relative_to(ROOT)) if Path(sys.argv[0]).is_absolute() else sys.argv[0],
                       *sys.argv[1:]])


def read_records(path: Path) -> list[dict[str, Any]]:
    """Previously saved records (for --resume), or an empty list."""
    if not path.exists():
        return []
    return list(json.loads(path.read_text()))


def add_merge_option(parser: argparse.ArgumentParser) -> None:
    """``--merge [SHARD ...]``: join shards (runs split over processes with ``--out``) into ``--out`` and
    rewrite the page; with no shard named, only rewrite the page from ``--out``. Absent: run."""
    parser.add_argument("--merge", type=Path, nargs="*", default=None, metavar="SHARD",
                        help="add the records of these JSON files (e.g. shards run in parallel with --out) to --out "
                             "and rewrite the page; with no file, only rewrite the page")


def page_parser(doc: str | None, page: str, *, datasets: bool = True, default_datasets: list[str] | None = None,
                dataset_choices: list[str] | None = None, seeds: bool = True, resume: bool = True) -> argparse.ArgumentParser:
    """The options every results page's script shares: ``--data``, ``--datasets`` (``datasets``),
    ``--seeds`` (0 1 2; ``seeds``), ``--resume`` (``resume``), ``--out`` (``results/<page>.json``) and
    ``--merge``; each script adds its own after them."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of labelled .h5ad files")
    if datasets:
        parser.add_argument("--datasets", nargs="*", default=default_datasets, choices=dataset_choices,
                            help="only these (file names without .h5ad)")
    if seeds:
        parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    if resume:
        parser.add_argument("--resume", action="store_true", help="keep and skip records already in --out")
    parser.add_argument("--out", type=Path, default=RESULTS / f"{page}.json")
    add_merge_option(parser)
    return parser


def merge_records(out: Path, shards: Iterable[Path], key: Callable[[dict], tuple]) -> list[dict[str, Any]]:
    """The records of ``out`` and ``shards`` (runs split over processes with ``--out``), one per ``key``
    (a later file wins), written back to ``out``."""
    merged = {key(r): r for path in [out, *shards] for r in read_records(path)}
    records = list(merged.values())
    write_json(out, records)
    return records


def merge_or_resume(args: argparse.Namespace, title: str, summarise: Callable[[list[dict]], str],
                    key: Callable[[dict], tuple]) -> list[dict[str, Any]] | None:
    """``--merge``: join the shards into ``--out``, rewrite the page and return None (nothing to run);
    otherwise the records to start from (``--out``'s with ``--resume``, else none)."""
    if args.merge is not None:
        finish(args.out, title, summarise(merge_records(args.out, args.merge, key)), merged_from=args.merge)
        return None
    return read_records(args.out) if args.resume else []


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def seed_coverage(frame: pd.DataFrame, column: str, names: list[str]) -> str:
    """How many seeds each of ``names`` (values of ``frame[column]``) has per dataset."""
    seeds = frame.groupby([column, "dataset"])["seed"].nunique()
    parts = []
    for name in names:
        counts = seeds[name].value_counts().sort_index(ascending=False)
        parts.append(f"{name}: " + ", ".join(f"{n} seed(s) on {m} dataset(s)" for n, m in counts.items()))
    return "Seeds run: " + "; ".join(parts) + ". A value without ± comes from one seed."


def mean_sd(values: pd.Series) -> str:
    """'0.812 ± 0.013' (sd over seeds; '±' omitted for a single value)."""
    values = values.dropna()
    if len(values) == 0:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``frame`` (index included)."""
    frame = frame.reset_index()
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def write_markdown(path: Path, title: str, body: str, meta: dict[str, Any]) -> None:
    """A results page: title, body, then how and where it was produced (the last line: where and
    when it was measured, which the README quotes)."""
    again = meta.get("resummarised")
    resummarised = (f" Page re-summarised from its records (nothing re-measured) by `{again['command']}` at commit "
                    f"{again['git_commit']}, {again['date']}." if again else "")
    scope = (f"This run measured {', '.join(meta['sections'])}; the other sections keep the commit, date and "
             "threads their paragraphs give. " if meta.get("sections") else "")
    footer = (
        f"\n\nWritten by `{meta['command']}` (from the repository root, in `.venv`; benchmarks/README.md says "
        f"how to regenerate it).{resummarised}\n\n{scope}"
        f"Measured on {meta['machine']['cpu']} ({meta['machine']['cores']} cores, "
        f"{meta['machine']['memory_gib']} GiB, {_threads(meta['machine']['torch_threads'])}), "
        f"Python {meta['machine']['python']}, "
        f"commit {meta['machine']['git_commit']}, {meta['date']}.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {title}\n\n{body}{footer}")


def _threads(threads: int | None) -> str:
    if threads is None:
        return "merged from runs in several processes: benchmarks/README.md says how they ran"
    return f"{threads} torch thread(s) per process"


def run_meta() -> dict[str, Any]:
    """Command, machine and date of this run."""
    return {"command": command_line(), "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def training_threads() -> int | None:
    """torch's intra-op threads now (recorded with each trained model's result)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def finish(out: Path, title: str, summary: str, *, merged_from: list[Path] | None = None,
           sections: list[str] | None = None) -> None:
    """Record this run's metadata beside ``out`` (``*_meta.json``) and write its Markdown page.

    ``sections``: this run measured only these parts of the page (the others were kept from
    earlier runs, with their own commit, date and threads); the footer then says so instead of
    presenting this run's commit and threads as the whole page's.

    ``merged_from``: the shards merged into ``out`` (``--merge``): the records come from other
    processes, so this process's thread count says nothing about them and the page points to the
    records' own ``torch_threads``. No shards means the page is only re-summarised from the records
    already there: the previous metadata (where and when they were measured) is kept.
    """
    meta = run_meta()
    if sections is not None:
        meta["sections"] = sorted(sections)
    meta_path = out.with_name(out.stem + "_meta.json")
    if merged_from is not None:
        meta["machine"]["torch_threads"] = None
        if not merged_from and meta_path.exists():
            previous = json.loads(meta_path.read_text())
            previous["resummarised"] = {"command": meta["command"], "git_commit": meta["machine"]["git_commit"],
                                        "date": meta["date"]}
            meta = previous
    write_json(meta_path, meta)
    write_markdown(out.with_suffix(".md"), title, summary, meta)
