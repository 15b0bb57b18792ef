"""Map a query's genes onto a bundle's gene panel (by name, case- and version-insensitive)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .defaults import DEFAULT_MIN_COVERAGE
from .errors import InputDataError, SccsaWarning, shorten
from .validate import check_gene_names, normalise_gene_name



@dataclass(frozen=True)
class GeneAlignment:
    """Where each panel gene sits among the query's columns (-1 where it is missing)."""

    panel: tuple[str, ...]
    source_index: np.ndarray
    n_query_genes: int

    @property
    def n_found(self) -> int:
        return int((self.source_index >= 0).sum())

    @property
    def coverage(self) -> float:
        """Fraction of the panel's genes present in the query."""
        return self.n_found / len(self.panel)

    @property
    def missing_genes(self) -> list[str]:
        return [g for g, i in zip(self.panel, self.source_index) if i < 0]

    def _check_columns(self, matrix: np.ndarray | sp.spmatrix) -> None:
        if matrix.shape[1] != self.n_query_genes:
            raise InputDataError(
                f"Expected {self.n_query_genes} gene columns, got {matrix.shape[1]}; "
                "the matrix does not match the gene names it came with."
            )

    def take(self, matrix: np.ndarray | sp.spmatrix) -> np.ndarray:
        """The panel's columns of ``matrix`` (cells × query genes) as dense float32, zero-filled."""
        if sp.issparse(matrix):
            return self.take_csr(matrix).toarray()
        self._check_columns(matrix)
        present = np.flatnonzero(self.source_index >= 0)
        out = np.zeros((matrix.shape[0], len(self.panel)), dtype=np.float32)
        out[:, present] = np.asarray(matrix)[:, self.source_index[present]]
        return out

    def take_csr(self, matrix: sp.spmatrix) -> sp.csr_matrix:
        """The panel's columns of a sparse ``matrix`` as float32 CSR, still sparse (checks then
        scan only the stored values, and training keeps large data sparse)."""
        self._check_columns(matrix)
        present = np.flatnonzero(self.source_index >= 0)
        sub = sp.csr_matrix(matrix, dtype=np.float32)[:, self.source_index[present]]  # present panel genes, in order
        if len(present) < len(self.panel):  # move them to their panel positions; missing ones stay zero
            sub = sp.csr_matrix((sub.data, present[sub.indices], sub.indptr), shape=(sub.shape[0], len(self.panel)))
        return sub


def align_genes(
    query_genes: Sequence[str],
    panel: Sequence[str],
    *,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    source: str = "the query",
) -> GeneAlignment:
    """Match ``query_genes`` to ``panel`` by :func:`normalise_gene_name`.

    Warns (:class:`SccsaWarning`) with the number of panel genes that are missing and will be
    zero-filled; raises :class:`InputDataError` when fewer than ``min_coverage`` are present.
    """
    query_genes = [str(g) for g in query_genes]
    check_gene_names(query_genes, source=source, relevant={normalise_gene_name(g) for g in panel})
    position = {normalise_gene_name(g): i for i, g in enumerate(query_genes)}
    index = np.array([position.get(normalise_gene_name(g), -1) for g in panel], dtype=np.int64)
    alignment = GeneAlignment(panel=tuple(panel), source_index=index, n_query_genes=len(query_genes))
    if alignment.coverage < min_coverage:
        example = ", ".join(shorten(g) for g in query_genes[:3])
        wanted = ", ".join(shorten(g) for g in list(panel)[:3])
        raise InputDataError(
            f"Only {alignment.n_found} of the model's {len(panel)} genes ({alignment.coverage:.0%}) were "
            f"found in {source}, below the required {min_coverage:.0%}. The query's genes look like "
            f"'{example}', the model's like '{wanted}'. If the ids are in a var column, name it with "
            "--gene-key (e.g. gene_ids or gene_symbols); otherwise this model was trained on another "
            "gene panel or species. Lower --min-coverage only if you accept degraded labels."
        )
    if alignment.n_found < len(panel):
        missing = alignment.missing_genes
        shown = ", ".join(shorten(g) for g in missing[:5]) + (" ..." if len(missing) > 5 else "")
        warnings.warn(
            f"{len(missing)} of the model's {len(panel)} genes ({1 - alignment.coverage:.1%}) are missing "
            f"from {source} and are treated as zero counts: {shown}",
            SccsaWarning,
            stacklevel=2,
        )
    return alignment
