"""Pseudo-labels for the F-test without ground truth: a consensus of K-means and Leiden runs.

The authors' pipeline fits the F-test on FEAST consensus-clustering labels. This module builds
the equivalent from scikit-learn/Scanpy parts: Scanpy's standard embedding (highly variable
genes when there are many genes, scaling, PCA, neighbour graph), an ensemble of K-means runs on
different numbers of principal components and of Leiden runs at the resolution that yields K
clusters, combined by K-means on the ensemble's one-hot membership matrix (which minimises the
total disagreement with the ensemble, like a co-association consensus, in O(cells) memory).
With a batch key the embedding is Harmony-corrected first and the ensemble's most agreeing member
is taken instead (see :func:`consensus_labels`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from .knn_graph import connectivity_graphs, neighbour_count

log = logging.getLogger(__name__)

HVG_ABOVE = 3000  # select highly variable genes only when there are more genes than this
N_HVG = 2000
N_PCS = 50
KMEANS_PCS = (10, 20, 30, 50)
RUNS_PER_SETTING = 3


def harmony_corrected(pcs: np.ndarray, batches: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Harmony (harmonypy, as ``scanpy.external.pp.harmony_integrate`` runs it) on principal
    components: the same coordinates with each batch's shift removed within soft clusters."""
    import harmonypy

    frame = pd.DataFrame({"batch": pd.Categorical(np.asarray(batches).astype(str))})
    result = harmonypy.run_harmony(np.asarray(pcs, dtype=np.float64), frame, "batch", random_state=seed, verbose=False)
    corrected = np.asarray(result.Z_corr)
    # harmonypy < 2 returned components × cells; Scanpy's wrapper still transposes for that layout
    return corrected if corrected.shape[0] == len(frame) else corrected.T


