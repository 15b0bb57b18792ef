"""Per-cluster distance thresholds beyond which a cell is reported ``unassigned``.

A threshold is meant to leave at most ``level`` (0.5 %) of new cells of a trained cluster
unassigned. The empirical 99.5th percentile of a handful of training distances does not: it is
close to their maximum, and a new cell from the same cluster lies beyond the maximum of n of
them with probability 1/(n+1) (about 10 % of a 9-cell cluster's query cells were unassigned in
protocol T). So the threshold is the split-conformal order statistic, ⌈(n+1)(1−level)⌉-th of
n distances, which keeps that promise for exchangeable cells; a cluster with fewer than
1/level − 1 cells (199) borrows the same statistic from all training cells' distances, each
divided by its cluster's median; a reference with fewer than 199 cells in all cannot calibrate
it, and its thresholds are :data:`NO_THRESHOLD` (no cell unassigned for distance).
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

LEVEL = 0.005
NO_THRESHOLD = float(np.finfo(np.float32).max)  # finite (JSON, float32 readers), never exceeded


def conformal_quantile(values: np.ndarray, level: float = LEVEL) -> float:
    """The ⌈(n+1)(1−level)⌉-th smallest of ``values``, or :data:`NO_THRESHOLD` when n is too small
    for that order statistic to exist."""
    n = len(values)
    rank = math.ceil((n + 1) * (1.0 - level))
    if rank > n:
        return NO_THRESHOLD
    return float(np.partition(np.asarray(values, dtype=np.float64), rank - 1)[rank - 1])


def unassigned_thresholds(distance: np.ndarray, labels: np.ndarray, k: int, level: float = LEVEL) -> np.ndarray:
    """Threshold of each of the ``k`` clusters from the training cells' ``distance`` to their
    centroid (``labels``: their cluster): its own conformal quantile where it has enough cells,
    else its median distance times the conformal quantile of the pooled median-scaled distances."""
    distance = np.asarray(distance, dtype=np.float64)
    members = [distance[labels == c] for c in range(k)]
    overall = float(np.median(distance)) if len(distance) else 0.0
    scale = np.array([float(np.median(d)) if len(d) else overall for d in members])
    safe = np.where(scale > 0, scale, 1.0)
    pooled = conformal_quantile(distance / safe[labels], level)
    thresholds = np.array([conformal_quantile(d, level) for d in members])
    small = thresholds == NO_THRESHOLD
    if small.any():
        borrowed = NO_THRESHOLD if pooled == NO_THRESHOLD else np.minimum(safe * pooled, NO_THRESHOLD)
        thresholds = np.where(small, borrowed, thresholds)
    if pooled == NO_THRESHOLD:
        log.warning("%d training cells are too few to calibrate 'unassigned' at %.1f %% (at least %d are "
                    "needed), so no cell will be unassigned for its distance", len(distance),
                    100 * (1 - level), math.ceil(1 / level) - 1)
    return thresholds
