"""The Python API behaves like the field's libraries: scikit-learn's estimator protocol, one
options table behind the estimator and ``sccsa-train``, logging on request (issue 16)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.base import clone
from sklearn.metrics import silhouette_score
from sklearn.model_selection import GridSearchCV

from conftest import FAST_TRAINING, synthetic_counts
from sccsa_infer.errors import InvalidParameterError
from sccsa_train import SCCSA
from sccsa_train.cli import main as train_main
from sccsa_train.options import BY_NAME, OPTIONS, validate


def test_signature_cli_and_table_agree():
    """One table: every estimator parameter is an option with the same default, and so is every
    sccsa-train option that configures the model."""
    signature = inspect.signature(SCCSA).parameters
    assert list(signature) == [option.name for option in OPTIONS]
    for option in OPTIONS:
        assert signature[option.name].default == option.default, option.name
    cli = {p.name: p for p in train_main.params}
    for option in OPTIONS:
        assert option.name in cli, option.name
        assert cli[option.name].default == option.default, option.name
        assert option.flag in cli[option.name].opts, option.name
    help_text = CliRunner().invoke(train_main, ["--help"]).output
    for option in OPTIONS:
        assert option.flag in help_text, option.name


def test_old_flag_names_still_work():
    cli = {p.name: p for p in train_main.params}
    assert "--seed" in cli["random_state"].opts and "--recon-weight" in cli["reconstruction_weight"].opts


def test_estimator_protocol_clone_get_set_params():
    model = SCCSA(4, latent_dim=8, random_state=3)
    params = model.get_params(deep=True)
    assert params["n_clusters"] == 4 and params["latent_dim"] == 8 and params["random_state"] == 3
    copy = clone(model)
    assert copy is not model and copy.get_params() == params
    assert model.set_params(cc="off", alpha=0.25) is model and model.cc == "off"
    assert "cc='off'" in repr(model)
    validate(model.get_params())
    with pytest.raises(InvalidParameterError, match="cc='maybe' is invalid"):
        validate({**model.get_params(), "cc": "maybe"})
    with pytest.raises(InvalidParameterError, match="Unknown parameter"):
        validate({"epochs": 3})


def test_grid_search_over_an_unsupervised_score():
    """GridSearchCV runs over sccsa with a score that needs no labels (labels must never choose
    models): the silhouette of the held-out cells' latent under their predicted clusters."""
    adata = synthetic_counts(n_cells=180, n_genes=40)

    def silhouette(estimator, X, y=None):
        return silhouette_score(estimator.transform(X), estimator.predict(X))

    search = GridSearchCV(SCCSA(3, n_genes=30, random_state=0, **FAST_TRAINING),
                          {"latent_dim": [4, 8]}, scoring=silhouette, cv=2, error_score="raise")
    search.fit(adata)
    assert set(search.cv_results_["param_latent_dim"]) == {4, 8}
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.n_clusters_ == 3


def test_every_option_has_a_checked_range():
    for option in OPTIONS:
        option.check(option.default)
    with pytest.raises(InvalidParameterError, match="n_genes=2 is invalid: must be ≥ 4"):
        BY_NAME["n_genes"].check(2)


def test_verbose_logs_each_stage(tmp_path):
    path = tmp_path / "cells.h5ad"
    synthetic_counts(n_cells=90, n_genes=40).write_h5ad(path)
    fast = ["--pretrain-epochs", "3", "--cluster-epochs", "2", "--n-genes", "30", "--latent-dim", "4", "--no-progress"]
    result = CliRunner().invoke(train_main, [str(path), "-k", "3", "--out", str(tmp_path / "m"), "-v", *fast])
    assert result.exit_code == 0, result.output
    for line in ("preprocessed 90 cells", "selected 30 genes", "stage 1 (pretraining): 3 epochs",
                 "stage 2 (clustering)", "exported the bundle"):
        assert line in result.output, line
    quiet = CliRunner().invoke(train_main, [str(path), "-k", "3", "--out", str(tmp_path / "q"), "-q", *fast])
    assert quiet.exit_code == 0 and "stage 1" not in quiet.output and "INFO" not in quiet.output


