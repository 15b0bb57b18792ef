"""The scikit-learn-style SCCSA estimator: results, determinism, AnnData conventions, errors."""

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from conftest import FAST_TRAINING, REPO, synthetic_counts
from sccsa_infer.errors import InputDataError, InvalidParameterError
from sccsa_train import SCCSA


@pytest.fixture(scope="module")
def adata():
    return synthetic_counts(n_cells=240, n_genes=60)


@pytest.fixture(scope="module")
def unsupervised(adata):
    return SCCSA(3, n_genes=40, random_state=1, **FAST_TRAINING).fit(adata)


def test_fit_results(unsupervised, adata):
    model = unsupervised
    assert model.labels_.shape == (adata.n_obs,) and model.n_clusters_ == 3
    assert adjusted_rand_score(adata.obs["cell_type"], model.labels_) > 0.9
    assert model.state_.cluster_names is None  # no labels used
    assert len(model.genes_) == 40 and model.alpha_.shape == (adata.n_obs,)
    np.testing.assert_array_equal(model.predict(adata), model.labels_)
    np.testing.assert_allclose(model.transform(adata), model.state_.latent, atol=1e-4)
    history = model.history_
    assert len(history.pretrain) == FAST_TRAINING["pretrain_epochs"] and history.cluster
    assert all(np.isfinite(h["reconstruction"]) for h in history.pretrain)


def test_same_seed_same_labels_other_seed_runs_too(adata, unsupervised):
    again = SCCSA(3, n_genes=40, random_state=1, **FAST_TRAINING).fit(adata)
    np.testing.assert_array_equal(again.labels_, unsupervised.labels_)
    np.testing.assert_array_equal(again.state_.latent, unsupervised.state_.latent)


def test_deterministic_mode_fills_no_memory_and_that_changes_no_result(adata, unsupervised, monkeypatch):
    """seed_everything leaves deterministic mode's NaN fill of new memory off (it cost 17 % of a
    CPU step): a fit with the fill on must give the same bits, or some kernel reads memory it
    did not write."""
    import torch

    from sccsa_train import fit as fit_module

    original = fit_module.seed_everything
    assert torch.utils.deterministic.fill_uninitialized_memory is False  # the fit above set it

    def filling(seed: int) -> None:
        original(seed)
        torch.utils.deterministic.fill_uninitialized_memory = True

    monkeypatch.setattr(fit_module, "seed_everything", filling)
    try:
        filled = SCCSA(3, n_genes=40, random_state=1, **FAST_TRAINING).fit(adata)
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = False
    np.testing.assert_array_equal(filled.state_.latent, unsupervised.state_.latent)
    np.testing.assert_array_equal(filled.labels_, unsupervised.labels_)
    losses = [[epoch["reconstruction"] for epoch in model.history_.pretrain] for model in (filled, unsupervised)]
    assert losses[0] == losses[1]


THREADS_SEEN_BY_TRAINING = """
import torch
import sccsa_train.estimator as estimator
from conftest import FAST_TRAINING, synthetic_counts
seen, train = [], estimator.train
def spy(*args, **kwargs):
    seen.append(torch.get_num_threads())
    return train(*args, **kwargs)
estimator.train = spy
estimator.SCCSA(3, n_genes=40, random_state=0, **FAST_TRAINING).fit(synthetic_counts(n_cells=120))
print(seen, torch.get_num_threads())
"""


