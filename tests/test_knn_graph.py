"""sccsa's neighbour graph is Scanpy's (``sc.pp.neighbors``), built without umap-learn's numba."""

import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from conftest import real_dataset, real_input_kind
from sccsa_train.knn_graph import connectivity_graphs, fuzzy_connectivities, nearest_neighbours, neighbour_count
from sccsa_train.preprocess import prepare
from sccsa_train.pseudolabels import leiden, neighbour_graph, standard_pcs


def scanpy_graph(pcs: np.ndarray) -> ad.AnnData:
    adata = ad.AnnData(obsm={"X_pca": pcs.astype(np.float32)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.neighbors(adata, n_neighbors=neighbour_count(len(pcs), 15), use_rep="X_pca", random_state=0)
    return adata


def assert_same_graph(ours: ad.AnnData, scanpy: ad.AnnData) -> None:
    mine, theirs = ours.obsp["connectivities"], scanpy.obsp["connectivities"]
    assert ((mine != 0) != (theirs != 0)).nnz == 0  # the same edges
    assert abs(mine - theirs).max() < 1e-5
    assert (abs(mine - mine.T)).max() == 0  # symmetric, as a fuzzy union is


def test_graph_equals_scanpys_on_gaussian_groups():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(4, 20))
    points = np.repeat(centres, 150, axis=0) + rng.normal(size=(600, 20))
    ours = neighbour_graph(points)
    scanpy = scanpy_graph(points)
    assert_same_graph(ours, scanpy)
    assert np.array_equal(leiden(ours, 1.0), leiden(scanpy, 1.0))


def test_graph_equals_scanpys_on_real_cells():
    """Klein (1,000 mouse ES cells): the same graph on the standard PCs, hence the same Leiden
    clusters, so pseudo-labels and the genes they select do not change."""
    pcs = standard_pcs(prepare(real_dataset("klein_subset_tmscc")).lognorm, seed=0)
    ours, scanpy = neighbour_graph(pcs), scanpy_graph(pcs)
    assert_same_graph(ours, scanpy)
    assert np.array_equal(leiden(ours, 1.0), leiden(scanpy, 1.0))


SHARED_BELOW_8192 = ["baron_human_pancreas_subset_came", "camp_fetal_cortex", "goolam", "human_kidney_top2000",
                     "klein_subset_tmscc", "mouse_bladder_2100", "mouse_bladder_top2000", "pbmc_zheng4k_top2000",
                     "pollen_simlr_log", "worm_neuron", "yan_embryo_rpkm", "zeisel_subset_descend"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARED_BELOW_8192)
def test_graph_equals_scanpys_on_every_shared_set_below_8192_cells(name):
    """Where Scanpy's neighbours are exact too (below 8,192 cells), the pseudo-labels' graph and its
    Leiden clusters are Scanpy's, so the benchmark records of these sets stand as they were."""
    adata = real_dataset(name)
    pcs = standard_pcs(prepare(adata, input_kind=real_input_kind(name)).lognorm, seed=0)
    ours, scanpy = neighbour_graph(pcs), scanpy_graph(pcs)
    assert_same_graph(ours, scanpy)
    assert np.array_equal(leiden(ours, 1.0), leiden(scanpy, 1.0))


def test_identical_cells_are_fully_connected_and_never_to_themselves():
    """Copies of a cell lie at distance 0: within ρ, so weight 1 to each other, 0 to itself."""
    points = np.repeat(np.eye(3, 5) * 10.0, 4, axis=0)
    indices, distances = nearest_neighbours(points.astype(np.float32), 4)
    assert (indices[:, 0] == np.arange(12)).all() and (distances == 0).all()
    graph = fuzzy_connectivities(indices, distances).toarray()
    assert (np.diag(graph) == 0).all()
    assert graph[0, 1] == pytest.approx(1.0) and graph[0, 4] == 0


def test_graphs_of_several_sizes_come_from_one_search():
    """The K estimate's 4 graphs: each equals the graph built from its own search."""
    points = np.random.default_rng(1).normal(size=(300, 8))
    for size, graph in zip((5, 10, 30), connectivity_graphs(points, (5, 10, 30))):
        alone = fuzzy_connectivities(*nearest_neighbours(points, size))
        assert abs(graph - alone).max() == 0
