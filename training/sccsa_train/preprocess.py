"""Turn an AnnData into validated training matrices: counts, library sizes, log-normalised values.

Normalisation is Scanpy's own (``normalize_total`` to 1e4, then ``log1p``), computed with the
library size over *all* genes of each cell, exactly what the exported graph receives as
``total_counts``. Gene QC (expressed in at least ``min_cells`` cells) happens afterwards.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

from sccsa_infer.errors import InputDataError, SccsaWarning
from sccsa_infer.io import matrix_and_genes
from sccsa_infer.validate import CHECK_CHUNK, check_gene_names, check_library_sizes, check_values, obs_column

TARGET_SUM = 1e4
MIN_CELLS_PER_GENE = 3


@dataclass
class TrainingMatrix:
    """Validated training data. ``lognorm`` holds only the genes that pass QC."""

    counts: sp.csr_matrix  # cells × all genes, as given (float32)
    total_counts: np.ndarray  # per cell, over all genes
    lognorm: sp.csr_matrix  # cells × QC genes, log1p(normalised) (or the input for lognorm data)
    genes: list[str]  # QC genes, columns of ``lognorm``
    all_genes: list[str]
    cell_names: list[str]
    input_kind: str
    empty_cells: np.ndarray  # boolean mask of cells with zero counts (excluded from fitting)


def expression_matrix(adata: ad.AnnData, layer: str | None) -> sp.csr_matrix:
    """X or ``layers[layer]`` as float32 CSR. When it already is one, its arrays are shared, not
    copied (a second copy of a million cells' counts is gigabytes): read it, never modify it."""
    matrix, _ = matrix_and_genes(adata, layer=layer)
    return one_index_dtype(sp.csr_matrix(matrix, dtype=np.float32))


def one_index_dtype(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """``matrix`` with an int32 ``indptr`` when its ``indices`` are int32 (the data and indices
    shared, not copied). anndata often reads an int64 ``indptr`` beside int32 ``indices``, and
    SciPy then upcasts the indices to int64 for every row or column slice: a temporary copy of
    all of them (1.3 GiB at 10⁶ cells of PBMC counts) each time a block of rows is taken."""
    if matrix.indptr.dtype == matrix.indices.dtype or matrix.indices.dtype != np.int32 \
            or matrix.nnz > np.iinfo(np.int32).max:
        return matrix
    return sp.csr_matrix((matrix.data, matrix.indices, matrix.indptr.astype(np.int32)), shape=matrix.shape)


def normalize_log1p(counts: sp.csr_matrix, total_counts: np.ndarray | None = None,
                    target_sum: float = TARGET_SUM, columns: np.ndarray | None = None) -> sp.csr_matrix:
    """Scanpy's ``normalize_total(target_sum)`` + ``log1p`` (cells with zero counts stay zero), of
    the ``columns`` given (default: all), computed :func:`in_row_blocks`.

    Each cell's library size is its row sum, or ``total_counts`` when the matrix holds only a
    subset of the genes: the counts outside the subset then enter Scanpy's computation as one
    extra column, which is dropped afterwards, so the numbers stay exactly Scanpy's. Both depend
    on the cell's own row alone, so blocks of cells give the numbers one call would.
    """
    counts = sp.csr_matrix(counts, dtype=np.float32)
    totals = None if total_counts is None else np.asarray(total_counts, dtype=np.float64)

    def normalised(block: sp.csr_matrix, rows: slice) -> sp.csr_matrix:
        matrix = sp.csr_matrix(block, dtype=np.float32, copy=True)  # Scanpy works in place
        if totals is not None:
            rest = totals[rows] - np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
            matrix = sp.hstack([matrix, sp.csr_matrix(rest.astype(np.float32).reshape(-1, 1))], format="csr")
        tmp = ad.AnnData(X=matrix)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.pp.normalize_total(tmp, target_sum=target_sum)
            sc.pp.log1p(tmp)
        result = sp.csr_matrix(tmp.X, dtype=np.float32)
        return result[:, : counts.shape[1]] if totals is not None else result

    return in_row_blocks(counts, normalised, columns)


ROW_BLOCK = 65_536  # cells per block of in_row_blocks


def in_row_blocks(matrix: sp.csr_matrix, transform: Callable[[sp.csr_matrix, slice], sp.csr_matrix],
                  columns: np.ndarray | None = None) -> sp.csr_matrix:
    """``transform(block, rows)`` of each block of :data:`ROW_BLOCK` rows of ``matrix`` (a function
    of each row alone that stores no new nonzeros), restricted to ``columns``, written into one
    result allocated up front. Why: over all cells at once, Scanpy's normalisation and a column
    subset each held temporaries the size of the data (2.4 GiB at 10⁶ cells of 2,000 genes), and
    a list of blocks stacked at the end would hold the result twice."""
    matrix = one_index_dtype(matrix)  # else every block taken copies all the indices (one_index_dtype)
    n_cells = matrix.shape[0]
    data = np.empty(matrix.nnz, dtype=np.float32)
    indices = np.empty(matrix.nnz, dtype=matrix.indices.dtype)
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    filled = 0
    for start in range(0, n_cells, ROW_BLOCK):
        rows = slice(start, min(start + ROW_BLOCK, n_cells))
        block = transform(matrix[rows], rows)
        if columns is not None:
            block = block[:, columns]
        data[filled : filled + block.nnz] = block.data
        indices[filled : filled + block.nnz] = block.indices
        indptr[rows.start + 1 : rows.stop + 1] = block.indptr[1:] + filled
        filled += block.nnz
    width = matrix.shape[1] if columns is None else len(columns)
    return sp.csr_matrix((data[:filled], indices[:filled], indptr), shape=(n_cells, width))


def cells_expressing(counts: sp.csr_matrix) -> np.ndarray:
    """Per gene, the cells with a positive value (empty cells have none), a chunk of the stored
    values at a time rather than with a mask and a copy of all of them."""
    expressed = np.zeros(counts.shape[1], dtype=np.int64)
    for offset in range(0, counts.nnz, CHECK_CHUNK):
        chunk = slice(offset, offset + CHECK_CHUNK)
        expressed += np.bincount(counts.indices[chunk][counts.data[chunk] > 0], minlength=counts.shape[1])
    return expressed


def library_sizes(adata: ad.AnnData, counts: sp.csr_matrix, total_counts_key: str | None) -> np.ndarray:
    """Per-cell library size: row sums, or ``obs[total_counts_key]`` for gene-subset matrices."""
    sums = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    if total_counts_key is None:
        return sums
    column = obs_column(adata.obs, total_counts_key, "total_counts_key")
    return check_library_sizes(column.to_numpy(), sums, total_counts_key)


def prepare(
    adata: ad.AnnData,
    *,
    layer: str | None = None,
    input_kind: str = "counts",
    total_counts_key: str | None = None,
    min_cells: int = MIN_CELLS_PER_GENE,
) -> TrainingMatrix:
    """Validate the data, normalise + log1p (unless ``input_kind='lognorm'``) and QC genes."""
    genes = [str(g) for g in adata.var_names]
    check_gene_names(genes, source="the training data")
    if adata.n_obs == 0:
        raise InputDataError("The training data contain zero cells.")
    counts = expression_matrix(adata, layer)
    check_values(counts, input_kind, cell_names=list(map(str, adata.obs_names)), gene_names=genes,
                 source="the training data" + (f" (layer {layer!r})" if layer else " (X)"))
    totals = library_sizes(adata, counts, total_counts_key)
    empty = totals == 0
    if empty.all():
        raise InputDataError("Every cell of the training data has zero counts; nothing can be learned.")
    if empty.any():
        warnings.warn(
            f"{int(empty.sum())} cell(s) have zero counts; they are left out of training "
            "(filter them with scanpy.pp.filter_cells(adata, min_counts=1)).",
            SccsaWarning,
            stacklevel=2,
        )
    keep = cells_expressing(counts) >= min_cells
    if keep.sum() < 2:
        raise InputDataError(
            f"Only {int(keep.sum())} gene(s) are expressed in at least {min_cells} cells; the data are too "
            "sparse or too small to train on."
        )
    columns = None if keep.all() else np.flatnonzero(keep)
    lognorm = (in_row_blocks(counts, lambda block, rows: block, columns) if input_kind == "lognorm"
               else normalize_log1p(counts, totals if total_counts_key else None, columns=columns))
    return TrainingMatrix(
        counts=counts,
        total_counts=totals,
        lognorm=lognorm,
        genes=[g for g, k in zip(genes, keep) if k],
        all_genes=genes,
        cell_names=[str(c) for c in adata.obs_names],
        input_kind=input_kind,
        empty_cells=empty,
    )