def test_training_keeps_the_thread_count_the_user_set():
    # Scanpy's numba kernels start numba's OpenMP layer, which resets the OpenMP runtime torch
    # shares to NUMBA_NUM_THREADS threads; training must still use the one thread asked for.
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="3", PYTHONPATH=str(REPO / "tests"))
    result = subprocess.run([sys.executable, "-c", THREADS_SEEN_BY_TRAINING], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["[1]", "1"]


def test_fit_does_not_modify_the_input_and_annotate_follows_scanpy(adata, unsupervised):
    before = adata.copy()
    SCCSA(3, n_genes=40, random_state=2, **FAST_TRAINING).fit(adata)
    assert (adata.X != before.X).nnz == 0 and list(adata.obs.columns) == list(before.obs.columns)
    copy = unsupervised.annotate(adata, copy=True)
    assert "sccsa_cluster" not in adata.obs and copy.obs["sccsa_cluster"].dtype == "category"
    assert copy.obsm["X_sccsa"].shape == (adata.n_obs, unsupervised.latent_dim)
    target = adata.copy()
    assert unsupervised.annotate(target) is None and "sccsa_cluster" in target.obs


def test_reference_mode_names_clusters(fitted_model, synthetic):
    names = fitted_model.state_.cluster_names
    assert sorted(names) == ["type0", "type1", "type2"]
    copy = fitted_model.annotate(synthetic, copy=True)
    assert (copy.obs["sccsa_label"].astype(str) == synthetic.obs["cell_type"].astype(str)).mean() > 0.9


def test_auto_k_uses_the_number_of_labels(synthetic):
    model = SCCSA("auto", labels_key="cell_type", n_genes=30, random_state=0, **FAST_TRAINING).fit(synthetic)
    assert model.n_clusters_ == 3 and model.state_.n_clusters_method.startswith("number of distinct")


def test_empty_cells_are_left_out_and_reported(adata):
    x = adata.X.toarray()
    x[:2] = 0
    with_empty = ad.AnnData(X=sp.csr_matrix(x), obs=adata.obs.copy(), var=adata.var.copy())
    with pytest.warns(UserWarning, match="zero counts"):
        model = SCCSA(3, n_genes=40, random_state=0, **FAST_TRAINING).fit(with_empty)
    assert (model.labels_[:2] == -1).all() and (model.labels_[2:] >= 0).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_clusters=500), "only 240 cells"),
    (dict(n_clusters=200), "too few for 200 clusters"),
    (dict(n_clusters=3, labels_key="nope"), "labels_key 'nope'"),
    (dict(n_clusters=3, layer="counts"), "Layer 'counts'"),
])
def test_bad_inputs(adata, kwargs, message):
    with pytest.raises(InputDataError, match=message):
        SCCSA(**kwargs, **FAST_TRAINING).fit(adata)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_clusters=1), "n_clusters=1 is invalid: expected 'auto' or an integer ≥ 2"),
    (dict(n_clusters=3, genes="pca"), "genes='pca' is invalid: expected one of ftest, hvg"),
    (dict(n_clusters=3, cc="maybe"), "expected one of sa, fixed, off"),
    (dict(n_clusters=3, alpha=2.0), "alpha=2.0 is invalid: must be ≤ 1"),
    (dict(n_clusters=3, lr=0.0), "lr=0.0 is invalid: must be > 0"),
    (dict(n_clusters=3, channels=(8, 0, 8)), "three positive integers"),
    (dict(n_clusters=3, batch_norm="yes"), "expected True or False"),
    (dict(n_clusters=3, init="random"), "init='random' is invalid"),
    (dict(n_clusters=3, precision="16-mixed"), "precision='16-mixed' is invalid: expected one of 32, bf16-mixed, auto"),
])
def test_bad_parameters_raise_invalid_parameter_error_before_any_work(adata, kwargs, message, monkeypatch):
    from sccsa_train import estimator

    monkeypatch.setattr(estimator, "prepare", lambda *a, **k: pytest.fail("validated after work started"))
    with pytest.raises(InvalidParameterError, match=message):
        SCCSA(**kwargs).fit(adata)


def test_missing_labels_are_rejected(adata):
    a = adata.copy()
    a.obs["partial"] = a.obs["cell_type"].astype(object)
    a.obs.iloc[0, a.obs.columns.get_loc("partial")] = None
    with pytest.raises(InputDataError, match="missing value"):
        SCCSA(3, labels_key="partial", **FAST_TRAINING).fit(a)


def test_unfitted_model_says_so(adata):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted"):
        SCCSA(3).predict(adata)


