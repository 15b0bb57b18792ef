"""Consensus pseudo-labels and the K estimate."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from conftest import real_dataset, real_input_kind, synthetic_counts
from sccsa_train import n_clusters
from sccsa_train.preprocess import prepare
from sccsa_train.pseudolabels import consensus_labels, leiden_resolution_for_k, neighbour_graph, standard_pcs


def test_consensus_recovers_separable_groups():
    adata = synthetic_counts(n_cells=300, n_genes=60, n_clusters=3)
    data = prepare(adata)
    consensus = consensus_labels(data.lognorm, 3, seed=0)
    assert adjusted_rand_score(adata.obs["cell_type"], consensus.labels) > 0.95
    assert len(consensus.ensemble) == 15
    assert consensus.summary() == {"kmeans_members": 12, "leiden_members": 3,
                                   "leiden_resolution": consensus.leiden_resolution, "leiden_clusters": 3}


def test_consensus_says_when_leiden_cannot_reach_k(caplog):
    """Groups of identical cells make the kNN graph fall apart into more pieces than K: no
    resolution gives K clusters, and the fit says so instead of passing over it (the
    resampled cells of the speed page's million-cell rows did this)."""
    rng = np.random.default_rng(0)
    profiles = rng.poisson(rng.gamma(2.0, 2.0, size=(30, 60))).astype(np.float32)
    cells = sp.csr_matrix(np.log1p(np.repeat(profiles, 10, axis=0)))
    with caplog.at_level("WARNING", logger="sccsa_train.pseudolabels"):
        consensus = consensus_labels(cells, 3, seed=0)
    assert consensus.leiden_clusters > 3 and len(np.unique(consensus.labels)) == 3
    assert "no resolution giving K=3" in caplog.text and f"closest: {consensus.leiden_clusters}" in caplog.text


def test_leiden_resolution_search_hits_k():
    adata = synthetic_counts(n_cells=300, n_genes=60, n_clusters=3)
    embedding = neighbour_graph(standard_pcs(prepare(adata).lognorm))
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
    assert k == 3
    assert isinstance(k, int) and not isinstance(k, np.integer)


def test_graph_spectra_refuses_pcs_with_batches_it_could_not_correct():
    pcs = np.zeros((20, 5))
    with pytest.raises(ValueError, match="batches .* or pcs, not both"):
        n_clusters.graph_spectra(np.zeros((20, 8)), pcs=pcs, batches=np.array(["a", "b"] * 10))


def test_eigengap_is_the_largest_jump_after_two():
    assert n_clusters.eigengap(np.array([0, 0, 0, 0.9, 0.95, 1.0])) == 3
    assert n_clusters.eigengap(np.array([0, 0.8, 0.85, 0.9, 0.99])) == 4  # the jump after one group is not a K
    values = np.r_[np.zeros(5), 0.2, 0.2, 0.2, np.ones(30)]
    assert n_clusters.eigengap(values) == 8 and n_clusters.eigengap(values, max_k=6) == 5  # the cap bounds K


def _blocks(n_blocks: int, size: int, seed: int = 0) -> sp.csr_matrix:
    """A symmetric graph of ``n_blocks`` random communities (about 20 edges per node), each joined
    to the next by one weak edge."""
    rng = np.random.default_rng(seed)
    n = n_blocks * size
    starts = np.arange(n_blocks) * size
    rows = np.repeat(np.arange(n), 10)
    cols = (rows // size) * size + rng.integers(0, size, len(rows))
    weights = np.ones(len(rows))
    rows, cols = np.r_[rows, starts], np.r_[cols, (starts + size) % n]
    graph = sp.csr_matrix((np.r_[weights, np.full(n_blocks, 0.01)], (rows, cols)), shape=(n, n))
    return (graph + graph.T).tocsr()


@pytest.mark.parametrize("size", [100, 700])  # the dense path (< DENSE_BELOW cells) and the Lanczos path
def test_laplacian_spectrum_counts_communities(size):
    spectrum = n_clusters.laplacian_spectrum(_blocks(4, size), 8)
    assert spectrum.shape == (8,) and np.all(np.diff(spectrum) >= -1e-9)
    assert spectrum[3] < 0.01 < 0.3 < spectrum[4]
    assert n_clusters.eigengap(spectrum) == 4


def test_both_spectrum_paths_agree():
    graph = _blocks(3, 600, seed=1)
    lanczos = n_clusters.laplacian_spectrum(graph, 6)
    scale = sp.diags(1 / np.sqrt(np.asarray(graph.sum(axis=1)).ravel()))
    dense = 1 - np.linalg.eigvalsh((scale @ graph @ scale).toarray())[::-1][:6]
    np.testing.assert_allclose(lanczos, dense, atol=1e-6)


@pytest.mark.parametrize(("name", "true_k"), [("goolam", 5), ("yan_embryo_rpkm", 7)])
def test_k_estimate_on_small_real_datasets(name, true_k):
    """Two of the sets ``-k auto`` gets exactly (benchmarks/results/k_estimate.md): the rule
    found there still holds; the labels are only counted."""
    adata = real_dataset(name)
    assert n_clusters.estimate(prepare(adata, input_kind=real_input_kind(name)).lognorm, seed=0) == true_k