def test_importing_configures_no_logging():
    code = ("import logging, sccsa_infer, sccsa_train.estimator; "
            "assert not logging.getLogger().handlers; "
            "assert not logging.getLogger('sccsa_train').handlers and not logging.getLogger('sccsa_infer').handlers")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_one_call_annotate_with_key_added(bundle_dir, query_h5ad):
    import anndata as ad

    import sccsa_infer

    adata = ad.read_h5ad(query_h5ad)
    before = set(adata.obs.columns)
    returned = sccsa_infer.annotate(adata, bundle_dir, key_added="ref")
    assert returned is adata  # written in place and returned, as CellTypist's annotate returns its result
    added = set(adata.obs.columns) - before
    assert added == {"ref_cluster", "ref_label", "ref_confidence", "ref_distance", "ref_unassigned"}
    assert "X_ref" in adata.obsm and adata.uns["ref"]["params"]["key_added"] == "ref"
    assert adata.uns["ref"]["gene_coverage"] == 1.0 and len(adata.uns["ref"]["model_sha256"]) == 64
    from_path = sccsa_infer.annotate(query_h5ad, bundle_dir)  # a path is read, never modified
    np.testing.assert_array_equal(from_path.obs["sccsa_cluster"], adata.obs["ref_cluster"])
    copy = sccsa_infer.annotate(from_path, bundle_dir, key_added="again", copy=True)
    assert "again_cluster" in copy.obs and "again_cluster" not in from_path.obs
    with pytest.raises(sccsa_infer.InputDataError, match="AnnData or an .h5ad path"):
        sccsa_infer.annotate(np.zeros((3, 3)), bundle_dir)


def test_training_and_serving_write_one_schema(fitted_model, bundle_dir, query_h5ad):
    """SCCSA.annotate (torch) and sccsa_infer.annotate (ONNX Runtime) write the same keys and labels."""
    import anndata as ad

    import sccsa_infer

    served = sccsa_infer.annotate(ad.read_h5ad(query_h5ad), bundle_dir, key_added="k")
    trained = fitted_model.annotate(ad.read_h5ad(query_h5ad), key_added="k", copy=True)
    assert list(trained.obs.columns) == list(served.obs.columns) and set(trained.obsm) == set(served.obsm)
    for key in ("k_cluster", "k_label", "k_unassigned"):
        np.testing.assert_array_equal(trained.obs[key].to_numpy(), served.obs[key].to_numpy())
    np.testing.assert_allclose(trained.obsm["X_k"], served.obsm["X_k"], atol=1e-4)
    assert trained.uns["k"]["params"]["n_genes"] == fitted_model.n_genes


def test_pseudo_label_ensemble_summary_is_saved(synthetic, tmp_path):
    """An unsupervised fit keeps the summary of the consensus its genes were selected on (the
    Leiden members' reach) through save/load; models saved before it existed load without one."""
    import json

    model = SCCSA(3, n_genes=40, random_state=0, **FAST_TRAINING).fit(synthetic)
    summary = model.state_.pseudo_label_ensemble
    assert summary["leiden_clusters"] == 3 and summary["kmeans_members"] == 12
    path = model.save(tmp_path / "saved")
    assert SCCSA.load(path).state_.pseudo_label_ensemble == summary
    saved = json.loads((path / "sccsa_model.json").read_text())
    del saved["fitted"]["pseudo_label_ensemble"]
    (path / "sccsa_model.json").write_text(json.dumps(saved))
    assert SCCSA.load(path).state_.pseudo_label_ensemble is None


def test_save_load_round_trip(fitted_model, synthetic, tmp_path):
    import json

    from sccsa_infer.errors import BundleError, OutputError

    path = fitted_model.save(tmp_path / "saved")
    assert sorted(p.name for p in path.iterdir()) == ["arrays.npz", "sccsa_model.json", "weights.pt"]
    loaded = SCCSA.load(path)
    np.testing.assert_array_equal(loaded.transform(synthetic), fitted_model.transform(synthetic))
    np.testing.assert_array_equal(loaded.labels_, fitted_model.labels_)
    assert loaded.get_params() == fitted_model.get_params()
    assert loaded.state_.cluster_names == fitted_model.state_.cluster_names
    np.testing.assert_array_equal(loaded.state_.selector.get_support(), fitted_model.state_.selector.get_support())
    assert loaded.history_.as_dict() == fitted_model.history_.as_dict()
    saved = json.loads((path / "sccsa_model.json").read_text())
    del saved["fitted"]["history"]["starts"]  # as written before pretraining starts were recorded
    (path / "sccsa_model.json").write_text(json.dumps(saved))
    assert SCCSA.load(path).history_.starts == []
    with pytest.raises(OutputError, match="already exists"):
        fitted_model.save(path)
    fitted_model.save(path, overwrite=True)  # replaces its own saved model
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a model saved by SCCSA.save"):
        fitted_model.save(tmp_path / "other", overwrite=True)
    meta = json.loads((path / "sccsa_model.json").read_text())
    (path / "sccsa_model.json").write_text(json.dumps(dict(meta, format=99)))
    with pytest.raises(BundleError, match="newer than this sccsa reads"):
        SCCSA.load(path)