def test_label_initialisation_puts_each_centroid_at_its_labels_mean_latent():
    import torch

    from sccsa_train.fit import Schedule, embed_all, initialise_centroids
    from sccsa_train.genes import GenePanel
    from sccsa_train.model import SCCSANet
    from sccsa_train.network_input import NetworkInput

    torch.manual_seed(0)
    net = SCCSANet(16, 3, latent_dim=4, attention_dim=8, channels=(4, 4, 4))
    identity = GenePanel(genes=[f"g{i}" for i in range(16)], mean=np.zeros(16), std=np.ones(16), scores=np.ones(16))
    x = NetworkInput(np.random.default_rng(0).normal(size=(60, 16)), identity)
    start = np.arange(60) % 3
    labels = initialise_centroids(net, x, Schedule(beta_scale=2.0), seed=0, start_labels=start)
    latent, _ = embed_all(net, x)
    expected = torch.stack([latent[torch.as_tensor(start) == k].mean(0) for k in range(3)])
    torch.testing.assert_close(net.centroids, expected)
    distances = net.squared_distances(latent)
    np.testing.assert_array_equal(labels, distances.argmin(1).numpy())
    assert float(net.beta) == pytest.approx(2.0 / float(distances.min(1).values.mean()), rel=1e-5)


def test_init_labels_orders_clusters_like_the_reference_labels(synthetic):
    # With no stage 2, cluster k starts (and stays) at the k-th sorted label: names come out in order.
    model = SCCSA(3, labels_key="cell_type", init="labels", n_genes=30, random_state=0,
                  **{**FAST_TRAINING, "cluster_epochs": 0}).fit(synthetic)
    assert model.state_.cluster_names == ["type0", "type1", "type2"]
    assert adjusted_rand_score(synthetic.obs["cell_type"], model.labels_) > 0.9


def test_init_labels_without_labels_uses_the_consensus_pseudo_labels(adata):
    model = SCCSA(3, genes="hvg", init="labels", n_genes=40, random_state=0, **FAST_TRAINING).fit(adata)
    assert model.state_.pseudo_labels is not None  # computed for the start even though HVGs need no labels
    assert adjusted_rand_score(adata.obs["cell_type"], model.labels_) > 0.9


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_clusters=2, labels_key="cell_type", init="labels", objective="cluster"),
     "labels have 3 classes and n_clusters is 2"),
    (dict(n_clusters=2, labels_key="cell_type"), "cell_type has 3 classes and n_clusters is 2"),
])
def test_bad_init(adata, kwargs, message):
    with pytest.raises(InputDataError, match=message):
        SCCSA(**kwargs, **FAST_TRAINING).fit(adata)


def test_pretraining_stops_at_its_step_budget(adata):
    # 240 cells in batches of 64: 4 steps per epoch, so 10 steps end inside the third epoch.
    model = SCCSA(3, n_genes=40, random_state=0, **{**FAST_TRAINING, "pretrain_max_steps": 10,
                                                    "cluster_epochs": 0}).fit(adata)
    pretrain = model.history_.pretrain
    assert [h["steps"] for h in pretrain] == [4, 8, 10]
    assert all(np.isfinite(h["reconstruction"]) for h in pretrain)


@pytest.mark.parametrize(("extra", "planned"), [({"pretrain_max_steps": 10}, 10), ({"pretrain_epochs": 3}, 12)])
def test_one_cycle_anneals_the_learning_rate_over_exactly_the_steps_run(adata, monkeypatch, extra, planned):
    """lr_schedule='one_cycle' rises to lr, then anneals to ~0 at stage 1's last step (the step
    budget, else the epochs); OneCycleLR refuses a step past its total, so the count must be exact."""
    import torch

    rates = []

    class Recording(torch.optim.lr_scheduler.OneCycleLR):
        def step(self, *args, **kwargs):
            super().step(*args, **kwargs)
            rates.append(self.get_last_lr()[0])

    monkeypatch.setattr(torch.optim.lr_scheduler, "OneCycleLR", Recording)
    params = {**FAST_TRAINING, "cluster_epochs": 0, "lr": 2e-3, "lr_schedule": "one_cycle", **extra}
    model = SCCSA(3, n_genes=40, random_state=0, **params).fit(adata)  # 240 cells, batches of 64
    assert model.history_.pretrain[-1]["steps"] == planned
    assert len(rates) == planned + 1  # the scheduler's own first step, then one after each optimizer step
    used = rates[:planned]  # the rate of each optimizer step (the last entry would be the next step's)
    assert used[0] == pytest.approx(2e-3 / 25) and max(used) == pytest.approx(2e-3, rel=0.02) and used[-1] < 1e-6


