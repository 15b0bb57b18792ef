"""Chunked readers for every input format, and atomic, content-preserving, block-by-block writers."""

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
from sccsa_infer.io import open_cells, read_h5ad
from sccsa_infer.prediction import Prediction
from sccsa_infer.sinks import open_sink


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


def _prediction(n, k=3, latent_dim=2, names=("A", "B", "C"), seed=0):
    rng = np.random.default_rng(seed)
    prob = rng.dirichlet(np.ones(k), size=n).astype(np.float32)
    raw = {"label": prob.argmax(axis=1), "prob": prob, "latent": rng.normal(size=(n, latent_dim)).astype(np.float32),
           "distance": rng.random(n).astype(np.float32)}
    return Prediction.from_outputs(raw, np.full(k, 0.5, dtype=np.float32), list(names), np.zeros(n, dtype=bool))


def _write_in_blocks(out, source, whole, block=7, **kwargs):
    with open_sink(out, source, **kwargs) as sink:
        for start in range(0, len(whole), block):
            part = _slice(whole, start, start + block)
            sink.write(start, source.names(start, min(start + block, source.n_obs)), part)
        sink.finish({"sccsa": {"model": "m"}})


def _slice(prediction, start, stop):
    return Prediction(**{f: getattr(prediction, f)[start:stop] for f in ("cluster", "confidence", "distance",
                         "unassigned", "latent", "prob", "empty")}, cluster_names=prediction.cluster_names)


def test_h5ad_result_keeps_everything_and_adds_columns(adata, tmp_path):
    a = adata.copy()
    a.obsm["X_pca"] = np.ones((a.n_obs, 2))
    a.uns["keep"] = {"x": 1}
    a.layers["counts"] = a.X.copy()
    path = tmp_path / "in.h5ad"
    a.write_h5ad(path)
    before = path.read_bytes()
    out = tmp_path / "out.h5ad"
    whole = _prediction(a.n_obs)
    with open_cells(path) as source:
        _write_in_blocks(out, source, whole)
    assert path.read_bytes() == before  # input untouched
    result = ad.read_h5ad(out)
    assert (result.X != a.X).nnz == 0
    assert list(result.obs.columns) == ["cell_type", *whole.obs_columns()]
    for key, values in whole.obs_columns().items():  # written block by block, read back whole
        np.testing.assert_array_equal(np.asarray(result.obs[key]), np.asarray(values))
    assert list(result.obs["sccsa_label"].cat.categories) == ["A", "B", "C", "unassigned"]
    np.testing.assert_array_equal(result.obsm["X_sccsa"], whole.latent)
    assert set(result.obsm) == {"X_pca", "X_sccsa"} and "counts" in result.layers
    assert result.uns["keep"]["x"] == 1 and result.uns["sccsa"]["model"] == "m"
    assert list(result.obs_names) == list(a.obs_names)
    with open_cells(out) as source:  # labelling an output again replaces the columns, keeps one of each
        _write_in_blocks(tmp_path / "again.h5ad", source, _prediction(a.n_obs, seed=1), block=11)
    again = ad.read_h5ad(tmp_path / "again.h5ad")
    assert list(again.obs.columns) == list(result.obs.columns)
    np.testing.assert_array_equal(again.obsm["X_sccsa"], _prediction(a.n_obs, seed=1).latent)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_tables_written_in_blocks_equal_the_whole(adata, tmp_path, suffix):
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    whole = _prediction(adata.n_obs)
    out = tmp_path / f"t{suffix}"
    with open_cells(path) as source:
        _write_in_blocks(out, source, whole, with_latent=True)
    table = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out, sep="\t" if suffix == ".tsv" else ",",
                                                                          index_col=0)
    expected = whole.to_frame(adata.obs_names, latent=True)
    assert list(table.index) == list(adata.obs_names) and table.index.name == "cell"
    assert list(table.columns) == list(expected.columns)
    np.testing.assert_array_equal(table["sccsa_cluster"].astype(str), expected["sccsa_cluster"].astype(str))
    np.testing.assert_allclose(table["sccsa_latent_1"], expected["sccsa_latent_1"], rtol=1e-6)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        expected.index.name = "cell"
        pd.testing.assert_frame_equal(table, expected)  # same dtypes (categoricals, float32, bool), same values
        assert pq.ParquetFile(out).num_row_groups == 1  # blocks gathered into row groups of ~65k rows


