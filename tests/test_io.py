"""Chunked readers for every input format, and atomic, content-preserving writers."""

import gzip

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from conftest import synthetic_counts
from sccsa_infer.errors import InputDataError, OutputError
from sccsa_infer.io import open_cells, read_h5ad, write_h5ad_result, write_table


def _collect(source, size=7):
    parts = list(source.chunks(size))
    assert [p[0] for p in parts] == list(range(0, source.n_obs, size))
    return sp.vstack([p[2] for p in parts]).toarray()


@pytest.fixture
def adata():
    return synthetic_counts(n_cells=30, n_genes=12)


@pytest.mark.parametrize("storage", ["csr", "csc", "dense"])
def test_h5ad_chunks_equal_the_matrix(adata, tmp_path, storage):
    a = adata.copy()
    a.X = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": lambda m: m.toarray()}[storage](a.X)
    path = tmp_path / "x.h5ad"
    a.write_h5ad(path)
    with open_cells(path) as source:
        assert source.n_obs == 30 and source.var_names == list(a.var_names)
        np.testing.assert_array_equal(_collect(source), adata.X.toarray())
        assert list(source.obs_names) == list(a.obs_names)
        assert list(source.obs_column("cell_type")) == list(a.obs["cell_type"])


def test_h5ad_layer_and_gene_key(adata, tmp_path):
    a = adata.copy()
    a.layers["counts"] = a.X.copy()
    a.X = sp.csr_matrix(a.X.multiply(0.5))
    a.var["symbol"] = [f"S{i}" for i in range(a.n_vars)]
    path = tmp_path / "x.h5ad"
    a.write_h5ad(path)
    with open_cells(path, layer="counts", gene_key="symbol") as source:
        np.testing.assert_array_equal(_collect(source), adata.X.toarray())
        assert source.var_names[0] == "S0"
    with pytest.raises(InputDataError, match="Layer 'raw' is not in"):
        open_cells(path, layer="raw")
    with pytest.raises(InputDataError, match="not a var column"):
        open_cells(path, gene_key="nope")
    with open_cells(path) as source, pytest.raises(InputDataError, match="obs column 'nope'"):
        source.obs_column("nope")


def test_tenx_h5_v3(adata, tmp_path):
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    csc = sp.csc_matrix(adata.X.T)  # genes × cells, column = cell
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"], g["shape"] = csc.data, csc.indices, csc.indptr, csc.shape
        g["barcodes"] = np.array([c.encode() for c in adata.obs_names])
        g["features/name"] = np.array([v.encode() for v in adata.var_names])
        g["features/id"] = np.array([f"ENSG{i:011d}".encode() for i in range(adata.n_vars)])
    with open_cells(path) as source:
        np.testing.assert_array_equal(_collect(source), adata.X.toarray())
        assert source.var_names == list(adata.var_names)
    with open_cells(path, gene_key="gene_ids") as source:
        assert source.var_names[1] == "ENSG00000000001"


def test_mtx_folder_and_csv(adata, tmp_path):
    folder = tmp_path / "mtx"
    folder.mkdir()
    scipy.io.mmwrite(str(folder / "matrix.mtx"), sp.coo_matrix(adata.X.T))
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.writelines(f"ID{i}\t{g}\tGene Expression\n" for i, g in enumerate(adata.var_names))
    (folder / "barcodes.tsv").write_text("".join(f"{c}\n" for c in adata.obs_names))
    with open_cells(folder) as source:
        np.testing.assert_array_equal(_collect(source), adata.X.toarray())
        assert source.var_names == list(adata.var_names)
    csv = tmp_path / "x.csv"
    pd.DataFrame(adata.X.toarray(), index=adata.obs_names, columns=adata.var_names).to_csv(csv)
    with open_cells(csv) as source:
        np.testing.assert_array_equal(_collect(source), adata.X.toarray())


def test_unreadable_inputs_give_clear_errors(tmp_path, adata):
    with pytest.raises(InputDataError, match="does not exist"):
        open_cells(tmp_path / "missing.h5ad")
    (tmp_path / "text.h5ad").write_text("not hdf5")
    with pytest.raises(InputDataError, match="not a readable HDF5"):
        open_cells(tmp_path / "text.h5ad")
    with pytest.raises(InputDataError, match="not a readable HDF5"):
        read_h5ad(tmp_path / "text.h5ad")
    (tmp_path / "x.loom").write_text("")
    with pytest.raises(InputDataError, match="unknown format"):
        open_cells(tmp_path / "x.loom")
    good = tmp_path / "good.h5ad"
    adata.write_h5ad(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputDataError):
        with open_cells(truncated) as source:
            list(source.chunks(10))
    empty = tmp_path / "empty.h5ad"
    ad.AnnData(X=sp.csr_matrix((0, 3), dtype=np.float32), var=pd.DataFrame(index=["a", "b", "c"])).write_h5ad(empty)
    with pytest.raises(InputDataError, match="zero cells"):
        open_cells(empty)


def test_h5ad_result_keeps_everything_and_adds_columns(adata, tmp_path):
    a = adata.copy()
    a.obsm["X_pca"] = np.ones((a.n_obs, 2))
    a.uns["keep"] = {"x": 1}
    a.layers["counts"] = a.X.copy()
    path = tmp_path / "in.h5ad"
    a.write_h5ad(path)
    before = path.read_bytes()
    out = tmp_path / "out.h5ad"
    with open_cells(path) as source:
        write_h5ad_result(source, out, {"sccsa_cluster": pd.Categorical(["0"] * a.n_obs)},
                          {"X_sccsa": np.zeros((a.n_obs, 3), dtype=np.float32)}, {"sccsa": {"model": "m"}})
    assert path.read_bytes() == before  # input untouched
    result = ad.read_h5ad(out)
    assert (result.X != a.X).nnz == 0
    assert list(result.obs.columns) == ["cell_type", "sccsa_cluster"]
    assert set(result.obsm) == {"X_pca", "X_sccsa"} and "counts" in result.layers
    assert result.uns["keep"]["x"] == 1 and result.uns["sccsa"]["model"] == "m"


def test_failed_write_leaves_no_file(tmp_path):
    out = tmp_path / "t.csv"

    class Boom(pd.DataFrame):
        def to_csv(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_table(Boom({"a": [1]}), out)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="does not exist"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "no" / "t.csv")
    with pytest.raises(OutputError, match="use an .h5ad"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.xlsx")