def test_batches_per_epoch_counts_the_batches_drawn():
    import torch

    from sccsa_train.fit import _batches, batches_per_epoch

    for n in (2, 63, 64, 65, 129, 240, 257):
        drawn = _batches(n, 64, torch.Generator().manual_seed(0))
        assert len(drawn) == batches_per_epoch(n, 64) and sum(map(len, drawn)) == n


def test_bf16_mixed_trains_in_bfloat16_and_keeps_the_fit_float32(adata, unsupervised, monkeypatch):
    """precision='bf16-mixed' runs the network's training passes under bfloat16 autocast (CPU
    autocast here; the GPU rows are on the speed page); what comes out of them stays float32."""
    import torch

    from sccsa_train import fit
    from sccsa_train.model import SCCSANet

    inside, outside = [], []
    forward, passes = SCCSANet.forward, fit.forward_pass

    def forward_spy(self, x, covariates=None):
        out = forward(self, x, covariates)
        inside.append((torch.is_autocast_enabled("cpu"), out.latent.dtype))
        return out

    def pass_spy(*args):
        out = passes(*args)
        outside.append((out.latent.dtype, out.reconstruction.dtype))
        return out

    monkeypatch.setattr(SCCSANet, "forward", forward_spy)
    monkeypatch.setattr(fit, "forward_pass", pass_spy)
    model = SCCSA(3, n_genes=40, random_state=1, precision="bf16-mixed", **FAST_TRAINING).fit(adata)
    assert inside and set(inside) == {(True, torch.bfloat16)}
    assert outside and set(outside) == {(torch.float32, torch.float32)}
    assert all(p.dtype == torch.float32 for p in model.net_.parameters()) and model.state_.latent.dtype == np.float32
    # bfloat16 changes the numbers, not what the model finds on this easy synthetic set
    assert adjusted_rand_score(unsupervised.labels_, model.labels_) > 0.9
    assert model.get_params()["precision"] == "bf16-mixed"
    inside.clear()
    SCCSA(3, n_genes=40, random_state=1, **{**FAST_TRAINING, "pretrain_epochs": 1, "cluster_epochs": 0}).fit(adata)
    assert inside and set(inside) == {(False, torch.float32)}  # the default: float32 throughout


def test_input_noise_denoises_from_a_seeded_corruption(adata):
    # Stage 1 reconstructs the clean panel from a corrupted one: harder than from the clean panel,
    # so its loss stays higher; the corruption is drawn from the run's seed, so it repeats.
    params = dict(n_genes=40, random_state=0, **{**FAST_TRAINING, "cluster_epochs": 0})
    clean = SCCSA(3, **params).fit(adata)
    noisy = SCCSA(3, input_noise=2.0, **params).fit(adata)
    again = SCCSA(3, input_noise=2.0, **params).fit(adata)
    losses = [h["reconstruction"] for h in noisy.history_.pretrain]
    assert losses == [h["reconstruction"] for h in again.history_.pretrain]
    np.testing.assert_array_equal(noisy.state_.latent, again.state_.latent)
    assert noisy.history_.pretrain[-1]["reconstruction"] > clean.history_.pretrain[-1]["reconstruction"]
    with pytest.raises(InvalidParameterError, match="input_noise"):
        SCCSA(3, input_noise=-0.5).fit(adata)


def test_stage_2_stops_at_its_step_budget_after_updating_centroids_and_labels(adata):
    # 4 steps per epoch: a budget of 6 ends inside the second epoch, which still updates μ and the labels.
    import torch

    capped = SCCSA(3, n_genes=40, random_state=0, **{**FAST_TRAINING, "cluster_epochs": 50, "tol": 0.0,
                                                     "cluster_max_steps": 6}).fit(adata)
    cluster = capped.history_.cluster
    assert [h["steps"] for h in cluster] == [4, 6] and not capped.history_.converged
    assert capped.history_.stop == "steps"
    latent = torch.as_tensor(capped.state_.latent)
    np.testing.assert_array_equal(capped.labels_, capped.net_.squared_distances(latent).argmin(1).numpy())
    uncapped = SCCSA(3, n_genes=40, random_state=0, **{**FAST_TRAINING, "cluster_epochs": 2, "tol": 0.0}).fit(adata)
    assert [h["steps"] for h in uncapped.history_.cluster] == [4, 8]  # 0: no budget
    assert uncapped.history_.stop == "epochs"
    np.testing.assert_array_equal(capped.history_.cluster[0]["loss"], uncapped.history_.cluster[0]["loss"])


