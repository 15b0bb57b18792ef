"""Label cells and record the results, Scanpy style: a whole AnnData in memory (:func:`annotate`,
CellTypist's one call) or a file of any size streamed to another file (:func:`annotate_file`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .atomic import check_no_overlap, check_writable
from .block import BlockLabeller
from .bundle import Bundle, sha256_bytes
from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_MIN_COVERAGE, KEY_ADDED, bar_disabled
from .errors import InputDataError, SccsaWarning
from .io import OWN_RESULTS, CellSource, H5adSource, open_cells, read_h5ad
from .metrics import check_eval_labels, comparable_label_accuracy, evaluate
from .prediction import Prediction
from .predictor import Predictor
from .sinks import check_output_format, open_sink
from .validate import DuplicateNames, warn_repeated_names

log = logging.getLogger(__name__)


@dataclass
class AnnotationSummary:
    """What one ``annotate_file`` run did."""

    n_cells: int
    coverage: float
    cluster_sizes: dict[str, int]
    n_unassigned: int
    n_empty: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class _Tally:
    """Counts accumulated block by block (constant memory), and the clusters only for --eval-key."""

    n_clusters: int
    keep_clusters: bool
    sizes: np.ndarray = field(init=False)
    n_unassigned: int = 0
    n_empty: int = 0
    clusters: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sizes = np.zeros(self.n_clusters, dtype=np.int64)

    def add(self, part: Prediction) -> None:
        self.sizes += np.bincount(part.cluster, minlength=self.n_clusters)
        self.n_unassigned += int(part.unassigned.sum())
        self.n_empty += int(part.empty.sum())
        if self.keep_clusters:
            self.clusters.append(part.cluster.astype(np.int32))
            if part.label is not None:
                self.labels.append(part.label)


def annotate_file(
    predictor: Predictor,
    data: str | Path,
    out: str | Path,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    total_counts_key: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    eval_key: str | None = None,
    label_map: Mapping[str, str] | None = None,
    with_latent: bool = False,
    overwrite: bool = True,
    progress: bool = True,
    client: Any = None,
) -> AnnotationSummary:
    """Label every cell of ``data`` and write ``out`` (.h5ad with the input plus results,
    or a .csv/.tsv/.parquet table). The input file is only read; ``out`` appears only when
    everything succeeded. Cells are read, labelled and written one block of ``batch_size`` at a
    time, so memory does not grow with the number of cells (``eval_key`` keeps the labels).
    With a ``dask.distributed`` ``client`` the blocks of an ``.h5ad`` are read and labelled on its
    workers (:mod:`sccsa_infer.dask`) and written here in order: the same output."""
    data, out = Path(data), Path(out)
    check_output_format(out)  # before reading anything; open_sink checks again where it writes
    check_no_overlap(out, [data, predictor.bundle.source])
    check_writable(out, overwrite=overwrite, replaceable=OWN_RESULTS)
    bundle = predictor.bundle
    with open_cells(data, layer=layer, gene_key=gene_key) as source:
        truth = source.obs_column(eval_key).to_numpy() if eval_key is not None else None
        if truth is not None:
            check_eval_labels(truth, eval_key)
        library = source.obs_column(total_counts_key).to_numpy() if total_counts_key is not None else None
        labeller = predictor.labeller(predictor.align(source.var_names, min_coverage=min_coverage, source=str(data)))
        coverage = labeller.alignment.coverage
        log.info("labelling %d cells of %s in blocks of %d (gene coverage %.1f%%)", source.n_obs, data, batch_size,
                 100 * coverage)
        tally = _Tally(bundle.n_clusters, keep_clusters=truth is not None)
        duplicates = DuplicateNames()
        if client is not None and not isinstance(source, H5adSource):
            raise InputDataError(f"A Dask scheduler reads .h5ad files on its workers; {data} is not one. Convert it "
                                 "(e.g. scanpy.read_10x_h5(...).write_h5ad(...)) or label it without --scheduler.")
        blocks = (_local_blocks(source, labeller, library, batch_size, str(data)) if client is None
                  else _dask_blocks(data, layer, labeller, library, batch_size, client))
        with open_sink(out, source, with_latent=with_latent, overwrite=overwrite) as sink, \
                tqdm(total=source.n_obs, unit="cells", desc="sccsa-infer", disable=bar_disabled(progress),
                     leave=False) as bar:
            for start, part in blocks:
                stop = start + len(part)
                names = source.names(start, stop)
                duplicates.add(names)
                sink.write(start, names, part)
                tally.add(part)
                bar.update(stop - start)
            params = {"layer": layer, "gene_key": gene_key, "total_counts_key": total_counts_key,
                      "min_coverage": min_coverage}
            sink.finish({KEY_ADDED: run_record(bundle, coverage, params)})
        if duplicates.may_repeat:  # a second pass over the names, only when the first could not rule repeats out
            n_repeated, example = duplicates.confirm(source.names(start, min(start + batch_size, source.n_obs))
                                                     for start in range(0, source.n_obs, batch_size))
            if n_repeated:
                warn_repeated_names(n_repeated, example or "?", str(data))
    if tally.n_empty:
        warnings.warn(
            f"{tally.n_empty} cell(s) of {data} have no counts in the model's genes; they are labelled but flagged "
            "sccsa_unassigned. Filter empty droplets (scanpy.pp.filter_cells(min_counts=1)) upstream.",
            SccsaWarning,
            stacklevel=2,
        )
    summary = AnnotationSummary(
        n_cells=int(tally.sizes.sum()),
        coverage=coverage,
        cluster_sizes={str(k): int(n) for k, n in enumerate(tally.sizes)},
        n_unassigned=tally.n_unassigned,
        n_empty=tally.n_empty,
    )
    if truth is not None:
        summary.metrics = evaluate(truth, np.concatenate(tally.clusters))
        if tally.labels:
            accuracy = comparable_label_accuracy(truth, np.concatenate(tally.labels), label_map, eval_key or "",
                                                 bundle.cell_ontology)
            if accuracy is not None:
                summary.metrics["label_accuracy"] = accuracy
    return summary


def _local_blocks(source: CellSource, labeller: BlockLabeller, library: np.ndarray | None, batch_size: int,
                  name: str) -> Iterator[tuple[int, Prediction]]:
    """``(first row, results)`` of each block of ``source``, labelled in this process."""
    for start, stop, matrix in source.chunks(batch_size):
        yield start, labeller(matrix, None if library is None else library[start:stop], row_offset=start, source=name)


def _dask_blocks(data: Path, layer: str | None, labeller: BlockLabeller, library: np.ndarray | None, batch_size: int,
                 client: Any) -> Iterator[tuple[int, Prediction]]:
    """The same blocks, read and labelled on a Dask cluster's workers, in row order."""
    from .dask import label_blocks, lazy_matrix

    matrix = lazy_matrix(data, layer=layer, block_size=batch_size)
    log.info("labelling on Dask: %d blocks, %d worker thread(s)", matrix.numblocks[0], sum(client.nthreads().values()))
    yield from label_blocks(matrix, labeller, client=client, total_counts=library)