def standard_pcs(lognorm: sp.spmatrix | np.ndarray, *, seed: int = 0, batches: np.ndarray | None = None) -> np.ndarray:
    """Scanpy's standard principal components of log-normalised data: HVGs (if many genes), scale, PCA.

    With ``batches`` (one batch name per cell) the components are Harmony-corrected, so that
    what is built on them follows cell types rather than donors.
    """
    adata = ad.AnnData(X=sp.csr_matrix(lognorm, dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if adata.n_vars > HVG_ABOVE:
            sc.pp.highly_variable_genes(adata, n_top_genes=N_HVG, subset=True)
        sc.pp.scale(adata, max_value=10)
        n_comps = max(2, min(N_PCS, adata.n_obs - 1, adata.n_vars - 1))
        sc.tl.pca(adata, n_comps=n_comps, random_state=seed)
    pcs = adata.obsm["X_pca"]
    return harmony_corrected(pcs, batches, seed=seed) if batches is not None else pcs


def neighbour_graph(pcs: np.ndarray, *, n_neighbors: int = 15) -> ad.AnnData:
    """Scanpy's kNN graph on ``pcs`` (``n_neighbors`` capped at a fifth of the cells), built by
    :mod:`sccsa_train.knn_graph` (exact neighbours, no numba compilation): an AnnData with
    ``obsm['X_pca']`` and the graph where ``sc.pp.neighbors`` puts it, ready for :func:`leiden`."""
    points = np.asarray(pcs, dtype=np.float32)
    adata = ad.AnnData(obsm={"X_pca": points}, obs=pd.DataFrame(index=pd.RangeIndex(len(pcs)).astype(str)))
    adata.obsp["connectivities"] = connectivity_graphs(points, [n_neighbors])[0]
    params = {"n_neighbors": neighbour_count(len(pcs), n_neighbors), "method": "umap", "metric": "euclidean",
              "use_rep": "X_pca"}
    adata.uns["neighbors"] = {"connectivities_key": "connectivities", "params": params}
    return adata


def leiden(adata: ad.AnnData, resolution: float, seed: int = 0) -> np.ndarray:
    """Leiden clustering (igraph flavour) of the neighbour graph of ``adata``; integer labels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.leiden(adata, resolution=resolution, flavor="igraph", n_iterations=2, random_state=seed, key_added="_sccsa_leiden")
    labels = adata.obs.pop("_sccsa_leiden")
    return labels.cat.codes.to_numpy().astype(np.int64)


def leiden_resolution_for_k(adata: ad.AnnData, k: int, seed: int = 0, max_steps: int = 20) -> tuple[float, np.ndarray]:
    """Bisect Leiden's resolution until it yields ``k`` clusters (or the closest count found)."""
    low, high = 0.0, 5.0
    best: tuple[int, float, np.ndarray] | None = None
    for _ in range(max_steps):
        resolution = (low + high) / 2
        labels = leiden(adata, resolution, seed)
        found = int(labels.max()) + 1
        if best is None or abs(found - k) < best[0]:
            best = (abs(found - k), resolution, labels)
        if found == k:
            break
        if found < k:
            low = resolution
        else:
            high = resolution
    assert best is not None
    return best[1], best[2]


@dataclass
class Consensus:
    """Consensus pseudo-labels and the ensemble they came from (its last :data:`RUNS_PER_SETTING`
    members are the Leiden runs at ``leiden_resolution``)."""

    labels: np.ndarray
    ensemble: list[np.ndarray]
    leiden_resolution: float

    @property
    def leiden_clusters(self) -> int:
        """Clusters of the last Leiden member (the members differ only in seed): K unless the
        resolution search found none that gives K."""
        return int(self.ensemble[-1].max()) + 1

    def summary(self) -> dict[str, Any]:
        """What the fit's report records about the ensemble, so a run whose Leiden members missed
        K (the pseudo-labels then rest on the K-means members) can be told from one that did not."""
        return {"kmeans_members": len(self.ensemble) - RUNS_PER_SETTING, "leiden_members": RUNS_PER_SETTING,
                "leiden_resolution": float(self.leiden_resolution), "leiden_clusters": self.leiden_clusters}


def membership_consensus(ensemble: list[np.ndarray], k: int, seed: int = 0) -> np.ndarray:
    """K-means with ``k`` groups on the ensemble's one-hot membership matrix."""
    membership = sp.hstack([sp.csr_matrix(np.eye(int(r.max()) + 1, dtype=np.float32)[r]) for r in ensemble]).tocsr()
    return KMeans(k, n_init=20, random_state=seed).fit_predict(membership)


def most_agreeing(ensemble: list[np.ndarray], k: int) -> np.ndarray:
    """The member with ``k`` groups whose summed ARI to all members is largest (the ensemble's
    medoid partition, "best of K"): one real clustering of the data, so a group is never split
    because the members disagree about its border."""
    candidates = [i for i, labels in enumerate(ensemble) if len(np.unique(labels)) == k]
    agreement = [sum(adjusted_rand_score(ensemble[i], other) for other in ensemble) for i in candidates]
    return np.unique(ensemble[candidates[int(np.argmax(agreement))]], return_inverse=True)[1]


def consensus_labels(lognorm: sp.spmatrix | np.ndarray, k: int, *, seed: int = 0,
                     batches: np.ndarray | None = None, pcs: np.ndarray | None = None) -> Consensus:
    """Pseudo-labels with ``k`` groups from a K-means + Leiden ensemble (no ground truth used).

    Without ``batches``: K-means on the ensemble's membership matrix (today's default). With
    ``batches`` (``batch_key``): the ensemble runs on the Harmony-corrected embedding and the
    member that agrees most with the others is chosen (:func:`most_agreeing`), since the
    membership K-means can merge and split types that every member keeps apart
    (benchmarks/results/pseudolabels.md); training then starts its centroids from these labels.
    ``pcs``: :func:`standard_pcs` of ``lognorm`` (uncorrected) when the caller has them already.
    """
    pcs = standard_pcs(lognorm, seed=seed) if pcs is None else pcs
    embedding = neighbour_graph(pcs if batches is None else harmony_corrected(pcs, batches, seed=seed))
    pcs = embedding.obsm["X_pca"]
    ensemble = []
    for n_pcs in KMEANS_PCS:
        n_pcs = min(n_pcs, pcs.shape[1])
        for run in range(RUNS_PER_SETTING):
            km = KMeans(k, n_init=10, random_state=seed * 1000 + n_pcs * 10 + run)
            ensemble.append(km.fit_predict(pcs[:, :n_pcs]))
    resolution, _ = leiden_resolution_for_k(embedding, k, seed)
    ensemble.extend(leiden(embedding, resolution, seed * 1000 + run) for run in range(RUNS_PER_SETTING))
    if batches is not None:
        labels = most_agreeing(ensemble, k)
        how = "the most agreeing member of"
    else:
        labels = membership_consensus(ensemble, k, seed)
        how = "K-means on the memberships of"
    log.info("pseudo-labels: %s %d K-means and %d Leiden runs (resolution %.3f)%s, %d groups", how,
             len(ensemble) - RUNS_PER_SETTING, RUNS_PER_SETTING, resolution,
             " on the Harmony-corrected embedding" if batches is not None else "", k)
    consensus = Consensus(labels=labels.astype(np.int64), ensemble=ensemble, leiden_resolution=resolution)
    if consensus.leiden_clusters != k:
        log.warning("pseudo-labels: Leiden found no resolution giving K=%d clusters on the neighbour graph (closest: "
                    "%d at resolution %.3g); the pseudo-labels rest mostly on the K-means members. A graph that "
                    "falls apart into more than K pieces (e.g. near-duplicate cells) does this", k,
                    consensus.leiden_clusters, resolution)
    return consensus