def test_several_starts_keep_the_one_with_the_best_silhouette(adata, unsupervised):
    import torch
    from sklearn.metrics import silhouette_score

    from sccsa_train.fit import Schedule, latent_kmeans

    assert unsupervised.history_.starts == []  # one start: nothing to choose, nothing scored
    model = SCCSA(3, n_genes=40, random_state=1, **{**FAST_TRAINING, "pretrain_starts": 3,
                                                    "cluster_epochs": 0}).fit(adata)
    starts = model.history_.starts
    assert [s["start"] for s in starts] == [0, 1, 2] and len({s["silhouette"] for s in starts}) == 3
    best = max(starts, key=lambda s: s["silhouette"])
    assert model.history_.pretrain[-1]["reconstruction"] == best["reconstruction"]
    # without stage 2 the kept network's latent is the pretrained one: its K-means partition scores best
    latent = model.state_.latent.astype(np.float64)
    labels = latent_kmeans(torch.from_numpy(latent), 3, Schedule(), seed=1).labels
    assert silhouette_score(latent, labels) == pytest.approx(best["silhouette"], abs=1e-4)
    np.testing.assert_array_equal(model.labels_, labels)
    # the first start is the one-start run's network, so several starts never do worse by the criterion
    assert starts[0]["reconstruction"] == pytest.approx(
        SCCSA(3, n_genes=40, random_state=1, **{**FAST_TRAINING, "cluster_epochs": 0}).fit(adata)
        .history_.pretrain[-1]["reconstruction"])


def test_auto_k_and_the_pseudo_labels_share_one_pca(adata, monkeypatch):
    import sccsa_train.estimator as estimator
    import sccsa_train.n_clusters as n_clusters
    import sccsa_train.pseudolabels as pseudolabels

    calls, original = [], pseudolabels.standard_pcs

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    for module in (estimator, n_clusters, pseudolabels):
        monkeypatch.setattr(module, "standard_pcs", counted)
    model = SCCSA("auto", n_genes=40, random_state=0, **{**FAST_TRAINING, "cluster_epochs": 0}).fit(adata)
    assert len(calls) == 1 and model.state_.pseudo_labels is not None


def test_labels_key_classifies_by_default(fitted_model, synthetic):
    """Reference mode: stage 2 learns the labels, cluster k is the k-th sorted label, the history
    records the cross-entropy, and the exported graph's nearest centroid is the label."""
    assert fitted_model.state_.cluster_names == ["type0", "type1", "type2"]
    codes = np.searchsorted(fitted_model.state_.cluster_names, synthetic.obs["cell_type"].astype(str))
    assert (fitted_model.labels_ == codes).mean() > 0.95
    stage2 = fitted_model.history_.cluster
    assert stage2 and "cross_entropy" in stage2[0] and "l1" not in stage2[0]
    assert stage2[-1]["cross_entropy"] < 0.1  # separable types: the labels are learned
    assert fitted_model.net_.head.weight.requires_grad  # idle in stage 2, unfrozen again afterwards


def test_clustering_stops_once_the_label_change_makes_no_new_low(adata):
    """With tol 0 only ``patience`` (or the cap) can stop a clustering stage 2: it stops in the
    first epoch at which the changed fraction has made no new low for 3 epochs, and with
    patience 0 it runs to cluster_epochs."""
    from sccsa_train.fit import settled

    params = {**FAST_TRAINING, "cluster_epochs": 25, "tol": 0.0}
    model = SCCSA(3, n_genes=40, random_state=0, patience=3, **params).fit(adata)
    changes = [h["label_change"] for h in model.history_.cluster]
    assert model.history_.stop == "patience" and model.history_.converged
    assert settled(changes, 3) and not any(settled(changes[:n], 3) for n in range(1, len(changes)))
    assert len(changes) < 25
    off = SCCSA(3, n_genes=40, random_state=0, patience=0, **params).fit(adata)
    assert len(off.history_.cluster) == 25 and off.history_.stop == "epochs" and not off.history_.converged
    assert [h["label_change"] for h in off.history_.cluster][: len(changes)] == changes


