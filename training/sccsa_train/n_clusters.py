"""Estimate the number of clusters K when the user asks for ``auto``.

The estimate is the eigengap of the normalised Laplacian of Scanpy's kNN graph: a graph with K
well-separated groups has K eigenvalues near zero and then a jump, so K is where the largest jump
among the first ``MAX_K + 1`` eigenvalues lies. One graph's eigengap moves with the number of
neighbours, so the estimate is the median over graphs of ``N_NEIGHBORS`` neighbours on the first
``N_PCS`` principal components of Scanpy's standard PCA (benchmarks/results/k_estimate.md shows
how the rule was chosen on the tuning half of the datasets and how it does on the other half).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

from .knn_graph import connectivity_graphs
from .pseudolabels import standard_pcs

log = logging.getLogger(__name__)

N_NEIGHBORS = (10, 15, 30, 50)
N_PCS = 20
MAX_K = 20
DENSE_BELOW = 1500  # cells: below this a dense eigendecomposition is faster and always converges
METHOD = (f"eigengap of the normalised kNN-graph Laplacian, K <= {MAX_K}, median over {len(N_NEIGHBORS)} graphs "
          f"({'/'.join(map(str, N_NEIGHBORS))} neighbours on {N_PCS} PCs)")


def laplacian_spectrum(connectivities: sp.spmatrix, n_values: int) -> np.ndarray:
    """The ``n_values`` smallest eigenvalues of the normalised Laplacian I − D^-1/2 W D^-1/2,
    ascending; computed as the largest of the normalised adjacency, where Lanczos converges fast."""
    graph = sp.csr_matrix(connectivities, dtype=np.float64)
    degree = np.asarray(graph.sum(axis=1)).ravel()
    scale = sp.diags(1.0 / np.sqrt(np.maximum(degree, np.finfo(np.float64).tiny)))
    adjacency = scale @ graph @ scale
    n_values = min(n_values, graph.shape[0])
    if graph.shape[0] < DENSE_BELOW or n_values >= graph.shape[0] - 1:
        top = np.linalg.eigvalsh(adjacency.toarray())[::-1][:n_values]
    else:
        start = np.ones(graph.shape[0])  # a fixed start vector: the same estimate on every run
        top = np.sort(eigsh(adjacency, k=n_values, which="LA", tol=1e-6, v0=start)[0])[::-1]
    return 1.0 - top


def eigengap(eigenvalues: np.ndarray, max_k: int = MAX_K) -> int:
    """The K in 2..``max_k`` after which the ascending ``eigenvalues`` jump most."""
    values = np.asarray(eigenvalues)[: max_k + 1]
    if len(values) < 3:
        return 2
    return int(np.argmax(np.diff(values)[1:]) + 2)


def graph_spectra(lognorm: sp.spmatrix | np.ndarray, *, seed: int = 0, n_values: int = MAX_K + 1,
                  batches: np.ndarray | None = None, pcs: np.ndarray | None = None) -> list[np.ndarray]:
    """The Laplacian spectrum of each of the ``N_NEIGHBORS`` graphs on the standard PCA (``pcs``
    when given; Harmony-corrected by ``batches`` when given: measured for the K page, not used by
    ``estimate``). ``pcs`` and ``batches`` exclude each other: given PCs are used as they are."""
    if pcs is not None and batches is not None:
        raise ValueError("graph_spectra takes batches (to correct the PCA it computes) or pcs, not both")
    pcs = (standard_pcs(lognorm, seed=seed, batches=batches) if pcs is None else pcs)[:, :N_PCS]
    return [laplacian_spectrum(graph, n_values) for graph in connectivity_graphs(pcs, N_NEIGHBORS)]


def median_eigengap(spectra: list[np.ndarray], max_k: int = MAX_K) -> int:
    """The median of the graphs' eigengaps, rounded (halves to even); at least 2."""
    return max(2, int(np.round(np.median([eigengap(values, max_k) for values in spectra]))))


def estimate(lognorm: sp.spmatrix | np.ndarray, *, seed: int = 0, pcs: np.ndarray | None = None) -> int:
    """K for log-normalised data (cells × genes); between 2 and ``MAX_K``. ``pcs``:
    :func:`standard_pcs` of ``lognorm`` when the caller has them already.

    Batches are not corrected for: on the two multi-donor Baron sets the Harmony-corrected graph
    estimated K no better (benchmarks/results/k_estimate.md).
    """
    spectra = graph_spectra(lognorm, seed=seed, pcs=pcs)
    k = median_eigengap(spectra)
    log.info("estimated K = %d (%s; per graph: %s)", k, METHOD,
             ", ".join(str(eigengap(values)) for values in spectra))
    return k
