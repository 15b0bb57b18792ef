"""A sketch of the training cells for the steps whose cost grows faster than the number of cells.

K estimation, the consensus pseudo-labels (a dense scaled matrix, PCA, a kNN graph, ~15
clusterings), the F-test or HVG selection, the gene order (gene × gene correlations) and the
panel's means and standard deviations run on at most :data:`SKETCH_CELLS` cells drawn uniformly
at random (seeded); the network then trains on every cell. Below that size the sketch is all
cells and nothing changes. A uniform sketch keeps each type in proportion, so a type of fewer
than ~1 in 50,000 cells can go unseen by the gene selection.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

SKETCH_CELLS = 50_000


def sketch_rows(n_cells: int, seed: int, max_cells: int | None = None,
                purpose: str = "gene selection and pseudo-labels") -> np.ndarray | None:
    """Sorted positions of the sketched cells (``max_cells``, default :data:`SKETCH_CELLS`), or
    None when all ``n_cells`` fit in the sketch; ``purpose`` names what runs on it in the log."""
    max_cells = SKETCH_CELLS if max_cells is None else max_cells
    if n_cells <= max_cells:
        return None
    rows = np.sort(np.random.default_rng(seed).choice(n_cells, size=max_cells, replace=False))
    log.info("%s on a sketch of %d of %d cells", purpose, max_cells, n_cells)
    return rows


def on_sketch(values, rows: np.ndarray | None):
    """The sketched rows of ``values`` (array, sparse matrix or None); ``values`` itself without a sketch."""
    return values if rows is None or values is None else values[rows]


def to_all_cells(labels: np.ndarray, rows: np.ndarray | None, n_cells: int) -> np.ndarray:
    """Labels of the sketched cells placed among all ``n_cells`` (−1 for cells outside the sketch)."""
    if rows is None:
        return labels
    spread = np.full(n_cells, -1, dtype=np.int64)
    spread[rows] = labels
    return spread
