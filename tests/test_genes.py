"""Gene panel: F-test/HVG selection, gene order, standardisation, the joblib selector."""

import io

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.feature_selection import SelectKBest, f_classif

from conftest import synthetic_counts
from sccsa_train.genes import HighlyVariableGeneSelector, build_panel, fit_selector, order_genes
from sccsa_train.preprocess import prepare


@pytest.fixture(scope="module")
def data():
    adata = synthetic_counts(n_cells=200, n_genes=60)
    return prepare(adata), adata.obs["cell_type"].astype(str).to_numpy()


def test_ftest_selection_is_selectkbest(data):
    prepared, labels = data
    selector = fit_selector(prepared.lognorm, prepared.genes, 20, "ftest", labels)
    reference = SelectKBest(f_classif, k=20).fit(prepared.lognorm, labels)
    np.testing.assert_array_equal(selector.get_support(), reference.get_support())
    assert list(selector.get_feature_names_out()) == [g for g, s in zip(prepared.genes, reference.get_support()) if s]
    restored = joblib.load(io.BytesIO(_dump(selector)))
    frame = pd.DataFrame.sparse.from_spmatrix(prepared.lognorm, columns=prepared.genes)
    np.testing.assert_array_equal(restored.transform(frame).toarray(),
                                  prepared.lognorm[:, reference.get_support()].toarray())


def _dump(obj) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer)
    return buffer.getvalue()


def test_informative_genes_are_found(data):
    prepared, labels = data
    selector = fit_selector(prepared.lognorm, prepared.genes, 20, "ftest", labels)
    # the synthetic groups differ in genes G0..G59 by blocks of 20: the top genes are all block genes
    assert len(selector.get_feature_names_out()) == 20


def test_hvg_selector(data):
    prepared, _ = data
    selector = fit_selector(prepared.lognorm, prepared.genes, 15, "hvg", None)
    assert isinstance(selector, HighlyVariableGeneSelector)
    assert selector.get_support().sum() == 15


def test_selection_errors(data):
    prepared, labels = data
    with pytest.raises(Exception, match="Unknown gene selection"):
        fit_selector(prepared.lognorm, prepared.genes, 10, "pca", labels)
    with pytest.raises(Exception, match="at least two groups"):
        fit_selector(prepared.lognorm, prepared.genes, 10, "ftest", np.zeros(len(labels)))


def test_correlation_order_puts_correlated_genes_together():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 1)), rng.normal(size=(500, 1))
    # columns alternate between two co-expressed groups: 0,2,4 follow a; 1,3,5 follow b
    values = np.hstack([a + 0.1 * rng.normal(size=(500, 1)) if j % 2 == 0 else b + 0.1 * rng.normal(size=(500, 1))
                        for j in range(6)])
    order = order_genes(values, np.zeros(6), "correlation")
    groups = [j % 2 for j in order]
    assert groups in ([0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(order_genes(values, np.arange(6.0), "fscore"), [5, 4, 3, 2, 1, 0])
    np.testing.assert_array_equal(order_genes(values, np.zeros(6), "input"), np.arange(6))


def test_panel_standardisation(data):
    prepared, labels = data
    selector = fit_selector(prepared.lognorm, prepared.genes, 20, "ftest", labels)
    panel, values = build_panel(prepared.lognorm, prepared.genes, selector, "correlation")
    z = panel.standardise(values)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-4)
    assert sorted(panel.genes) == sorted(selector.get_feature_names_out())
    assert np.abs(panel.standardise(values * 1000)).max() <= panel.clip
    assert sp.issparse(prepared.lognorm)
