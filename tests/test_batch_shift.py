"""Batch-shift augmentation (``batch_shift``): the shifts it estimates and how it moves cells."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from conftest import FAST_TRAINING, synthetic_counts, with_batches
from sccsa_infer.errors import InvalidParameterError
from sccsa_train import SCCSA
from sccsa_train.batch_shift import MIN_GROUP_CELLS, BatchShift
from sccsa_train.genes import GenePanel
from sccsa_train.network_input import NetworkInput

GENES = 4


def identity_input(values: np.ndarray) -> NetworkInput:
    panel = GenePanel(genes=[f"g{i}" for i in range(GENES)], mean=np.zeros(GENES), std=np.ones(GENES),
                      scores=np.ones(GENES))
    return NetworkInput(values, panel)


def two_batches() -> tuple[NetworkInput, np.ndarray, np.ndarray]:
    """Label 0 in both batches (batch 1 shifted by +2 on gene 0), label 1 in batch 0 only, and a
    label-2 group in batch 1 too small for a mean."""
    n = MIN_GROUP_CELLS
    values = np.zeros((4 * n + 3, GENES))
    values[n : 2 * n, 0] = 2.0  # batch 1, label 0
    values[2 * n : 4 * n, 1] = 5.0  # batch 0, label 1
    batches = np.r_[np.zeros(n), np.ones(n), np.zeros(2 * n), np.ones(3)].astype(int)
    groups = np.r_[np.zeros(2 * n), np.ones(2 * n), np.full(3, 2)].astype(int)
    return identity_input(values), batches, groups


def test_shifts_are_batch_means_within_labels_minus_the_labels_mean():
    x, batches, groups = two_batches()
    shift = BatchShift.estimate(x, batches, groups, probability=1.0)
    np.testing.assert_allclose(shift.shifts[0, 0].numpy(), [-1, 0, 0, 0])
    np.testing.assert_allclose(shift.shifts[1, 0].numpy(), [1, 0, 0, 0])
    np.testing.assert_allclose(shift.shifts[0, 1].numpy(), 0)  # one batch holds the label: nothing to move
    assert shift.usable.tolist() == [[True, True, False], [True, False, False]]


def test_cells_move_to_the_other_batch_only_where_both_hold_their_label():
    x, batches, groups = two_batches()
    shift = BatchShift.estimate(x, batches, groups, probability=1.0)
    index = torch.arange(len(x))
    inputs = x.take(index)
    moved = shift(inputs, index, torch.Generator().manual_seed(0))
    n = MIN_GROUP_CELLS
    np.testing.assert_allclose(moved[:n, 0].numpy(), 2.0)  # batch 0 cells of label 0 as batch 1 would show them
    np.testing.assert_allclose(moved[n : 2 * n, 0].numpy(), 0.0)  # and the reverse
    torch.testing.assert_close(moved[2 * n :], inputs[2 * n :])  # label 1: no other batch; label 2: too few cells
    torch.testing.assert_close(x.take(index), inputs)  # the input itself is not changed


def test_probability_zero_moves_nothing_and_unlabelled_cells_stay():
    x, batches, groups = two_batches()
    index = torch.arange(len(x))
    never = BatchShift.estimate(x, batches, groups, probability=0.0)
    torch.testing.assert_close(never(x.take(index), index, torch.Generator()), x.take(index))
    unlabelled = groups.copy()
    unlabelled[:5] = -1
    always = BatchShift.estimate(x, batches, unlabelled, probability=1.0)
    moved = always(x.take(index), index, torch.Generator())
    torch.testing.assert_close(moved[:5], x.take(index)[:5])


def test_batch_shift_needs_a_batch_key():
    with pytest.raises(InvalidParameterError, match="needs batch_key"):
        SCCSA(3, batch_shift=0.5).fit(synthetic_counts())


def test_fit_with_batch_shift_keeps_type_clusters_and_records_the_option(tmp_path):
    donors = with_batches(synthetic_counts(n_cells=300, n_genes=60), ["d1", "d2"], {"d1": 1.0, "d2": 8.0})
    model = SCCSA(3, n_genes=60, batch_key="donor", batch_shift=0.5, random_state=0, **FAST_TRAINING).fit(donors)
    assert adjusted_rand_score(donors.obs["cell_type"], model.labels_) > 0.9
    from sccsa_infer.bundle import load_bundle

    model.export(tmp_path / "bundle")
    assert load_bundle(tmp_path / "bundle").metadata["training"]["batch_shift"] == 0.5