def test_only_the_self_test_cells_counts_are_kept_and_older_saved_models_export_the_same(fitted_model, synthetic,
                                                                                         tmp_path):
    """The fit keeps the raw panel counts of the cells the bundle's self-test replays, not those
    of every cell (a second copy of the panel's counts at 10⁶ cells); a model saved when every
    fitted cell's counts were kept loads with the same cells chosen from them."""
    import scipy.sparse as sp
    import torch

    from sccsa_train.selftest import SELFTEST_CELLS_PER_CLUSTER, selftest_cells

    state = fitted_model.state_
    with torch.no_grad():
        chosen = selftest_cells(fitted_model.net_.squared_distances(torch.from_numpy(state.latent)), state.labels,
                                fitted_model.n_clusters_)
    assert len(chosen) == SELFTEST_CELLS_PER_CLUSTER * fitted_model.n_clusters_
    rows = synthetic[fitted_model._fit_rows]
    counts = sp.csr_matrix(rows[:, fitted_model.genes_].X, dtype=np.float32)
    totals = np.asarray(rows.X.sum(axis=1), dtype=np.float64).ravel()
    np.testing.assert_array_equal(state.selftest_counts, counts[chosen].toarray())
    np.testing.assert_array_equal(state.selftest_totals, totals[chosen])

    path = fitted_model.save(tmp_path / "saved")
    with np.load(path / "arrays.npz") as stored:
        arrays = {key: stored[key] for key in stored.files if not key.startswith("selftest_")}
    np.savez(path / "arrays.npz", **arrays, counts_data=counts.data, counts_indices=counts.indices,
             counts_indptr=counts.indptr, counts_shape=np.asarray(counts.shape), total_counts=totals)
    loaded = SCCSA.load(path)
    np.testing.assert_array_equal(loaded.state_.selftest_counts, state.selftest_counts)
    np.testing.assert_array_equal(loaded.state_.selftest_totals, state.selftest_totals)


def test_partial_fit_goes_on_training_on_a_new_batch(fitted_model, tmp_path):
    from sklearn.metrics import adjusted_rand_score

    from sccsa_infer import Predictor

    model = SCCSA.load(fitted_model.save(tmp_path / "saved"))
    batch = synthetic_counts(n_cells=150, seed=7)
    centroids = model.net_.centroids.clone()
    assert model.partial_fit(batch, epochs=2) is model
    assert len(model.labels_) == 150 and adjusted_rand_score(batch.obs["cell_type"], model.labels_) > 0.9
    assert not np.allclose(model.net_.centroids.numpy(), centroids.numpy())  # the centroids moved on
    assert model.genes_ == fitted_model.genes_ and model.state_.cluster_names == fitted_model.state_.cluster_names
    model.export(tmp_path / "bundle")
    np.testing.assert_array_equal(Predictor(tmp_path / "bundle").predict(batch).cluster, model.predict(batch))
    fresh = SCCSA(3, n_genes=30, random_state=0, **FAST_TRAINING).partial_fit(batch)
    assert fresh.n_clusters_ == 3  # an unfitted model is fitted


def test_partial_fit_on_data_without_some_panel_genes_reads_them_as_zero(fitted_model, tmp_path):
    batch = synthetic_counts(n_cells=150, seed=8)
    missing = fitted_model.genes_[:2]
    model = SCCSA.load(fitted_model.save(tmp_path / "saved")).partial_fit(batch[:, ~batch.var_names.isin(missing)].copy(), epochs=1)
    assert len(model.labels_) == 150
    counts = model.state_.selftest_counts  # the self-test cells' raw panel counts, read from this batch
    assert counts.shape[1] == len(model.genes_) and 0 < len(counts) <= 2 * model.n_clusters_
    assert not counts[:, :2].any() and counts[:, 2:].any()


# scikit-learn's checks that apply to an estimator whose X is an AnnData of counts. The others fit
# on bare float matrices (no gene names, negative and fractional values), which sccsa refuses by
# design with an InputDataError that says so (see test_a_bare_matrix_is_refused_clearly).
APPLICABLE_SKLEARN_CHECKS = [
    "check_no_attributes_set_in_init", "check_parameters_default_constructible", "check_get_params_invariance",
    "check_set_params", "check_estimator_repr", "check_do_not_raise_errors_in_init_or_set_params",
    "check_estimator_cloneable", "check_valid_tag_types", "check_estimator_tags_renamed", "check_mixin_order",
    "check_estimators_unfitted",
]


@pytest.mark.parametrize("name", APPLICABLE_SKLEARN_CHECKS)
def test_sklearn_estimator_checks_that_apply(name):
    from sklearn.utils import estimator_checks

    getattr(estimator_checks, name)("SCCSA", SCCSA(3))


def test_a_bare_matrix_is_refused_clearly():
    from sccsa_infer.errors import InputDataError

    with pytest.raises(InputDataError, match="needs an AnnData"):
        SCCSA(3).fit(np.ones((20, 5)))
