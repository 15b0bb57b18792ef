"""The choice among K-means restarts that starts stage 2 (issue 13): rule, scoring, seeds."""

from __future__ import annotations

import dataclasses
import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from sccsa_train.kmeans_restarts import Restart, choose_restart, kmeans_restarts, near_lowest, score_silhouettes


def _restart(inertia: float, silhouette: float) -> Restart:
    return Restart(np.zeros((2, 2)), np.zeros(4, dtype=np.int64), inertia, silhouette)


def test_the_rule_takes_the_best_separated_restart_among_the_near_lowest_inertias():
    restarts = [_restart(100.5, 0.30), _restart(100.0, 0.20), _restart(103.0, 0.90)]
    assert near_lowest(restarts, 0.0) == [restarts[1]]
    assert choose_restart(near_lowest(restarts, 0.0)) is restarts[1]  # plain K-means
    assert near_lowest(restarts, 0.01) == [restarts[1], restarts[0]]  # 103 is 3 % above the lowest
    assert choose_restart(near_lowest(restarts, 0.01)) is restarts[0]
    assert choose_restart(near_lowest(restarts, float("inf"))) is restarts[2]


def test_equal_silhouettes_fall_to_the_lower_inertia():
    restarts = [_restart(100.4, 0.5), _restart(100.0, 0.5)]
    assert choose_restart(near_lowest(restarts, 0.01)) is restarts[1]


def test_restarts_are_seeded_and_differ_from_each_other():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(300, 3))  # no structure: restarts land in different optima
    first = kmeans_restarts(values, 4, n_init=6, seed=3)
    again = kmeans_restarts(values, 4, n_init=6, seed=3)
    assert [r.inertia for r in first] == [r.inertia for r in again]
    assert len({round(r.inertia, 6) for r in first}) > 1
    assert all(r.labels.shape == (300,) and r.centres.shape == (4, 3) for r in first)


def test_silhouettes_are_those_of_each_partition_and_a_permuted_partition_scores_the_same():
    rng = np.random.default_rng(1)
    values = np.vstack([rng.normal(size=(50, 2)), rng.normal(size=(50, 2)) + 6])
    labels = np.repeat([0, 1], 50)
    restarts = [Restart(np.zeros((2, 2)), labels, 1.0), Restart(np.zeros((2, 2)), 1 - labels, 1.0),
                Restart(np.zeros((2, 2)), rng.integers(0, 2, 100), 2.0)]
    score_silhouettes(values, restarts, seed=0, max_cells=1000)
    assert restarts[0].silhouette == pytest.approx(silhouette_score(values, labels))
    assert restarts[1].silhouette == restarts[0].silhouette
    assert restarts[2].silhouette < 0.1 < restarts[0].silhouette


def test_silhouettes_of_a_large_latent_use_one_seeded_sample():
    rng = np.random.default_rng(2)
    values = np.vstack([rng.normal(size=(400, 2)), rng.normal(size=(400, 2)) + 5])
    restarts = [Restart(np.zeros((2, 2)), np.repeat([0, 1], 400), 1.0)]
    score_silhouettes(values, restarts, seed=0, max_cells=100)
    sampled = restarts[0].silhouette
    score_silhouettes(values, restarts, seed=0, max_cells=100)
    assert restarts[0].silhouette == sampled
    assert sampled == pytest.approx(silhouette_score(values, restarts[0].labels), abs=0.05)


def test_the_estimator_tolerance_reaches_the_choice_of_the_start():
    """kmeans_tolerance (one row of the options table) decides which restarts compete: at 0 the
    silhouette rule keeps the lowest-inertia restart, with every restart admitted it keeps the
    best-separated one."""
    torch = pytest.importorskip("torch")
    from sccsa_train import SCCSA
    from sccsa_train.fit import latent_kmeans

    rng = np.random.default_rng(0)
    values = rng.normal(size=(400, 3)).astype(np.float32)  # no structure: restarts differ
    restarts = kmeans_restarts(values.astype(np.float64), 5, n_init=8, seed=2)
    score_silhouettes(values.astype(np.float64), restarts, seed=2, max_cells=10_000)
    lowest = min(restarts, key=lambda r: r.inertia)
    widest = choose_restart(restarts)
    assert widest is not lowest  # the case where the tolerance matters
    for tolerance, expected in ((0.0, lowest), (1.0, widest)):
        model = SCCSA(kmeans_choice="silhouette", kmeans_tolerance=tolerance)
        schedule = dataclasses.replace(model._schedule(torch.device("cpu")), kmeans_n_init=8)
        chosen = latent_kmeans(torch.from_numpy(values), 5, schedule, seed=2)
        assert chosen.inertia == pytest.approx(expected.inertia)
        np.testing.assert_array_equal(chosen.labels, expected.labels)


def test_the_tolerance_is_checked_before_work():
    from sccsa_infer.errors import InvalidParameterError
    from sccsa_train.options import validate

    with pytest.raises(InvalidParameterError, match="kmeans_tolerance"):
        validate({"kmeans_tolerance": 1.5})