def test_partial_fit_judges_patience_on_its_own_epochs(adata):
    """partial_fit goes on with the fit's history; its stop must not read the fit's epochs, or a
    fit that ended on patience would stop the new run after one epoch."""
    model = SCCSA(3, n_genes=40, random_state=0, patience=3, **{**FAST_TRAINING, "cluster_epochs": 25, "tol": 0.0})
    model.fit(adata)
    before = len(model.history_.cluster)
    assert model.history_.stop == "patience"
    model.partial_fit(adata, epochs=8)
    added = len(model.history_.cluster) - before
    assert added >= 4 and (model.history_.stop == "epochs") == (added == 8)


def test_latent_dim_auto_gives_a_classifier_room_for_every_label_mean(tmp_path):
    """latent_dim='auto': a classifying fit's latent is max(10, K − 1) wide (its nearest label
    centroid is LDA, whose K label means span K − 1 dimensions), a clustering fit's 10; the model,
    the bundle and the served latent all have that width."""
    from sccsa_infer import Predictor

    many = synthetic_counts(n_cells=260, n_genes=78, n_clusters=13)
    fast = {**FAST_TRAINING, "pretrain_epochs": 5, "cluster_epochs": 2, "latent_dim": "auto"}
    classifier = SCCSA(labels_key="cell_type", n_genes=60, random_state=0, **fast).fit(many)
    assert classifier.transform(many).shape == (260, 12)
    served = Predictor(classifier.export(tmp_path / "m")).predict(many)
    assert served.latent.shape == (260, 12)
    again = SCCSA.load(classifier.save(tmp_path / "saved"))  # the width is resolved again from the parameters
    assert np.array_equal(again.transform(many), classifier.transform(many))
    assert classifier.get_params()["latent_dim"] == "auto"  # the parameter as given, resolved per fit
    assert SCCSA(13, n_genes=60, random_state=0, **fast).fit(many).transform(many).shape == (260, 10)
    few = SCCSA(labels_key="cell_type", n_genes=40, random_state=0, **fast).fit(synthetic_counts())
    assert few.transform(synthetic_counts()).shape[1] == 10


def test_objective_cluster_keeps_the_papers_stage_two(synthetic):
    model = SCCSA(3, labels_key="cell_type", objective="cluster", n_genes=30, random_state=0,
                  **FAST_TRAINING).fit(synthetic)
    assert {"l1", "kl"} <= set(model.history_.cluster[0])


def test_classification_stops_when_the_cross_entropy_stalls(synthetic):
    # A loose tol: no 0.5 gain in 10 epochs, so it stops after the 11th of up to 60 epochs.
    model = SCCSA(3, labels_key="cell_type", n_genes=30, random_state=0,
                  **{**FAST_TRAINING, "cluster_epochs": 60, "tol": 0.5}).fit(synthetic)
    assert len(model.history_.cluster) == 11 and model.history_.converged and model.history_.stop == "patience"


def test_a_classifying_stage_two_has_its_own_learning_rate_and_reconstruction_weight(synthetic, monkeypatch):
    """classify_lr / classify_reconstruction_weight drive a classifying stage 2 and nothing else;
    cluster_lr / reconstruction_weight a clustering one (the loss each epoch records is the sum
    of its terms under those weights)."""
    import torch

    import sccsa_train.fit as fit

    rates = []
    adam = torch.optim.Adam
    monkeypatch.setattr(fit.torch.optim, "Adam", lambda params, lr: rates.append(lr) or adam(params, lr=lr))
    weights = dict(cluster_lr=3e-4, classify_lr=2e-3, reconstruction_weight=50.0, classify_reconstruction_weight=4.0)
    classifier = SCCSA(3, labels_key="cell_type", n_genes=30, random_state=0, **weights, **FAST_TRAINING).fit(synthetic)
    clusters = SCCSA(3, n_genes=30, random_state=0, **weights, **FAST_TRAINING).fit(synthetic)
    assert rates[1::2] == [2e-3, 3e-4]  # stage 2 of each fit (stage 1's optimizer comes first)
    for epoch in classifier.history_.cluster:
        assert epoch["loss"] == pytest.approx(epoch["cross_entropy"] + 4.0 * epoch["reconstruction"], rel=1e-5)
    for epoch in clusters.history_.cluster:
        assert epoch["loss"] == pytest.approx(epoch["l1"] + epoch["kl"] + 50.0 * epoch["reconstruction"], rel=1e-5)


