"""Gene selection and pseudo-labels on a sketch of the cells (large data); below the sketch size
nothing changes."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score

from conftest import synthetic_counts
from sccsa_train import SCCSA
from sccsa_train import sketch as sketch_module
from sccsa_train.sketch import sketch_rows, to_all_cells

FAST = dict(pretrain_epochs=6, cluster_epochs=6, random_state=0, progress=False)


def test_no_sketch_up_to_the_limit_and_a_seeded_sorted_one_above():
    assert sketch_rows(1000, seed=0, max_cells=1000) is None
    rows = sketch_rows(1000, seed=3, max_cells=100)
    assert len(rows) == 100 and len(np.unique(rows)) == 100 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, sketch_rows(1000, seed=3, max_cells=100))
    assert not np.array_equal(rows, sketch_rows(1000, seed=4, max_cells=100))
    spread = to_all_cells(np.arange(100) % 3, rows, 1000)
    assert (spread >= 0).sum() == 100 and np.array_equal(spread[rows], np.arange(100) % 3)


def test_a_sketch_selects_genes_and_pseudo_labels_and_every_cell_is_trained_and_labelled(monkeypatch):
    """init='labels': the centroids start at the means of the sketched cells' pseudo-labels."""
    cells = synthetic_counts(n_cells=400, n_genes=60, n_clusters=3, seed=0)
    whole = SCCSA(n_clusters=3, init="labels", **FAST).fit(cells)
    monkeypatch.setattr(sketch_module, "SKETCH_CELLS", 150)
    sketched = SCCSA(n_clusters=3, init="labels", **FAST).fit(cells)

    state = sketched.state_
    assert len(sketched.labels_) == 400 and state.latent.shape[0] == 400
    assert (state.pseudo_labels >= 0).sum() == 150  # pseudo-labels only for the sketched cells
    assert set(state.pseudo_labels[state.pseudo_labels >= 0]) == {0, 1, 2}
    truth = cells.obs["cell_type"].to_numpy()
    assert adjusted_rand_score(truth, sketched.labels_) >= adjusted_rand_score(truth, whole.labels_) - 0.05
    assert len(set(state.panel.genes) & set(whole.state_.panel.genes)) >= 0.8 * len(whole.state_.panel.genes)


def test_the_input_made_dense_per_batch_equals_the_whole_panel_standardised():
    import torch

    from sccsa_train.genes import build_panel, fit_selector
    from sccsa_train.network_input import NetworkInput
    from sccsa_train.preprocess import prepare

    prepared = prepare(synthetic_counts(n_cells=100, n_genes=60, n_clusters=3, seed=1))
    selector = fit_selector(prepared.lognorm, prepared.genes, 30, "hvg", None)
    panel, values = build_panel(prepared.lognorm, prepared.genes, selector, "correlation")
    expected = panel.standardise(values)
    x = NetworkInput.from_lognorm(prepared.lognorm, prepared.genes, panel)
    assert len(x) == 100 and x.n_genes == 30
    np.testing.assert_array_equal(x.dense().numpy(), expected)
    np.testing.assert_array_equal(torch.cat(list(x.chunks(7))).numpy(), expected)
    index = torch.tensor([5, 0, 99, 5])
    np.testing.assert_array_equal(x.take(index).numpy(), expected[[5, 0, 99, 5]])
    share = x[1::2]  # a view, as each of two torchrun processes takes its share
    assert len(share) == 50
    np.testing.assert_array_equal(share.dense().numpy(), expected[1::2])
    np.testing.assert_array_equal(share.take(np.array([0, 3])).numpy(), expected[[1, 7]])
    np.testing.assert_array_equal(share[::5].dense().numpy(), expected[1::10])


