"""The ``unassigned`` thresholds: conformal order statistics that keep the promised rate on new
cells of a trained cluster, borrowed across clusters for small ones."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("torch")
from sccsa_train.thresholds import LEVEL, NO_THRESHOLD, conformal_quantile, unassigned_thresholds  # noqa: E402


def test_conformal_quantile_is_the_finite_sample_order_statistic():
    values = np.random.default_rng(0).permutation(np.arange(1.0, 401.0))
    assert conformal_quantile(values) == 399.0  # ceil(401 * 0.995) = 399
    assert conformal_quantile(np.arange(1.0, 200.0)) == 199.0  # 199 cells: the maximum, just enough
    assert conformal_quantile(np.arange(1.0, 199.0)) == NO_THRESHOLD  # 198: cannot promise 0.5 %


def test_new_cells_of_a_cluster_are_unassigned_at_most_at_the_level():
    rng = np.random.default_rng(1)
    rates = []
    for _ in range(300):
        train = rng.chisquare(10, size=250)
        threshold = unassigned_thresholds(np.sqrt(train), np.zeros(250, dtype=int), 1)[0]
        rates.append(np.mean(np.sqrt(rng.chisquare(10, size=2000)) > threshold))
    assert np.mean(rates) <= LEVEL * 1.2  # exact in expectation for exchangeable cells
    assert np.mean(rates) > LEVEL / 4  # and not vacuous


def test_the_old_percentile_of_a_small_cluster_misses_new_cells_more_often():
    """Why the rule exists: the 99.5th percentile of 9 training distances is nearly their maximum,
    beyond which 1 in 10 new cells falls; borrowing from the big cluster keeps the level."""
    rng = np.random.default_rng(2)
    old, new = [], []
    for _ in range(300):
        big, small = rng.chisquare(10, size=1000), 4.0 * rng.chisquare(10, size=9)
        distance = np.sqrt(np.concatenate([big, small]))
        labels = np.repeat([0, 1], [1000, 9])
        query = np.sqrt(4.0 * rng.chisquare(10, size=2000))
        old.append(np.mean(query > np.quantile(distance[labels == 1], 0.995)))
        new.append(np.mean(query > unassigned_thresholds(distance, labels, 2)[1]))
    assert np.mean(old) > 0.07
    assert np.mean(new) < 0.02


def test_small_clusters_borrow_the_pooled_scaled_quantile():
    rng = np.random.default_rng(3)
    distance = np.concatenate([rng.uniform(0.5, 1.5, 400), 3 * rng.uniform(0.5, 1.5, 12)])
    labels = np.repeat([0, 1], [400, 12])
    t = unassigned_thresholds(distance, labels, 3)  # cluster 2 has no training cells
    assert t[0] == conformal_quantile(distance[:400])
    scaled = distance / np.where(labels == 0, np.median(distance[:400]), np.median(distance[400:]))
    assert t[1] == pytest.approx(np.median(distance[400:]) * conformal_quantile(scaled))
    assert t[2] == pytest.approx(np.median(distance) * conformal_quantile(scaled))
    assert t[1] > 2 * t[0]  # the small cluster keeps its own scale


def test_too_few_cells_say_so_and_never_unassign(caplog):
    distance = np.linspace(0.1, 2.0, 150)
    with caplog.at_level(logging.WARNING, logger="sccsa_train.thresholds"):
        t = unassigned_thresholds(distance, np.arange(150) % 3, 3)
    assert (t == NO_THRESHOLD).all()
    assert "150 training cells are too few" in caplog.text and "199" in caplog.text
    assert np.isfinite(json.loads(json.dumps([float(x) for x in t]))).all()  # a bundle can carry it
    assert not (np.float32(1e30) > np.asarray(t, dtype=np.float32)).any()  # float32 readers never exceed it