def test_a_model_saved_before_the_classify_settings_keeps_training_as_it_did(unsupervised, tmp_path):
    """Such a model's classifying stage 2 ran at cluster_lr and reconstruction_weight, so a loaded
    copy (which partial_fit would train on) gets those rather than today's classify defaults."""
    import json

    path = unsupervised.save(tmp_path / "old")
    meta = json.loads((path / "sccsa_model.json").read_text())
    del meta["params"]["classify_lr"], meta["params"]["classify_reconstruction_weight"]
    (path / "sccsa_model.json").write_text(json.dumps(meta))
    params = SCCSA.load(path).get_params()
    assert params["classify_lr"] == unsupervised.cluster_lr != SCCSA().classify_lr
    assert params["classify_reconstruction_weight"] == unsupervised.reconstruction_weight


@pytest.mark.parametrize("kwargs, message", [
    (dict(objective="classify"), "needs labels_key"),
    (dict(objective="classify", labels_key="cell_type", init="kmeans"), "drop init='kmeans'"),
])
def test_classify_needs_labels_and_their_centroids(adata, kwargs, message):
    with pytest.raises(InvalidParameterError, match=message):
        SCCSA(3, **kwargs, **FAST_TRAINING).fit(adata)


def test_partial_fit_of_a_classifier_needs_labels_it_knows(synthetic):
    model = SCCSA(3, labels_key="cell_type", n_genes=30, random_state=0, **FAST_TRAINING).fit(synthetic)
    before = len(model.history_.cluster)
    model.partial_fit(synthetic[:90].copy(), epochs=2)
    assert len(model.history_.cluster) == before + 2 and "cross_entropy" in model.history_.cluster[-1]
    novel = synthetic[:90].copy()
    novel.obs["cell_type"] = novel.obs["cell_type"].astype(str).replace("type0", "novel")
    with pytest.raises(InputDataError, match="also holds 'novel'"):
        model.partial_fit(novel, epochs=1)


def test_within_class_metric_is_carried_by_the_model_the_bundle_and_a_saved_copy(synthetic, tmp_path):
    """class_metric='within': after stage 2 the latent is whitened by the labels' within-class
    covariance; the stored latent, the labels, the torch model, the exported graph and a
    save/load round trip all use that one map (and a model saved before the map existed loads)."""
    import torch

    from sccsa_infer import Predictor
    from sccsa_train.objective import class_means

    model = SCCSA(3, labels_key="cell_type", class_metric="within", n_genes=30, random_state=0,
                  **FAST_TRAINING).fit(synthetic)
    assert not torch.allclose(model.net_.latent_map, torch.eye(model.net_.latent_map.shape[0]))
    latent = torch.from_numpy(model.state_.latent).double()
    codes = torch.from_numpy(np.searchsorted(model.state_.cluster_names, synthetic.obs["cell_type"].astype(str)))
    centred = latent - class_means(latent, codes, torch.zeros(3, latent.shape[1], dtype=torch.float64))[codes]
    pooled = centred.T @ centred / (len(latent) - 3)
    torch.testing.assert_close(pooled, torch.eye(latent.shape[1], dtype=torch.float64), atol=1e-3, rtol=0)
    np.testing.assert_array_equal(model.labels_, model.net_.squared_distances(latent.float()).argmin(1).numpy())
    np.testing.assert_allclose(model.transform(synthetic), model.state_.latent, atol=1e-4)
    model.export(tmp_path / "bundle")
    np.testing.assert_array_equal(Predictor(tmp_path / "bundle").predict(synthetic).cluster, model.predict(synthetic))
    saved = model.save(tmp_path / "saved")
    np.testing.assert_array_equal(SCCSA.load(saved).predict(synthetic), model.predict(synthetic))
    euclidean = SCCSA(3, labels_key="cell_type", class_metric="euclidean", n_genes=30, random_state=0,
                      **FAST_TRAINING).fit(synthetic)
    path = euclidean.save(tmp_path / "old")
    weights = torch.load(path / "weights.pt", weights_only=True)
    del weights["latent_map"]  # as saved before class_metric existed
    torch.save(weights, path / "weights.pt")
    np.testing.assert_array_equal(SCCSA.load(path).predict(synthetic), euclidean.predict(synthetic))


