"""Consensus pseudo-labels and the K estimate."""

import numpy as np
from sklearn.metrics import adjusted_rand_score

from conftest import real_dataset, synthetic_counts
from sccsa_train import n_clusters
from sccsa_train.preprocess import prepare
from sccsa_train.pseudolabels import clustering_embedding, consensus_labels, leiden_resolution_for_k


def test_consensus_recovers_separable_groups():
    adata = synthetic_counts(n_cells=300, n_genes=60, n_clusters=3)
    data = prepare(adata)
    consensus = consensus_labels(data.lognorm, 3, seed=0)
    assert adjusted_rand_score(adata.obs["cell_type"], consensus.labels) > 0.95
    assert len(consensus.ensemble) == 15


def test_leiden_resolution_search_hits_k():
    adata = synthetic_counts(n_cells=300, n_genes=60, n_clusters=3)
    embedding = clustering_embedding(prepare(adata).lognorm)
    _, labels = leiden_resolution_for_k(embedding, 3)
    assert labels.max() + 1 == 3


def test_consensus_pseudo_labels_on_real_pbmc_beat_single_kmeans_level():
    """On PBMC-Zheng4k the consensus agrees with the (unseen) cell types at the level of the
    best single clustering (ARI > 0.7); the labels are used only to evaluate."""
    adata = real_dataset("pbmc_zheng4k_top2000")
    consensus = consensus_labels(prepare(adata).lognorm, 8, seed=0)
    assert adjusted_rand_score(adata.obs["cell_type"], consensus.labels) > 0.7


def test_k_estimate_on_separable_groups():
    adata = synthetic_counts(n_cells=300, n_genes=60, n_clusters=3)
    k = n_clusters.estimate(prepare(adata).lognorm)
    assert 2 <= k <= 6
    assert isinstance(k, int) and not isinstance(k, np.integer)
