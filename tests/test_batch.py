"""batch_key: clusters follow cell types, not batches; the bundle records the batches and serving
needs none, including for a batch training never saw."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from conftest import FAST_TRAINING, synthetic_counts, with_batches
from sccsa_infer import Predictor
from sccsa_infer.bundle import load_bundle
from sccsa_infer.errors import InputDataError, SccsaWarning
from sccsa_train import SCCSA
from sccsa_train.batches import read_batches

@pytest.fixture(scope="module")
def donors() -> ad.AnnData:
    return with_batches(synthetic_counts(n_cells=300, n_genes=60), ["d1", "d2"], {"d1": 1.0, "d2": 8.0})


@pytest.fixture(scope="module")
def batch_aware(donors) -> SCCSA:
    return SCCSA(3, n_genes=60, batch_key="donor", random_state=0, **FAST_TRAINING).fit(donors)


def test_batch_key_gives_type_clusters_not_donor_clusters(donors, batch_aware):
    truth, donor = donors.obs["cell_type"], donors.obs["donor"]
    assert adjusted_rand_score(truth, batch_aware.labels_) > 0.9
    assert normalized_mutual_info_score(donor, batch_aware.labels_) < 0.05
    assert batch_aware.state_.batches == {"d1": 150, "d2": 150}
    assert batch_aware.net_.cae.n_covariates == 2


def test_without_batch_key_nothing_changes(donors):
    auto = SCCSA(3, n_genes=60, random_state=0, **FAST_TRAINING).fit(donors)
    kmeans = SCCSA(3, n_genes=60, random_state=0, init="kmeans", **FAST_TRAINING).fit(donors)
    np.testing.assert_array_equal(auto.labels_, kmeans.labels_)
    assert auto.state_.batches is None and auto.net_.cae.n_covariates == 0


def test_bundle_records_batches_and_serving_labels_an_unseen_batch_without_the_column(batch_aware, tmp_path):
    batch_aware.export(tmp_path / "bundle")
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.metadata["training"]["batch_key"] == "donor"
    assert bundle.metadata["training"]["batches"] == {"d1": 150, "d2": 150}
    query = with_batches(synthetic_counts(n_cells=150, n_genes=60, seed=7), ["d3"], {"d3": 4.0}, seed=3)
    del query.obs["donor"]  # serving never reads the batch
    result = Predictor(tmp_path / "bundle").predict(query)
    assert adjusted_rand_score(query.obs["cell_type"], result.cluster) > 0.9


def test_save_load_and_partial_fit_with_a_new_batch(batch_aware, donors, tmp_path):
    batch_aware.save(tmp_path / "model")
    loaded = SCCSA.load(tmp_path / "model")
    assert loaded.state_.batches == batch_aware.state_.batches
    np.testing.assert_array_equal(loaded.predict(donors), batch_aware.predict(donors))
    more = with_batches(synthetic_counts(n_cells=90, n_genes=60, seed=5), ["d2", "d9"], {"d2": 8.0, "d9": 3.0})
    with pytest.warns(SccsaWarning, match="'d9' of obs\\['donor'\\] were not in training"):
        loaded.partial_fit(more, epochs=2)
    assert loaded.labels_.shape == (90,) and loaded.state_.batches == batch_aware.state_.batches
    loaded.set_params(batch_key=None)
    with pytest.raises(InputDataError, match="trained with a batch_key, so partial_fit needs one"):
        loaded.partial_fit(more, epochs=1)


def test_bad_batch_columns_are_refused_before_any_work(donors, monkeypatch):
    import sccsa_train.estimator as estimator

    monkeypatch.setattr(estimator, "prepare", lambda *a, **k: pytest.fail("prepare ran before the batch check"))
    with pytest.raises(InputDataError, match="batch_key 'sample' is not an obs column; available: cell_type, donor"):
        SCCSA(3, batch_key="sample", **FAST_TRAINING).fit(donors)
    holes = donors.copy()
    holes.obs["donor"] = holes.obs["donor"].astype(object)
    holes.obs.iloc[:4, holes.obs.columns.get_loc("donor")] = None
    with pytest.raises(InputDataError, match="obs\\['donor'\\] has 4 missing value"):
        SCCSA(3, batch_key="donor", **FAST_TRAINING).fit(holes)


def test_one_batch_warns_and_trains_as_without_the_key(donors):
    single = donors[donors.obs["donor"] == "d1"].copy()
    with pytest.warns(SccsaWarning, match="holds one batch \\('d1'\\) only"):
        keyed = SCCSA(3, n_genes=60, batch_key="donor", random_state=0, **FAST_TRAINING).fit(single)
    plain = SCCSA(3, n_genes=60, random_state=0, **FAST_TRAINING).fit(single)
    np.testing.assert_array_equal(keyed.labels_, plain.labels_)
    assert keyed.state_.batches is None


def test_batches_one_hot_gives_zeros_for_unknown_batches():
    adata = ad.AnnData(X=np.zeros((4, 1), dtype=np.float32), obs=pd.DataFrame({"b": ["x", "y", "z", "x"]}, index=["c0", "c1", "c2", "c3"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = read_batches(adata, "b", np.arange(4), known=("x", "y"))
    np.testing.assert_array_equal(batches.one_hot().numpy(), [[1, 0], [0, 1], [0, 0], [1, 0]])
    assert batches.sizes() == {"x": 2, "y": 1}
