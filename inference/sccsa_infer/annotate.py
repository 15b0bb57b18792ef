"""Label cells and record the results, Scanpy style: a whole AnnData in memory (:func:`annotate`,
CellTypist's one call) or a file of any size streamed to another file (:func:`annotate_file`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .atomic import check_no_overlap, check_writable
from .bundle import Bundle, sha256_bytes
from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_MIN_COVERAGE, KEY_ADDED, bar_disabled
from .errors import InputDataError, SccsaWarning
from .io import (
    OWN_RESULTS,
    TABLE_SUFFIXES,
    format_suffix,
    open_cells,
    read_h5ad,
    require_parquet,
    write_h5ad_result,
    write_table,
)
from .metrics import check_eval_labels, comparable_label_accuracy, evaluate
from .predictor import Prediction, Predictor
from .validate import warn_duplicate_cells

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
) -> AnnotationSummary:
    """Label every cell of ``data`` and write ``out`` (.h5ad with the input plus results,
    or a .csv/.tsv/.parquet table). The input file is only read; ``out`` appears only when
    everything succeeded."""
    data, out = Path(data), Path(out)
    outformat_suffix = format_suffix(out)
    if outformat_suffix != ".h5ad" and outformat_suffix not in TABLE_SUFFIXES:
        raise InputDataError(f"Cannot write {out}: the output must end in .h5ad, .csv, .tsv or .parquet.")
    if outformat_suffix == ".parquet":
        require_parquet()
    check_no_overlap(out, [data, predictor.bundle.source])
    check_writable(out, overwrite=overwrite, replaceable=OWN_RESULTS)
    with open_cells(data, layer=layer, gene_key=gene_key) as source:
        truth = source.obs_column(eval_key) if eval_key is not None else None
        if truth is not None:
            check_eval_labels(truth.to_numpy(), eval_key)
        warn_duplicate_cells(source.obs_names, str(data))
        library = source.obs_column(total_counts_key).to_numpy() if total_counts_key is not None else None
        alignment = predictor.align(source.var_names, min_coverage=min_coverage, source=str(data))
        log.info("labelling %d cells of %s in chunks of %d (gene coverage %.1f%%)", source.n_obs, data, batch_size,
                 100 * alignment.coverage)
        bundle = predictor.bundle
        result = Prediction.empty(source.n_obs, bundle.n_clusters, bundle.latent_dim, bundle.cluster_names)
        empty = np.zeros(source.n_obs, dtype=bool)
        with tqdm(total=source.n_obs, unit="cells", desc="sccsa-infer", disable=bar_disabled(progress),
                  leave=False) as bar:
            for start, stop, matrix in source.chunks(batch_size):
                totals = None if library is None else library[start:stop]
                part = predictor.predict_chunk(matrix, alignment, total_counts=totals, row_offset=start, source=str(data))
                result.put(start, part)
                empty[start:stop] = np.asarray(matrix.sum(axis=1)).ravel() == 0
                bar.update(stop - start)
        if empty.any():
            warnings.warn(
                f"{int(empty.sum())} cell(s) of {data} have zero counts; they are labelled but flagged "
                "sccsa_unassigned. Filter empty droplets (scanpy.pp.filter_cells(min_counts=1)) upstream.",
                SccsaWarning,
                stacklevel=2,
            )
        if outformat_suffix == ".h5ad":
            params = {"layer": layer, "gene_key": gene_key, "total_counts_key": total_counts_key,
                      "min_coverage": min_coverage}
            uns = {KEY_ADDED: run_record(bundle, alignment.coverage, params)}
            write_h5ad_result(source, out, result.obs_columns(), result.obsm(), uns, overwrite=overwrite)
        else:
            write_table(result.to_frame(source.obs_names, latent=with_latent), out, overwrite=overwrite)
    sizes = np.bincount(result.cluster, minlength=bundle.n_clusters)
    summary = AnnotationSummary(
        n_cells=len(result),
        coverage=alignment.coverage,
        cluster_sizes={str(k): int(n) for k, n in enumerate(sizes)},
        n_unassigned=int(result.unassigned.sum()),
        n_empty=int(empty.sum()),
    )
    if truth is not None:
        summary.metrics = evaluate(truth.to_numpy(), result.cluster)
        if result.label is not None:
            accuracy = comparable_label_accuracy(truth.to_numpy(), result.label, label_map, eval_key or "")
            if accuracy is not None:
                summary.metrics["label_accuracy"] = accuracy
    return summary


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
    ``_label``, ``_confidence``, ``_distance``, ``_unassigned``, ``obsm['X_{key_added}']`` and
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
    for key, values in result.obs_columns(key_added).items():
        adata.obs[key] = values
    adata.obsm.update(result.obsm(key_added))
    params = {"key_added": key_added, "layer": layer, "gene_key": gene_key, "total_counts_key": total_counts_key,
              "min_coverage": min_coverage}
    adata.uns[key_added] = run_record(predictor.bundle, result.gene_coverage or 0.0, params)
    log.info("annotated %d cells with %s as %r", adata.n_obs, predictor.bundle.source, key_added)
    return adata