def test_a_clustering_stage_two_ignores_the_class_metric(unsupervised):
    """class_metric (default 'within') only shapes a classifying stage 2: without labels the latent
    is the encoder's code as trained, with no whitening map."""
    import torch

    assert unsupervised.class_metric == "within"
    assert torch.equal(unsupervised.net_.latent_map, torch.eye(unsupervised.net_.latent_map.shape[0]))


@pytest.mark.parametrize("flag", [["--class-metric", "within"], ["--classify-lr", "1e-3"],
                                  ["--classify-reconstruction-weight", "10"]])
@pytest.mark.parametrize("extra", [[], ["--labels-key", "cell_type", "--objective", "cluster"]])
def test_sccsa_train_refuses_an_explicit_class_metric_without_a_classifying_stage_two(adata, tmp_path, monkeypatch,
                                                                                       extra, flag):
    from click.testing import CliRunner

    from sccsa_train.cli import main as train_main

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(SCCSA, "fit", no_training)
    data = tmp_path / "ref.h5ad"
    adata.write_h5ad(data)
    result = CliRunner().invoke(train_main, [str(data), "-k", "3", *extra, *flag, "--out", str(tmp_path / "m")])
    assert result.exit_code != 0 and "needs a classifying stage 2" in result.output, result.output
    assert flag[0] in result.output
    assert not (tmp_path / "m").exists()


def test_precision_auto_trains_in_bfloat16_only_where_the_device_computes_it(adata, monkeypatch, tmp_path):
    """precision='auto' resolves per fit, from the device: on a CPU, bf16-mixed when its flags name
    AVX-512-BF16 or AMX-BF16, float32 otherwise (and where the flags cannot be read); the model keeps
    'auto' as its parameter, so a saved model refitted elsewhere asks that machine again."""
    from sccsa_train import fit, precision

    seen = []
    passes = fit.forward_pass

    def pass_spy(model, batch, covariates, chosen):
        seen.append(chosen)
        return passes(model, batch, covariates, chosen)

    monkeypatch.setattr(fit, "forward_pass", pass_spy)
    quick = {**FAST_TRAINING, "pretrain_epochs": 1, "cluster_epochs": 1}
    for flags, expected in (("fpu avx2 avx512f avx512_bf16", "bf16-mixed"), ("fpu amx_tile amx_bf16", "bf16-mixed"),
                            ("fpu avx2 fma", "32"), (None, "32")):
        cpuinfo = tmp_path / "cpuinfo"
        if flags is None:
            cpuinfo.unlink(missing_ok=True)
        else:
            cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n")
        monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
        seen.clear()
        model = SCCSA(3, n_genes=40, random_state=1, device="cpu", precision="auto", **quick).fit(adata)
        assert seen and set(seen) == {expected}, flags
        assert model.get_params()["precision"] == "auto" and model.history_.precision == expected
        assert model.history_.as_dict()["precision"] == expected  # what report.json names
    model.save(tmp_path / "saved")
    assert SCCSA.load(tmp_path / "saved").history_.precision == "32"


def test_precision_auto_on_cuda_asks_for_native_bfloat16(monkeypatch):
    """On a CUDA device 'auto' is bf16-mixed only where torch reports bfloat16 without emulation;
    an explicit precision is never changed."""
    import torch

    from sccsa_train.precision import resolve_precision

    asked = []

    def supported(including_emulation=True):
        asked.append(including_emulation)
        return answer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    for answer, expected in ((True, "bf16-mixed"), (False, "32")):
        assert resolve_precision("auto", torch.device("cuda")) == expected
    assert asked == [False, False]
    assert resolve_precision("32", torch.device("cuda")) == "32"
    assert resolve_precision("bf16-mixed", torch.device("cpu")) == "bf16-mixed"
