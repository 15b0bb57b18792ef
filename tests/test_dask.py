"""The Dask engine: blocks read and labelled on a 2-worker LocalCluster give exactly the results
of one process, through the CLI (--scheduler) and the Python entry (sccsa_infer.dask.annotate)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import sccsa_infer
from sccsa_infer.cli import main

pytest.importorskip("distributed", reason="the Dask engine needs the dask extra: pip install 'sccsa[dask]'")

BLOCK = 40  # the 150-cell query becomes 4 blocks


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def client():
    from sccsa_infer.dask import connect

    with connect("local:2") as c:
        yield c


@pytest.mark.parametrize("suffix", [".parquet", ".h5ad"])
def test_cli_scheduler_equals_one_process(bundle_dir, query_h5ad, tmp_path, suffix):
    local, remote = tmp_path / f"local{suffix}", tmp_path / f"dask{suffix}"
    common = ["-m", bundle_dir, "--batch-size", BLOCK, "--with-latent", "--no-progress", "--eval-key", "cell_type"]
    first = run("predict", query_h5ad, "-o", local, *common)
    second = run("predict", query_h5ad, "-o", remote, "--scheduler", "local:2", *common)
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert first.output.splitlines()[1:] == second.output.splitlines()[1:]  # sizes, metrics (line 0 has timings)
    if suffix == ".parquet":
        pd.testing.assert_frame_equal(pd.read_parquet(local), pd.read_parquet(remote))
    else:
        a, b = ad.read_h5ad(local), ad.read_h5ad(remote)
        pd.testing.assert_frame_equal(a.obs, b.obs)
        np.testing.assert_array_equal(a.obsm["X_sccsa"], b.obsm["X_sccsa"])


def test_python_entry_equals_in_memory_annotate(bundle_dir, query_h5ad, client):
    from sccsa_infer.dask import annotate, read_lazy

    lazy = read_lazy(query_h5ad, block_size=BLOCK)
    assert lazy.X.numblocks[0] == 4
    annotate(lazy, bundle_dir, client=client, key_added="pbmc")
    memory = sccsa_infer.annotate(ad.read_h5ad(query_h5ad), bundle_dir, key_added="pbmc")
    pd.testing.assert_frame_equal(lazy.obs, memory.obs)
    np.testing.assert_array_equal(lazy.obsm["X_pbmc"], memory.obsm["X_pbmc"])
    assert lazy.uns["pbmc"]["params"]["engine"] == "dask"


def test_blocks_come_back_in_row_order_with_few_in_flight(bundle_dir, query_h5ad, client):
    from sccsa_infer.dask import label_blocks, lazy_matrix

    predictor = sccsa_infer.Predictor(bundle_dir, n_threads=1)
    labeller = predictor.labeller(predictor.align(list(ad.read_h5ad(query_h5ad).var_names)))
    matrix = lazy_matrix(query_h5ad, block_size=BLOCK)
    starts = [start for start, _ in label_blocks(matrix, labeller, client=client, in_flight=1)]
    assert starts == [0, 40, 80, 120]


def test_clear_errors(bundle_dir, query_h5ad, tmp_path):
    for scheduler, message in (("local:0", "local:N with N ≥ 1"), ("nowhere", "neither local:N nor")):
        result = run("predict", query_h5ad, "-m", bundle_dir, "-o", tmp_path / "x.csv", "--scheduler", scheduler)
        assert result.exit_code != 0 and message in result.output, result.output
    table = tmp_path / "q.csv"
    ad.read_h5ad(query_h5ad).to_df().to_csv(table)
    result = run("predict", table, "-m", bundle_dir, "-o", tmp_path / "x.csv", "--scheduler", "local:1")
    assert result.exit_code != 0 and "reads .h5ad files on its workers" in result.output, result.output
    assert not (tmp_path / "x.csv").exists()
    from sccsa_infer.dask import annotate

    with pytest.raises(sccsa_infer.InputDataError, match="Dask-backed matrix"):
        annotate(ad.read_h5ad(query_h5ad), bundle_dir)


def test_missing_dask_names_the_extra(bundle_dir, query_h5ad, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_distributed(name, *args, **kwargs):
        if name == "distributed":
            raise ImportError("No module named 'distributed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    result = run("predict", query_h5ad, "-m", bundle_dir, "-o", tmp_path / "x.csv", "--scheduler", "local:2")
    assert result.exit_code != 0 and "pip install 'sccsa[dask]'" in result.output
