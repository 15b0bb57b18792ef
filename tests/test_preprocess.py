"""Training preprocessing: Scanpy-identical normalisation, library sizes, QC, validation."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch

from conftest import real_dataset, synthetic_counts
from sccsa_infer.errors import InputDataError
from sccsa_train.genes import GenePanel
from sccsa_train.graph import ServingGraph
from sccsa_train.model import SCCSANet
from sccsa_train.preprocess import normalize_log1p, prepare


def _scanpy(adata):
    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    return a.X.toarray()


def test_normalisation_is_scanpys_on_real_counts():
    adata = real_dataset("pbmc_zheng4k_top2000")
    ours = normalize_log1p(adata.X).toarray()
    np.testing.assert_array_equal(ours, _scanpy(adata))


def test_serving_graph_normalisation_matches_scanpy_on_real_counts():
    """The ONNX graph's first steps (normalise → log1p → standardise) equal Scanpy's numbers."""
    adata = real_dataset("pbmc_zheng4k_top2000")
    n_genes = 50
    expected = _scanpy(adata)[:, :n_genes]
    panel = GenePanel(genes=list(adata.var_names[:n_genes]), mean=np.zeros(n_genes), std=np.ones(n_genes),
                      scores=np.zeros(n_genes), clip=1e9)
    graph = ServingGraph(SCCSANet(n_genes, 2, latent_dim=2, channels=(2, 2, 2)), panel, "counts")
    counts = torch.from_numpy(adata.X[:, :n_genes].toarray())
    totals = torch.from_numpy(np.asarray(adata.X.sum(axis=1), dtype=np.float32))
    with torch.no_grad():
        got = graph.standardised(counts, totals).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_library_sizes_from_obs_give_full_gene_numbers():
    full = synthetic_counts(n_cells=50, n_genes=30)
    subset = full[:, :20].copy()
    subset.obs["n_counts"] = np.asarray(full.X.sum(axis=1)).ravel()
    expected = _scanpy(full)[:, :20]
    got = normalize_log1p(subset.X, subset.obs["n_counts"].to_numpy()).toarray()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    data = prepare(subset, total_counts_key="n_counts")
    np.testing.assert_array_equal(data.total_counts, subset.obs["n_counts"].to_numpy())


def test_qc_drops_rare_genes_and_empty_cells_are_flagged():
    adata = synthetic_counts(n_cells=40, n_genes=10)
    x = adata.X.toarray()
    x[:, 0] = 0
    x[:2, 0] = 1  # expressed in 2 cells < 3
    x[5] = 0  # an empty cell
    adata.X = sp.csr_matrix(x)
    with pytest.warns(UserWarning, match="1 cell"):
        data = prepare(adata)
    assert "G0" not in data.genes and len(data.genes) == 9
    assert data.empty_cells.sum() == 1 and data.empty_cells[5]


def test_input_kind_is_never_guessed():
    adata = synthetic_counts(n_cells=20, n_genes=10)
    lognorm = adata.copy()
    lognorm.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    with pytest.raises(InputDataError, match="not raw counts"):
        prepare(lognorm)
    data = prepare(lognorm, input_kind="lognorm")
    np.testing.assert_allclose(data.lognorm.toarray(), lognorm.X.toarray()[:, : data.lognorm.shape[1]])


def test_bad_training_input():
    adata = synthetic_counts(n_cells=20, n_genes=10)
    with pytest.raises(InputDataError, match="Layer 'counts'"):
        prepare(adata, layer="counts")
    dup = adata.copy()
    dup.var_names = ["A"] * 10
    with pytest.raises(InputDataError, match="duplicated"):
        prepare(dup)
    empty = ad.AnnData(X=sp.csr_matrix((20, 10), dtype=np.float32))
    empty.var_names = [f"g{i}" for i in range(10)]
    with pytest.raises(InputDataError, match="zero counts"):
        prepare(empty)
    with pytest.raises(InputDataError, match="not an obs column"):
        prepare(adata, total_counts_key="nope")
