"""The neighbour graph Scanpy builds (``sc.pp.neighbors`` with its defaults: UMAP's fuzzy
connectivities over each cell's k nearest neighbours), computed with scikit-learn and numpy.

Why not call Scanpy: its connectivities come from umap-learn, whose numba functions are compiled
again in every new process. In development runs (one thread) that cost 17 CPU-seconds per
``sccsa-train`` process (importing pynndescent 9.8 s, the first ``fuzzy_simplicial_set`` 7.3 s),
more than everything else gene selection does on PBMC-Zheng4k, and most of the fit on small sets.
Here the neighbours are exact (scikit-learn, brute force: what Scanpy itself uses below 8,192
cells; above, Scanpy uses pynndescent's approximate ones) and UMAP's kernel is the same
computation vectorised over cells. ``tests/test_knn_graph.py`` checks the graph against Scanpy's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors

SMOOTH_K_TOLERANCE = 1e-5  # umap-learn's constants
MIN_K_DIST_SCALE = 1e-3
N_ITER = 64
FLOAT32_MAX = float(np.finfo(np.float32).max)


def neighbour_count(n_cells: int, n_neighbors: int) -> int:
    """Neighbours per cell, the cell itself included, capped at a fifth of the cells (at least 2)."""
    return max(2, min(n_neighbors, n_cells // 5))


def connectivity_graphs(points: np.ndarray, sizes: Sequence[int]) -> list[sp.csr_matrix]:
    """The graph of each neighbourhood size in ``sizes`` (capped by :func:`neighbour_count`), from
    one search for the largest: a cell's k nearest neighbours are the first k of its k_max nearest."""
    counts = [neighbour_count(len(points), size) for size in sizes]
    indices, distances = nearest_neighbours(points, max(counts))
    return [fuzzy_connectivities(indices[:, :k], distances[:, :k]) for k in counts]


def nearest_neighbours(points: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and Euclidean distances [N, n_neighbors] of each point's nearest neighbours (in
    float32, as Scanpy reads PCs), the point itself first (distance 0), then the others by distance."""
    points = np.asarray(points, dtype=np.float32)
    n = len(points)
    index = NearestNeighbors(n_neighbors=n_neighbors - 1, algorithm="brute").fit(points)
    distances, indices = index.kneighbors()  # without the query point itself
    own = np.arange(n)[:, None]
    return (np.hstack([own, indices]).astype(np.int64),
            np.hstack([np.zeros((n, 1)), distances]).astype(np.float32))


def smooth_knn_dist(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UMAP's per-cell scale σ and offset ρ (the nearest positive distance): σ is found by
    bisection so that Σ_j exp(−max(d_j − ρ, 0)/σ) over the neighbours j ≥ 1 equals log2(k).
    ``distances``: [N, k] float32, ascending along each row, the cell itself first."""
    n, k = distances.shape
    positive = distances > 0
    first = np.argmax(positive, axis=1)
    rho = np.where(positive.any(axis=1), distances[np.arange(n), first], 0).astype(np.float32)
    shifted = distances[:, 1:] - rho[:, None]  # float32, as umap-learn computes it
    target = np.log2(k)
    low, high, mid = np.zeros(n), np.full(n, FLOAT32_MAX), np.ones(n)
    active = np.arange(n)
    for _ in range(N_ITER):
        if not len(active):
            break
        part = shifted[active]
        psum = np.exp(-(np.maximum(part, 0) / mid[active, None])).sum(axis=1)  # 1 within ρ
        searching = np.abs(psum - target) >= SMOOTH_K_TOLERANCE
        active, psum = active[searching], psum[searching]
        above = psum > target
        high[active[above]] = mid[active[above]]
        low[active[~above]] = mid[active[~above]]
        unbounded = high[active] >= FLOAT32_MAX
        mid[active] = np.where(unbounded, mid[active] * 2, (low[active] + high[active]) / 2)
    sigma = mid.astype(np.float32)
    floor = MIN_K_DIST_SCALE * np.where(rho > 0, distances.mean(axis=1), distances.mean())
    return np.maximum(sigma, floor).astype(np.float32), rho


def fuzzy_connectivities(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """UMAP's fuzzy union of the cells' neighbourhoods: w_ij = exp(−(d_ij − ρ_i)/σ_i) (1 within
    ρ_i, 0 for the cell itself), then W + Wᵀ − W∘Wᵀ; float32 CSR, symmetric."""
    n, k = indices.shape
    sigma, rho = smooth_knn_dist(distances)
    excess = distances - rho[:, None]
    scale = np.where(sigma > 0, sigma, np.float32(1))[:, None]
    weights = np.where(sigma[:, None] > 0, np.exp(-(np.maximum(excess, 0) / scale)), 1).astype(np.float32)
    weights[indices == np.arange(n)[:, None]] = 0
    graph = sp.coo_matrix((weights.ravel(), (np.repeat(np.arange(n), k), indices.ravel())), shape=(n, n))
    graph.eliminate_zeros()
    transpose = graph.transpose()
    union = (graph + transpose - graph.multiply(transpose)).tocsr()
    union.eliminate_zeros()
    return union

