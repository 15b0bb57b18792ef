"""Clustering agreement with known labels: ARI, NMI and Hungarian-matched accuracy."""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputDataError, SccsaWarning, shorten
from .ontology import to_model_names


def clustering_accuracy(true: Sequence, pred: Sequence) -> float:
    """ACC: fraction of cells correct under the best one-to-one cluster↔class matching."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics.cluster import contingency_matrix

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
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score  # only --eval-key needs them

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


def load_label_map(path: str | Path) -> dict[str, str]:
    """A mapping from the model's cell-type names to the names of an evaluation column: a JSON
    object, or a two-column CSV/TSV (model name, your name; a header row is allowed)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"--label-map {path} cannot be read ({exc}).") from None
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputDataError(f"--label-map {path} is not valid JSON ({exc}).") from None
        if not isinstance(mapping, dict):
            raise InputDataError(f"--label-map {path} must hold a JSON object {{model name: your name}}.")
        return {str(k): str(v) for k, v in mapping.items()}
    rows = list(csv.reader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows or any(len(r) != 2 for r in rows):
        raise InputDataError(f"--label-map {path} must have exactly two columns: the model's name and yours.")
    return {r[0].strip(): r[1].strip() for r in rows}


def comparable_label_accuracy(true: Sequence, names: Sequence, label_map: Mapping[str, str] | None,
                              key: str, ontology: Mapping[str, Mapping[str, Any]] | None = None) -> float | None:
    """Label accuracy after mapping the model's names with ``label_map`` or, without one, the true
    labels with the bundle's Cell Ontology record (CL ids, names and synonyms become the model's
    names); ``None`` (with a warning that says why) when the two vocabularies share no label,
    where a score of 0 would mislead."""
    from .prediction import UNASSIGNED

    mapped = np.asarray([label_map.get(n, n) for n in names] if label_map else names, dtype=object)
    truth = (np.asarray(true, dtype=object) if label_map else to_model_names(true, ontology)).astype(str)
    shared = set(truth[labelled(true)]) & set(mapped.astype(str))
    if not shared:
        model_names = sorted({str(n) for n in mapped if n != UNASSIGNED})
        warnings.warn(
            f"The model's cell-type names ({', '.join(shorten(n) for n in model_names[:4])}, ...) and the values of "
            f"--eval-key {key!r} ({', '.join(shorten(t) for t in sorted(set(truth))[:4])}, ...) share no label, so "
            "label accuracy is not reported (cluster metrics are). Map the names with --label-map FILE "
            "(two columns: model name, your name).",
            SccsaWarning, stacklevel=2,
        )
        return None
    return label_accuracy(truth, mapped)
