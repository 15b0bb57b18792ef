"""K-means restarts on the latent and the choice among them (issue 13).

K-means keeps the restart with the lowest inertia. On a latent where one large cell type is
heterogeneous, splitting it while merging two small types can cost almost the same inertia as
separating the types: on Zeisel (seed 0 of the defaults' pretrained latent) the two partitions
were 0.26 % apart in inertia, ARI 0.27 against 0.93, and the wrong one won by a hair; their
silhouettes were 0.231 and 0.276 (benchmarks/results/kmeans_start.md). So every restart is
kept, and the restart chosen is the one with the highest silhouette among those whose inertia is
within a tolerance of the lowest (tolerance 0: plain K-means; no true labels are involved). Only those candidates are
scored: a silhouette costs more than a restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

log = logging.getLogger(__name__)


@dataclass
class Restart:
    """One K-means restart: its centres, labels, inertia and (once scored) silhouette."""

    centres: np.ndarray
    labels: np.ndarray
    inertia: float
    silhouette: float = float("nan")


def kmeans_restarts(values: np.ndarray, k: int, n_init: int, seed: int) -> list[Restart]:
    """``n_init`` K-means++ restarts of ``values`` at ``k``, each from its own seed drawn from ``seed``."""
    seeds = np.random.RandomState(seed).randint(np.iinfo(np.int32).max, size=n_init)
    restarts = []
    for restart_seed in seeds:
        kmeans = KMeans(k, n_init=1, random_state=int(restart_seed)).fit(values)
        restarts.append(Restart(kmeans.cluster_centers_, kmeans.labels_.astype(np.int64), float(kmeans.inertia_)))
    return restarts


def score_silhouettes(values: np.ndarray, restarts: list[Restart], seed: int, max_cells: int) -> None:
    """Set each restart's silhouette (on at most ``max_cells`` cells drawn with ``seed``, the same
    cells for every restart); restarts that found the same partition are scored once."""
    sample = None
    if len(values) > max_cells:
        sample = np.sort(np.random.default_rng(seed).choice(len(values), max_cells, replace=False))
    points = values if sample is None else values[sample]
    scored: dict[bytes, float] = {}
    for restart in restarts:
        labels = restart.labels if sample is None else restart.labels[sample]
        key = _canonical(labels).tobytes()
        if key not in scored:
            scored[key] = (float(silhouette_score(points, labels))
                           if len(np.unique(labels)) > 1 else -1.0)
        restart.silhouette = scored[key]


def near_lowest(restarts: list[Restart], tolerance: float) -> list[Restart]:
    """The restarts whose inertia is at most (1 + ``tolerance``) × the lowest, lowest first."""
    lowest = min(r.inertia for r in restarts)
    return sorted((r for r in restarts if r.inertia <= lowest * (1 + tolerance)), key=lambda r: r.inertia)


def choose_restart(candidates: list[Restart]) -> Restart:
    """The candidate with the highest silhouette; a tie goes to the first (the lower inertia)."""
    best = max(candidates, key=lambda r: (r.silhouette, -r.inertia))
    log.debug("K-means restart: inertia %.6g, silhouette %.4f, chosen of %d candidates",
              best.inertia, best.silhouette, len(candidates))
    return best


def _canonical(labels: np.ndarray) -> np.ndarray:
    """``labels`` renumbered by first appearance, so a permutation of the same partition compares equal."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int32)