def test_obs_columns_match_the_labels_also_for_repeated_names():
    rng = np.random.default_rng(3)
    prob = rng.dirichlet(np.ones(4), size=50).astype(np.float32)
    raw = {"label": prob.argmax(axis=1), "prob": prob, "latent": np.zeros((50, 2), np.float32),
           "distance": rng.random(50).astype(np.float32)}
    names = ["B", "T", "B", "NK"]  # two clusters share a name, as merged types do
    prediction = Prediction.from_outputs(raw, np.full(4, 0.5, np.float32), names, np.arange(50) % 17 == 0)
    columns = prediction.obs_columns("key")
    assert 0 < prediction.unassigned.sum() < 50
    assert list(columns["key_label"].categories) == ["B", "T", "NK", "unassigned"]
    np.testing.assert_array_equal(np.asarray(columns["key_label"]), prediction.label)
    assert list(columns["key_cluster"].categories) == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(np.asarray(columns["key_cluster"]), prediction.cluster.astype(str))


def test_a_term_id_column_pairs_each_label_with_its_cell_ontology_id():
    rng = np.random.default_rng(4)
    prob = rng.dirichlet(np.ones(4), size=50).astype(np.float32)
    raw = {"label": prob.argmax(axis=1), "prob": prob, "latent": np.zeros((50, 2), np.float32),
           "distance": rng.random(50).astype(np.float32)}
    names, ids = ["B", "T", "B", "NK"], ["CL:0000236", "CL:0000084", "CL:0000236", "unknown"]
    unassigned_rows = np.arange(50) % 13 == 0
    plain = Prediction.from_outputs(raw, np.full(4, 0.5, np.float32), names, unassigned_rows)
    assert "key_label_ontology_term_id" not in plain.obs_columns("key")  # no record, no column
    prediction = Prediction.from_outputs(raw, np.full(4, 0.5, np.float32), names, unassigned_rows, ids)
    column = prediction.obs_columns("key")["key_label_ontology_term_id"]
    assert list(column.categories) == ["CL:0000236", "CL:0000084", "unknown"]
    expected = np.where(prediction.unassigned, "unknown", np.asarray(ids)[prediction.cluster])
    np.testing.assert_array_equal(np.asarray(column), expected)
    assert 0 < prediction.unassigned.sum() < 50
    both = Prediction.concat([prediction, prediction])
    np.testing.assert_array_equal(np.asarray(both.obs_columns("key")["key_label_ontology_term_id"]),
                                  np.concatenate([expected, expected]))


def test_parquet_row_groups_gather_blocks(adata, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from sccsa_infer.sinks import ParquetSink

    monkeypatch.setattr(ParquetSink, "ROW_GROUP", 10)
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    whole = _prediction(adata.n_obs)
    with open_cells(path) as source:
        _write_in_blocks(tmp_path / "t.parquet", source, whole)  # 30 cells in blocks of 7
    groups = pq.ParquetFile(tmp_path / "t.parquet")
    assert [groups.metadata.row_group(i).num_rows for i in range(groups.num_row_groups)] == [14, 14, 2]
    np.testing.assert_array_equal(pd.read_parquet(tmp_path / "t.parquet")["sccsa_distance"], whole.distance)


def test_failed_write_leaves_no_file(adata, tmp_path):
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    for suffix in (".csv", ".parquet", ".h5ad"):
        out = tmp_path / f"t{suffix}"
        with open_cells(path) as source, pytest.raises(RuntimeError):
            with open_sink(out, source) as sink:
                sink.write(0, source.names(0, 5), _slice(_prediction(adata.n_obs), 0, 5))
                raise RuntimeError("disk full")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad"]
    with open_cells(path) as source:
        with pytest.raises(OutputError, match="does not exist"):
            with open_sink(tmp_path / "no" / "t.csv", source):
                pass
        with pytest.raises(OutputError, match="must end in .h5ad"):
            with open_sink(tmp_path / "t.xlsx", source):
                pass
