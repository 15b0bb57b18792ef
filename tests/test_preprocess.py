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


def test_normalisation_in_row_blocks_gives_one_calls_numbers(monkeypatch):
    """Scanpy runs on blocks of cells (its temporaries at 10⁶ cells were gigabytes); the numbers,
    the QC column subset and the library sizes from obs come out as from one call, and the
    user's matrix is left as it was."""
    import sccsa_train.preprocess as preprocess

    monkeypatch.setattr(preprocess, "ROW_BLOCK", 7)
    adata = synthetic_counts(n_cells=50, n_genes=30)
    before = adata.X.copy()
    expected = _scanpy(adata)
    np.testing.assert_array_equal(normalize_log1p(adata.X).toarray(), expected)
    columns = np.array([0, 3, 4, 17])
    np.testing.assert_array_equal(normalize_log1p(adata.X, columns=columns).toarray(), expected[:, columns])
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    np.testing.assert_allclose(normalize_log1p(adata.X[:, :20], totals, columns=columns).toarray(),
                               expected[:, columns], rtol=1e-6)
    assert (adata.X != before).nnz == 0
    x = adata.X.toarray()
    x[:, 5] = 0
    x[:2, 5] = 1  # expressed in 2 cells < 3: dropped by QC
    lognorm = ad.AnnData(sp.csr_matrix(np.log1p(x)), var=adata.var)
    data = prepare(lognorm, input_kind="lognorm")
    np.testing.assert_array_equal(data.lognorm.toarray(), np.delete(np.log1p(x), 5, axis=1).astype(np.float32))


def test_an_int64_indptr_beside_int32_indices_is_made_int32_without_copying_the_data():
    """anndata often reads such a pair; SciPy would then copy all indices to int64 for every block
    of rows taken from the matrix (1.3 GiB at 10⁶ cells)."""
    from sccsa_train.preprocess import expression_matrix

    adata = synthetic_counts(n_cells=20, n_genes=10)
    x = sp.csr_matrix(adata.X, dtype=np.float32)
    adata.X = sp.csr_matrix((x.data, x.indices.astype(np.int32), x.indptr.astype(np.int64)), shape=x.shape)
    adata.X.indptr = adata.X.indptr.astype(np.int64)  # SciPy's constructor would have narrowed it
    assert adata.X.indptr.dtype == np.int64 and adata.X.indices.dtype == np.int32
    matrix = expression_matrix(adata, None)
    assert matrix.indptr.dtype == matrix.indices.dtype == np.int32
    assert np.shares_memory(matrix.data, adata.X.data) and np.shares_memory(matrix.indices, adata.X.indices)
    assert adata.X.indptr.dtype == np.int64 and (matrix != adata.X).nnz == 0


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
