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
