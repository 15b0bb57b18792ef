"""``sccsa-infer`` end to end: outputs, messages, exit codes, no partial files."""

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import synthetic_counts
from sccsa_infer import Predictor
from sccsa_infer.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_version_and_help():
    result = run("--version")
    assert result.exit_code == 0 and "sccsa-infer" in result.output
    for command in ([], ["predict"], ["info"], ["verify"]):
        result = run(*command, "--help")
        assert result.exit_code == 0 and "Example" in result.output


def test_predict_h5ad_adds_results_and_matches_the_api(bundle_dir, query_h5ad, tmp_path):
    out = tmp_path / "labelled.h5ad"
    result = run("predict", query_h5ad, "--model", bundle_dir, "--out", out, "--eval-key", "cell_type", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "ARI" in result.output and "label accuracy" in result.output
    labelled = ad.read_h5ad(out)
    for key in ("sccsa_cluster", "sccsa_label", "sccsa_confidence", "sccsa_distance", "sccsa_unassigned"):
        assert key in labelled.obs
    expected = Predictor(bundle_dir).predict(ad.read_h5ad(query_h5ad))
    np.testing.assert_array_equal(labelled.obs["sccsa_cluster"].astype(int).to_numpy(), expected.cluster)
    np.testing.assert_allclose(labelled.obsm["X_sccsa"], expected.latent)
    assert labelled.uns["sccsa"]["gene_coverage"] == 1.0


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_predict_tables(bundle_dir, query_h5ad, tmp_path, suffix):
    out = tmp_path / f"labels{suffix}"
    result = run("predict", query_h5ad, "-m", bundle_dir, "-o", out, "--with-latent", "--no-progress")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out, sep="\t" if suffix == ".tsv" else ",", index_col=0)
    assert len(table) == 150 and "sccsa_latent_0" in table.columns


def test_info_and_verify(bundle_dir):
    result = run("info", bundle_dir)
    assert result.exit_code == 0 and "clusters" in result.output and "type0" in result.output
    as_json = json.loads(run("info", bundle_dir, "--json").output)
    assert as_json["n_clusters"] == 3
    result = run("verify", bundle_dir)
    assert result.exit_code == 0 and "self-test OK" in result.output


def test_verify_fails_on_tampering(bundle_dir, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"x")
    result = run("verify", copy)
    assert result.exit_code != 0 and "altered" in result.output and "Traceback" not in result.output


def test_errors_are_one_paragraph_and_leave_no_output(bundle_dir, query_h5ad, tmp_path):
    out = tmp_path / "o.h5ad"
    cases = [
        (["predict", tmp_path / "missing.h5ad", "-m", bundle_dir, "-o", out], "does not exist"),
        (["predict", query_h5ad, "-m", tmp_path / "nobundle", "-o", out], "does not exist"),
        (["predict", query_h5ad, "-m", bundle_dir, "-o", tmp_path / "nodir" / "o.h5ad"], "does not exist"),
        (["predict", query_h5ad, "-m", bundle_dir, "-o", tmp_path / "o.xlsx"], "must end in"),
        (["predict", query_h5ad, "-m", bundle_dir, "-o", out, "--layer", "counts"], "Layer 'counts'"),
        (["predict", query_h5ad, "-m", bundle_dir, "-o", out, "--eval-key", "nope"], "obs column 'nope'"),
        (["predict", query_h5ad, "-m", bundle_dir, "-o", query_h5ad], "never overwrites its input"),
    ]
    for args, message in cases:
        result = run(*args, "--no-progress")
        assert result.exit_code != 0, args
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_low_gene_coverage_fails_before_writing(bundle_dir, tmp_path):
    other = synthetic_counts(n_cells=20, gene_prefix="OTHER")
    path = tmp_path / "other.h5ad"
    other.write_h5ad(path)
    out = tmp_path / "o.h5ad"
    result = run("predict", path, "-m", bundle_dir, "-o", out, "--no-progress")
    assert result.exit_code != 0 and "--gene-key" in result.output
    assert not out.exists()


def test_missing_genes_warn_with_their_number(bundle_dir, tmp_path):
    query = synthetic_counts(n_cells=30, seed=3)
    query = query[:, 5:].copy()
    path = tmp_path / "partial.h5ad"
    query.write_h5ad(path)
    result = run("predict", path, "-m", bundle_dir, "-o", tmp_path / "p.csv", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "Warning:" in result.stderr and "of the model's" in result.stderr


def test_eval_key_with_another_vocabulary_says_so_and_label_map_fixes_it(bundle_dir, tmp_path):
    """The model names cells type0/1/2; a query annotated T0/T1/T2 shares no label with it."""
    adata = synthetic_counts(n_cells=60, seed=9)
    adata.obs["truth"] = adata.obs["cell_type"].astype(str).str.replace("type", "T")
    path = tmp_path / "q.h5ad"
    adata.write_h5ad(path)
    result = run("predict", path, "-m", bundle_dir, "-o", tmp_path / "a.csv", "--eval-key", "truth", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "share no label" in result.output and "--label-map" in result.output
    metrics_line = next(line for line in result.output.splitlines() if line.startswith("vs truth"))
    assert "ARI" in metrics_line and "label accuracy" not in metrics_line  # no misleading 0.000
    mapping = tmp_path / "map.csv"
    mapping.write_text("model,mine\ntype0,T0\ntype1,T1\ntype2,T2\n")
    result = run("predict", path, "-m", bundle_dir, "-o", tmp_path / "b.csv", "--eval-key", "truth",
                 "--label-map", mapping, "--no-progress")
    assert result.exit_code == 0 and "share no label" not in result.output
    accuracy = float(result.output.split("label accuracy ")[1].split()[0])
    assert accuracy > 0.9
    (tmp_path / "map.json").write_text('{"type0": "T0", "type1": "T1", "type2": "T2"}')
    result = run("predict", path, "-m", bundle_dir, "-o", tmp_path / "c.csv", "--eval-key", "truth",
                 "--label-map", tmp_path / "map.json", "--no-progress")
    assert float(result.output.split("label accuracy ")[1].split()[0]) == accuracy
    (tmp_path / "bad.csv").write_text("a,b,c\n")
    result = run("predict", path, "-m", bundle_dir, "-o", tmp_path / "d.csv", "--eval-key", "truth",
                 "--label-map", tmp_path / "bad.csv", "--no-progress")
    assert result.exit_code != 0 and "exactly two columns" in result.output and not (tmp_path / "d.csv").exists()


def test_parquet_without_pyarrow_fails_before_work(bundle_dir, query_h5ad, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    result = run("predict", query_h5ad, "-m", bundle_dir, "-o", tmp_path / "o.parquet", "--no-progress")
    assert result.exit_code != 0 and "pip install 'sccsa[parquet]'" in result.output
    assert "Labelled" not in result.output and not (tmp_path / "o.parquet").exists()


def test_progress_bars_stay_out_of_logs(bundle_dir, query_h5ad, tmp_path):
    """--progress is the default, but bars go only to a terminal: not into a pipe or a log file."""
    result = CliRunner().invoke(main, ["predict", str(query_h5ad), "-m", str(bundle_dir), "-o", str(tmp_path / "o.csv")])
    assert result.exit_code == 0, result.output
    assert "sccsa-infer:" not in result.output and "cells/s]" not in result.output
