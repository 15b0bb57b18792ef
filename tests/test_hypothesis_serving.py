"""Property-based tests of the serving path: random sparse counts, gene permutations and subsets."""

from contextlib import nullcontext

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sccsa_infer import Predictor

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def predictor(bundle_dir):
    return Predictor(bundle_dir)


@st.composite
def count_matrices(draw, n_genes: int):
    n_cells = draw(st.integers(1, 40))
    density = draw(st.floats(0.0, 0.6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    dense = rng.poisson(draw(st.floats(0.1, 50.0)), size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < density)
    return sp.csr_matrix(dense.astype(np.float32)), seed


def _reference(predictor, matrix, totals=None):
    """The graph run directly on the panel-aligned matrix (no alignment code involved)."""
    totals = np.asarray(matrix.sum(axis=1)).ravel() if totals is None else totals
    return predictor.run(matrix.toarray(), totals)


@SETTINGS
@given(data=st.data())
def test_random_counts_never_crash_or_nan(predictor, data):
    matrix, _ = data.draw(count_matrices(len(predictor.genes)))
    result = predictor.predict(matrix, gene_names=predictor.genes)
    assert np.isfinite(result.latent).all() and np.isfinite(result.distance).all() and np.isfinite(result.prob).all()
    assert ((result.cluster >= 0) & (result.cluster < predictor.bundle.n_clusters)).all()
    np.testing.assert_array_equal(result.cluster, _reference(predictor, matrix)["label"])


@SETTINGS
@given(data=st.data())
def test_gene_permutations_give_identical_labels(predictor, data):
    matrix, seed = data.draw(count_matrices(len(predictor.genes)))
    extra = data.draw(st.integers(0, 5))
    rng = np.random.default_rng(seed)
    # add unrelated genes, then shuffle columns: the panel part must be found by name
    full = sp.hstack([matrix, sp.csr_matrix(rng.poisson(3, size=(matrix.shape[0], extra)).astype(np.float32))]).tocsr()
    names = list(predictor.genes) + [f"UNRELATED{i}" for i in range(extra)]
    order = rng.permutation(full.shape[1])
    shuffled = predictor.predict(full[:, order], gene_names=[names[i] for i in order])
    expected = _reference(predictor, matrix, totals=np.asarray(full.sum(axis=1)).ravel())
    np.testing.assert_array_equal(shuffled.cluster, expected["label"])


@SETTINGS
@given(data=st.data())
def test_gene_subsets_equal_zero_filled_panel(predictor, data):
    matrix, seed = data.draw(count_matrices(len(predictor.genes)))
    genes = np.array(predictor.genes)
    n_keep = data.draw(st.integers(int(np.ceil(0.5 * len(genes))), len(genes)))
    keep = np.sort(np.random.default_rng(seed).choice(len(genes), n_keep, replace=False))
    with pytest.warns(UserWarning) if n_keep < len(genes) else nullcontext():
        result = predictor.predict(matrix[:, keep], gene_names=list(genes[keep]))
    zero_filled = sp.lil_matrix(matrix.shape, dtype=np.float32)
    zero_filled[:, keep] = matrix[:, keep]
    expected = _reference(predictor, zero_filled.tocsr())
    np.testing.assert_array_equal(result.cluster, expected["label"])
    assert np.isfinite(result.latent).all()