def test_latent_kmeans_beyond_its_cell_limit_fits_a_sample_and_assigns_every_cell():
    import torch

    from sccsa_train.fit import Schedule, latent_kmeans

    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 300)
    latent = torch.from_numpy(rng.normal(size=(900, 4)) + 8.0 * np.eye(3, 4)[truth]).float()
    sampled = latent_kmeans(latent, 3, Schedule(kmeans_n_init=3, kmeans_cells=90), seed=0)
    full = latent_kmeans(latent, 3, Schedule(kmeans_n_init=3), seed=0)
    centres, labels, full_centres, full_labels = sampled.centres, sampled.labels, full.centres, full.labels
    assert labels.shape == (900,) and adjusted_rand_score(truth, labels) == 1.0
    assert adjusted_rand_score(full_labels, labels) == 1.0
    # the centres are those of the 90 sampled cells, not of all 900
    assert not np.allclose(np.sort(centres, axis=0), np.sort(full_centres, axis=0))
    np.testing.assert_array_equal(labels, ((latent.numpy()[:, None] - centres[None]) ** 2).sum(-1).argmin(1))


def test_stage_two_returns_the_embedding_a_fresh_pass_of_the_trained_network_gives():
    import torch

    from sccsa_train.fit import History, Schedule, cluster, embed_all, initialise_centroids
    from sccsa_train.genes import GenePanel
    from sccsa_train.model import SCCSANet
    from sccsa_train.network_input import NetworkInput

    torch.manual_seed(0)
    net = SCCSANet(16, 3, latent_dim=4, attention_dim=8, channels=(4, 4, 4))
    identity = GenePanel(genes=[f"g{i}" for i in range(16)], mean=np.zeros(16), std=np.ones(16), scores=np.ones(16))
    x = NetworkInput(np.random.default_rng(0).normal(size=(90, 16)), identity)
    schedule = Schedule(cluster_epochs=3, batch_size=32, tol=0.0, kmeans_n_init=2)
    labels = initialise_centroids(net, x, schedule, seed=0)
    labels, (latent, alpha) = cluster(net, x, labels, schedule, History(), torch.Generator().manual_seed(0),
                                      progress=False)
    fresh_latent, fresh_alpha = embed_all(net, x)
    assert torch.equal(latent, fresh_latent) and torch.equal(alpha, fresh_alpha)
    np.testing.assert_array_equal(labels, net.squared_distances(latent).argmin(1).numpy())


def test_beyond_its_cell_limit_the_kmeans_start_embeds_only_its_sample():
    import torch

    from sccsa_train.fit import History, Schedule, cluster, embed_all, initialise_centroids, latent_kmeans
    from sccsa_train.genes import GenePanel
    from sccsa_train.model import SCCSANet
    from sccsa_train.network_input import NetworkInput

    torch.manual_seed(0)
    net = SCCSANet(16, 3, latent_dim=4, attention_dim=8, channels=(4, 4, 4))
    identity = GenePanel(genes=[f"g{i}" for i in range(16)], mean=np.zeros(16), std=np.ones(16), scores=np.ones(16))
    x = NetworkInput(np.random.default_rng(0).normal(size=(90, 16)), identity)
    schedule = Schedule(cluster_epochs=2, batch_size=32, tol=0.0, kmeans_n_init=2, kmeans_cells=40)
    labels = initialise_centroids(net, x, schedule, seed=0)
    sample = sketch_rows(90, 0, 40)
    assert (labels >= 0).sum() == 40 and np.all(labels[sample] >= 0)  # the other 50 cells: none yet
    latent, _ = embed_all(net, x)
    start = latent_kmeans(latent[sample], 3, schedule, seed=0)
    np.testing.assert_allclose(net.centroids.numpy(), start.centres, rtol=1e-6)
    np.testing.assert_array_equal(labels[sample], start.labels)
    history = History()
    labels, _ = cluster(net, x, labels, schedule, history, torch.Generator().manual_seed(0), progress=False)
    assert np.all(labels >= 0) and len(history.cluster) == 2  # the first epoch labels every cell
    changed_of_40 = history.cluster[0]["label_change"] * 40  # counted over the 40 cells that had a label
    assert 0 <= changed_of_40 <= 40 and np.isclose(changed_of_40, round(changed_of_40))
    # without stage 2 every cell needs its label now, so all of them are embedded
    unlabelled = initialise_centroids(net, x, Schedule(cluster_epochs=0, kmeans_n_init=2, kmeans_cells=40), seed=0)
    assert np.all(unlabelled >= 0)
