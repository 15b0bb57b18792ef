"""Clustering agreement with known labels: ARI, NMI and Hungarian-matched accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from .errors import InputDataError


def clustering_accuracy(true: Sequence, pred: Sequence) -> float:
    """ACC: fraction of cells correct under the best one-to-one cluster↔class matching."""
    table = contingency_matrix(np.asarray(true), np.asarray(pred))
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def labelled(true: Sequence) -> np.ndarray:
    """Which cells carry a true label (not None, NaN or 'nan')."""
    return np.array([t is not None and t == t and str(t) != "nan" for t in np.asarray(true, dtype=object)], dtype=bool)


def check_eval_labels(true: Sequence, key: str) -> None:
    """Refuse, before any work is done, an evaluation column in which no cell is labelled."""
    if not labelled(true).any():
        raise InputDataError(
            f"--eval-key {key!r} has no labelled cells (every value is missing), so nothing can be evaluated. "
            "Name the obs column that holds the true labels, or leave --eval-key out."
        )


def evaluate(true: Sequence, pred: Sequence) -> dict[str, float]:
    """ARI, NMI and ACC of ``pred`` against ``true`` (cells with a missing true label dropped)."""
    true_arr = np.asarray(true, dtype=object)
    pred_arr = np.asarray(pred, dtype=object)
    if true_arr.shape != pred_arr.shape:
        raise ValueError(f"{len(true_arr)} true labels for {len(pred_arr)} predictions")
    keep = labelled(true_arr)
    true_str = true_arr[keep].astype(str)
    pred_str = pred_arr[keep].astype(str)
    if len(true_str) == 0:
        raise ValueError("no cell has a true label")
    return {
        "ari": float(adjusted_rand_score(true_str, pred_str)),
        "nmi": float(normalized_mutual_info_score(true_str, pred_str)),
        "acc": clustering_accuracy(true_str, pred_str),
        "n_cells": int(keep.sum()),
    }


def label_accuracy(true: Sequence, names: Sequence) -> float:
    """Fraction of cells whose predicted cell-type name equals the true label
    (an ``unassigned`` cell counts as wrong)."""
    true_arr = np.asarray(true).astype(str)
    names_arr = np.asarray(names).astype(str)
    return float(np.mean(true_arr == names_arr))
