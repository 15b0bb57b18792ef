"""The one serving primitive: a block of cells in, a block of results out.

:class:`BlockLabeller` takes a block of cells (CSR or dense, the query's genes as columns) and
returns its :class:`~sccsa_infer.prediction.Prediction`: checks, gene alignment, library sizes, the
graph, and confidence / ``unassigned``. ``sccsa-infer predict``, :meth:`Predictor.predict`,
:func:`sccsa_infer.annotate`, the Dask engine and the training half's torch path all call it, so
they cannot label the same cells differently. It pickles (with its runner), for engines that
ship it to workers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from .align import GeneAlignment
from .errors import InputDataError
from .prediction import Prediction
from .validate import check_block, check_library_sizes

Runner = Callable[[np.ndarray, np.ndarray], Mapping[str, np.ndarray]]
"""Runs the serving graph: panel-ordered counts [N, G] float32 and library sizes [N] → raw outputs."""


@dataclass(frozen=True)
class BlockLabeller:
    """Labels blocks of cells of one query (its gene alignment) with one graph (its runner)."""

    run: Runner
    alignment: GeneAlignment
    input_kind: str
    thresholds: np.ndarray
    cluster_names: list[str] | None
    term_ids: list[str] | None = None  # each cluster's Cell Ontology id, from the bundle's record

    def __call__(self, block: Any, total_counts: Sequence[float] | np.ndarray | None = None, *,
                 row_offset: int = 0, source: str = "the query") -> Prediction:
        """Results of the cells of ``block`` (cells × query genes). ``total_counts``: each cell's
        library size over all genes, when the block holds only some (default: the row sums)."""
        block = sp.csr_matrix(block, dtype=np.float32) if sp.issparse(block) else np.asarray(block, dtype=np.float32)
        if block.ndim != 2:
            raise InputDataError(f"Expected a cells × genes matrix, got an array of shape {block.shape}.")
        totals = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
        panel = self.alignment.take_csr(block) if sp.issparse(block) else self.alignment.take(block)
        check_block(block, panel, totals, self.input_kind, panel_genes=self.alignment.panel, row_offset=row_offset,
                    source=source)
        panel = panel.toarray() if sp.issparse(panel) else panel
        if total_counts is not None:
            totals = check_library_sizes(total_counts, totals, "total_counts")
        raw = self.run(panel, totals)
        return Prediction.from_outputs(raw, self.thresholds, self.cluster_names, panel.sum(axis=1) == 0, self.term_ids)

    def label(self, matrix: Any, *, total_counts: Sequence[float] | np.ndarray | None = None, batch_size: int,
              source: str = "the query") -> Prediction:
        """Results of a whole in-memory matrix, labelled block by block of ``batch_size`` cells."""
        n = matrix.shape[0]
        if n == 0:
            raise InputDataError(f"{source} contains zero cells; nothing to label.")
        library = None if total_counts is None else np.asarray(total_counts)
        if library is not None and len(library) != n:
            raise InputDataError(f"total_counts has {len(library)} values for {n} cells.")
        parts = [self(matrix[start : start + batch_size],
                      None if library is None else library[start : start + batch_size],
                      row_offset=start, source=source)
                 for start in range(0, n, batch_size)]
        return Prediction.concat(parts, gene_coverage=self.alignment.coverage)
