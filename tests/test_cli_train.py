"""``sccsa-train`` end to end on a small file: bundle, summary, blinded evaluation, errors."""

import json
import os

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import synthetic_counts
from sccsa_train import cli
from sccsa_train.cli import main

FAST = ["--pretrain-epochs", "20", "--cluster-epochs", "3", "--latent-dim", "8", "--no-progress"]


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "cells.h5ad"
    synthetic_counts(n_cells=240, n_genes=60).write_h5ad(path)
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_and_version():
    result = run("--help")
    assert result.exit_code == 0 and "Examples" in result.output and "--labels-key" in result.output
    assert "--n-clusters K|AUTO" in result.output and "--latent-dim L|AUTO" in result.output
    assert run("--version").exit_code == 0


def test_train_writes_bundle_adata_and_summary(h5ad, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    allocator_set = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: allocator_set.append(True))
    out, labelled = tmp_path / "model", tmp_path / "labelled.h5ad"
    result = run(h5ad, "-k", "3", "--n-genes", "40", "--eval-key", "cell_type", "--out", out, "--write-adata", labelled, *FAST)
    assert result.exit_code == 0, result.output
    assert "ARI" in result.output and "SA-CC alpha" in result.output and "K=3 (given)" in result.output
    meta = json.loads((out / "bundle.json").read_text())
    assert "eval_key" not in meta["training"]  # the fit never saw the evaluation labels
    assert "ari" in meta["metrics"] and meta["training"]["labels_key"] is None
    report = json.loads((out / "report.json").read_text())
    assert report["alpha"]["sd"] >= 0 and report["history"]["pretrain"]
    ensemble = report["genes"]["pseudo_label_ensemble"]  # the consensus the F-test read, its Leiden reach
    assert ensemble["kmeans_members"] == 12 and ensemble["leiden_members"] == 3 and ensemble["leiden_clusters"] == 3
    adata = ad.read_h5ad(labelled)
    assert "sccsa_cluster" in adata.obs and adata.obsm["X_sccsa"].shape[0] == 240
    # idle OpenMP threads sleep at once unless the user chose otherwise (tests/test_openmp.py)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in os.environ
    assert allocator_set == [True]  # freed step memory stays in the heap (tests/test_allocator.py)


def test_eval_labels_are_hidden_from_the_fit(h5ad, tmp_path, monkeypatch):
    """--eval-key never reaches SCCSA.fit: the AnnData it gets has no such column."""
    from sccsa_train import estimator

    seen = []
    original = estimator.SCCSA.fit

    def spy(self, adata):
        seen.append(list(adata.obs.columns))
        return original(self, adata)

    monkeypatch.setattr(estimator.SCCSA, "fit", spy)
    result = run(h5ad, "-k", "3", "--n-genes", "40", "--eval-key", "cell_type", "--out", tmp_path / "m", *FAST)
    assert result.exit_code == 0, result.output
    assert seen == [[]]


def test_same_seed_same_bundle_labels(h5ad, tmp_path, monkeypatch):
    """Also with --spin-wait, which changes how idle threads wait, not what they compute."""
    policies = []
    monkeypatch.setattr(cli, "set_wait_policy", policies.append)
    for name, spin in (("a", ()), ("b", ("--spin-wait",))):
        assert run(h5ad, "-k", "3", "--n-genes", "40", "--seed", "3", "--out", tmp_path / name,
                   "--write-adata", tmp_path / f"{name}.h5ad", *spin, *FAST).exit_code == 0
    assert policies == [False, True]
    a, b = ad.read_h5ad(tmp_path / "a.h5ad"), ad.read_h5ad(tmp_path / "b.h5ad")
    np.testing.assert_array_equal(a.obs["sccsa_cluster"].to_numpy(), b.obs["sccsa_cluster"].to_numpy())


def test_errors_leave_no_bundle(h5ad, tmp_path):
    out = tmp_path / "m"
    cases = [
        ([tmp_path / "missing.h5ad"], "does not exist"),
        ([h5ad, "-k", "1000"], "only 240 cells"),
        ([h5ad, "-k", "3", "--labels-key", "nope"], "labels_key 'nope'"),
        ([h5ad, "-k", "3", "--eval-key", "nope"], "--eval-key 'nope'"),
        ([h5ad, "-k", "3", "--layer", "counts"], "Layer 'counts'"),
        ([h5ad, "-k", "x"], "neither 'auto' nor an integer"),
    ]
    for args, message in cases:
        result = run(*args, "--out", out, *FAST)
        assert result.exit_code != 0, args
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
        assert not out.exists()
    result = run(h5ad, "-k", "3", "--out", tmp_path / "nodir" / "m", *FAST)
    assert result.exit_code != 0 and "does not exist" in result.output
    for latent, message in (("1", "1 is below the smallest allowed value, 2"), ("wide", "neither 'auto' nor an integer")):
        result = run(h5ad, "-k", "3", "--out", out, *FAST, "--latent-dim", latent)
        assert result.exit_code != 0 and message in result.output, result.output
        assert not out.exists()


def test_existing_bundle_needs_overwrite(h5ad, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    result = run(h5ad, "-k", "3", "--out", out, *FAST)
    assert result.exit_code != 0 and "--overwrite" in result.output


def test_precision_auto_says_what_it_chose(h5ad, tmp_path, monkeypatch):
    """--precision auto: the summary and report.json name the arithmetic this machine got (here a
    CPU whose flags lack bfloat16 instructions: float32); bundle.json keeps the option as given."""
    from sccsa_train import precision

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    out = tmp_path / "model"
    result = run(h5ad, "-k", "3", "--n-genes", "40", "--device", "cpu", "--precision", "auto", "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert "precision auto: 32 on this machine" in result.output
    assert json.loads((out / "report.json").read_text())["history"]["precision"] == "32"
    assert json.loads((out / "bundle.json").read_text())["training"]["precision"] == "auto"
    plain = run(h5ad, "-k", "3", "--n-genes", "40", "--out", tmp_path / "plain", *FAST)
    assert plain.exit_code == 0 and "precision auto" not in plain.output
