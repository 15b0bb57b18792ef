"""The serving Predictor: labels, flags, thread safety, and agreement with the torch model."""

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import synthetic_counts
from sccsa_infer import Predictor
from sccsa_infer.errors import InputDataError


@pytest.fixture(scope="module")
def predictor(bundle_dir):
    return Predictor(bundle_dir)


@pytest.fixture(scope="module")
def query():
    return synthetic_counts(n_cells=150, seed=7)


def test_onnx_labels_equal_the_torch_model(predictor, fitted_model, query):
    result = predictor.predict(query)
    torch_latent = fitted_model.transform(query)
    np.testing.assert_array_equal(result.cluster, fitted_model.predict(query))
    np.testing.assert_allclose(result.latent, torch_latent, atol=1e-4, rtol=1e-4)


def test_graph_runs_at_most_graph_rows_cells_per_call(bundle_dir, monkeypatch):
    """A block larger than GRAPH_ROWS goes through ONNX Runtime in slices (bounded buffers) and
    gives the same numbers as one call over all its cells."""
    from sccsa_infer import predictor as predictor_module

    fresh = Predictor(bundle_dir)
    rows = []
    run = fresh.session.run
    fresh.session.run = lambda names, feeds: rows.append(len(feeds["counts"])) or run(names, feeds)
    cells = predictor_module.GRAPH_ROWS * 2 + 7
    counts = synthetic_counts(n_cells=cells, seed=3).X.toarray()[:, : len(fresh.genes)]
    totals = counts.sum(axis=1) + 1.0
    sliced = fresh.run(counts, totals)
    assert rows == [predictor_module.GRAPH_ROWS, predictor_module.GRAPH_ROWS, 7]
    monkeypatch.setattr(predictor_module, "GRAPH_ROWS", cells)
    whole = fresh.run(counts, totals)
    assert rows[3:] == [cells]
    for name, values in whole.items():
        assert sliced[name].shape == values.shape
        np.testing.assert_allclose(sliced[name], values, rtol=1e-5, atol=1e-5)


def test_prediction_fields(predictor, query):
    result = predictor.predict(query)
    k = predictor.bundle.n_clusters
    assert len(result) == query.n_obs
    assert result.prob.shape == (query.n_obs, k)
    np.testing.assert_allclose(result.prob.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(result.confidence, result.prob.max(axis=1))
    assert np.all(result.distance >= 0) and np.isfinite(result.latent).all()
    names = set(result.label)
    assert names <= set(predictor.bundle.cluster_names) | {"unassigned"}
    frame = result.to_frame(query.obs_names, latent=True)
    assert {"sccsa_cluster", "sccsa_label", "sccsa_confidence", "sccsa_distance", "sccsa_unassigned",
            "sccsa_latent_0"} <= set(frame.columns)


def test_labels_track_the_synthetic_groups(predictor, query):
    result = predictor.predict(query)
    agreement = np.mean(result.label == query.obs["cell_type"].astype(str).to_numpy())
    assert agreement > 0.9


def test_input_is_not_modified(predictor, query):
    before = query.X.copy()
    predictor.predict(query)
    assert (query.X != before).nnz == 0


def test_matrix_input_with_permuted_genes(predictor, query):
    order = np.random.default_rng(0).permutation(query.n_vars)
    permuted = query.X[:, order]
    genes = [query.var_names[i] for i in order]
    expected = predictor.predict(query).cluster
    np.testing.assert_array_equal(predictor.predict(permuted, gene_names=genes).cluster, expected)
    np.testing.assert_array_equal(predictor.predict(permuted.toarray(), gene_names=genes).cluster, expected)
    with pytest.raises(InputDataError, match="gene_names"):
        predictor.predict(permuted)


def test_zero_count_cells_are_labelled_and_flagged(predictor, query):
    x = query.X.toarray()
    x[:3] = 0
    result = predictor.predict(sp.csr_matrix(x), gene_names=list(query.var_names))
    assert result.unassigned[:3].all()
    assert np.isfinite(result.latent).all() and np.isfinite(result.distance).all()


def test_library_sizes_can_be_given(predictor, query):
    totals = np.asarray(query.X.sum(axis=1)).ravel()
    same = predictor.predict(query, total_counts=totals)
    np.testing.assert_array_equal(same.cluster, predictor.predict(query).cluster)
    with pytest.raises(InputDataError, match="smaller than the counts"):
        predictor.predict(query, total_counts=totals / 2)


def test_shared_predictor_is_thread_safe(predictor, query):
    expected = predictor.predict(query, batch_size=16)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: predictor.predict(query, batch_size=16), range(16)))
    for result in results:
        np.testing.assert_array_equal(result.cluster, expected.cluster)
        np.testing.assert_array_equal(result.latent, expected.latent)


def test_batch_size_does_not_change_results(predictor, query):
    a = predictor.predict(query, batch_size=1)
    b = predictor.predict(query, batch_size=1000)
    np.testing.assert_array_equal(a.cluster, b.cluster)
    np.testing.assert_allclose(a.latent, b.latent, atol=1e-5)


def test_bad_query_values(predictor, query):
    x = query.X.toarray()
    x[4, 2] = -1
    with pytest.raises(InputDataError, match="negative"):
        predictor.predict(x, gene_names=list(query.var_names))
    x[4, 2] = 0.5
    with pytest.raises(InputDataError, match="not raw counts"):
        predictor.predict(x, gene_names=list(query.var_names))
    with pytest.raises(InputDataError, match="zero cells"):
        predictor.predict(x[:0], gene_names=list(query.var_names))


def test_predictor_pickles_and_runs_in_another_process(bundle_dir, query_h5ad):
    """Engines ship the Predictor to workers: it pickles, and a spawned process labels the same."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import anndata as ad

    predictor = Predictor(bundle_dir, n_threads=1)
    query = ad.read_h5ad(query_h5ad)
    expected = predictor.predict(query)
    copy = pickle.loads(pickle.dumps(predictor))
    np.testing.assert_array_equal(copy.predict(query).cluster, expected.cluster)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        remote = pool.submit(_predict_in_worker, predictor, query).result(timeout=300)
    np.testing.assert_array_equal(remote, expected.cluster)


def _predict_in_worker(predictor, query):
    return predictor.predict(query).cluster


def test_unavailable_provider_is_a_clear_error(bundle_dir):
    from sccsa_infer.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="has no NoSuchExecutionProvider"):
        Predictor(bundle_dir, providers=["NoSuchExecutionProvider"])
    assert Predictor(bundle_dir, providers=["CPUExecutionProvider"]).providers == ["CPUExecutionProvider"]


def test_idle_threads_sleep_unless_asked_to_spin(bundle_dir):
    key = "session.intra_op.allow_spinning"
    assert Predictor(bundle_dir).session.get_session_options().get_session_config_entry(key) == "0"
    spinning = Predictor(bundle_dir, spin_wait=True)
    assert spinning.session.get_session_options().get_session_config_entry(key) == "1"
    assert pickle.loads(pickle.dumps(spinning)).session.get_session_options().get_session_config_entry(key) == "1"