def run_record(bundle: Bundle, coverage: float, params: dict[str, Any]) -> dict[str, Any]:
    """What ``uns[key_added]`` holds after labelling: the model, its hash, the gene coverage and
    the parameters of the call (Scanpy records ``uns[key]['params']`` the same way)."""
    return {
        "params": {k: ("" if v is None else v) for k, v in params.items()},  # h5ad cannot store None
        "model": bundle.source,
        "model_sha256": sha256_bytes(bundle.model_bytes),
        "gene_coverage": float(coverage),
        "cluster_names": bundle.cluster_names or [],
    }


def annotate(
    data: Any,
    model: str | Path | Predictor | None = None,
    *,
    key_added: str = KEY_ADDED,
    layer: str | None = None,
    gene_key: str | None = None,
    total_counts_key: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    copy: bool = False,
) -> Any:
    """Label the cells of an AnnData (or of an ``.h5ad`` path, read whole) with a model bundle
    (default: the shipped model) and return the AnnData with ``obs['{key_added}_cluster']``,
    ``_label``, ``_label_ontology_term_id`` (a bundle with Cell Ontology ids), ``_confidence``,
    ``_distance``, ``_unassigned``, ``obsm['X_{key_added}']`` and
    ``uns[key_added]`` (model, hash, gene coverage, ``params``). An AnnData passed in is written
    into (or into a copy with ``copy=True``); a file on disk is never modified.

    >>> import sccsa_infer
    >>> adata = sccsa_infer.annotate("pbmc.h5ad", key_added="pbmc")   # doctest: +SKIP
    >>> adata.obs["pbmc_label"].value_counts()                        # doctest: +SKIP
    """
    import anndata

    if isinstance(data, (str, Path)):
        adata = read_h5ad(data)
    elif isinstance(data, anndata.AnnData):
        adata = data.copy() if copy else data
    else:
        raise InputDataError(f"annotate() takes an AnnData or an .h5ad path, not {type(data).__name__}.")
    predictor = model if isinstance(model, Predictor) else Predictor(model)
    result = predictor.predict(adata, layer=layer, gene_key=gene_key, total_counts=total_counts_key,
                               batch_size=batch_size, min_coverage=min_coverage)
    params = {"key_added": key_added, "layer": layer, "gene_key": gene_key, "total_counts_key": total_counts_key,
              "min_coverage": min_coverage}
    record_results(adata, result, predictor.bundle, key_added, params)
    return adata


def record_results(adata: Any, result: Prediction, bundle: Bundle, key_added: str, params: dict[str, Any]) -> None:
    """Write ``result`` into ``adata`` with the output schema: obs columns, the latent in obsm,
    the run record in uns (the in-memory and the Dask ``annotate`` both end here)."""
    for key, values in result.obs_columns(key_added).items():
        adata.obs[key] = values
    adata.obsm.update(result.obsm(key_added))
    adata.uns[key_added] = run_record(bundle, result.gene_coverage or 0.0, params)
    log.info("annotated %d cells with %s as %r", adata.n_obs, bundle.source, key_added)
