"""Save a fitted :class:`~sccsa_train.estimator.SCCSA` and load it back, to go on training or to
embed cells in torch later (the bundle is for serving; this is for the training side).

A saved model is a folder of three files, none of them a pickle:

- ``sccsa_model.json``: format version, package versions, the estimator's parameters and the
  fitted scalars (K, gene panel, thresholds, cluster names, history, timings);
- ``weights.pt``: the network's ``state_dict`` (read back with ``torch.load(weights_only=True)``);
- ``arrays.npz``: the fitted arrays (labels, latent, α, pseudo-labels, the selector's scores,
  the self-test cells' panel counts), read with ``allow_pickle=False``.

The gene selector is rebuilt from its arrays, so loading runs no code from the folder.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.feature_selection import SelectKBest, f_classif

from sccsa_infer.atomic import ReplaceRule, atomic_output, is_empty_folder
from sccsa_infer.errors import BundleError, SccsaWarning
from sccsa_infer.versions import package_version, parse_version

from .fit import History
from .fitted import FittedState
from .genes import GenePanel, HighlyVariableGeneSelector
from .model import SCCSANet
from .selftest import selftest_cells

if TYPE_CHECKING:
    from .estimator import SCCSA

log = logging.getLogger(__name__)

FORMAT = 1
META_FILE = "sccsa_model.json"
WEIGHTS_FILE = "weights.pt"
ARRAYS_FILE = "arrays.npz"


def _is_saved_model(path: Path) -> bool:
    try:
        return json.loads((path / META_FILE).read_text(encoding="utf-8")).get("format") is not None
    except (OSError, ValueError, AttributeError):
        return False


OWN_MODELS = ReplaceRule(lambda path: is_empty_folder(path) or _is_saved_model(path),
                         "a model saved by SCCSA.save or an empty folder")


def _selector_arrays(selector: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What rebuilds the fitted selector: its kind and k, and its arrays (no pickle)."""
    arrays = {"selector_scores": np.asarray(selector.scores_, dtype=np.float64),
              "selector_genes": np.asarray(selector.feature_names_in_, dtype=str)}
    if isinstance(selector, SelectKBest):
        arrays["selector_pvalues"] = np.asarray(selector.pvalues_, dtype=np.float64)
        return {"kind": "ftest", "k": selector.k}, arrays
    arrays["selector_support"] = np.asarray(selector.support_, dtype=bool)
    return {"kind": "hvg", "k": selector.k}, arrays


def _selftest_arrays(arrays: dict[str, np.ndarray], net: SCCSANet, n_clusters: int) -> dict[str, np.ndarray]:
    """The self-test cells' panel counts and library sizes. Models saved before they were chosen at
    fit time hold every fitted cell's panel counts: the same cells are chosen from those."""
    if "selftest_counts" in arrays:
        return {"selftest_counts": arrays["selftest_counts"], "selftest_totals": arrays["selftest_totals"]}
    with torch.no_grad():
        chosen = selftest_cells(net.squared_distances(torch.from_numpy(arrays["latent"])), arrays["labels"], n_clusters)
    counts = sp.csr_matrix((arrays["counts_data"], arrays["counts_indices"], arrays["counts_indptr"]),
                           shape=tuple(arrays["counts_shape"]))
    return {"selftest_counts": counts[chosen].toarray().astype(np.float32), "selftest_totals": arrays["total_counts"][chosen]}


def _selector_from(meta: dict[str, Any], arrays: Any) -> Any:
    selector: Any
    if meta["kind"] == "ftest":
        selector = SelectKBest(f_classif, k=meta["k"])
        selector.pvalues_ = arrays["selector_pvalues"]
    else:
        selector = HighlyVariableGeneSelector(k=meta["k"])
        selector.support_ = arrays["selector_support"]
    selector.scores_ = arrays["selector_scores"]
    selector.feature_names_in_ = np.asarray(arrays["selector_genes"], dtype=object)
    selector.n_features_in_ = len(selector.feature_names_in_)
    return selector


def save_model(model: SCCSA, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``model`` (fitted) to the folder ``path``, atomically."""
    state = model._fitted()
    params = model.get_params()
    params["channels"] = list(params["channels"])
    selector_meta, arrays = _selector_arrays(state.selector)
    arrays.update(
        labels=state.labels, latent=state.latent, alpha=state.alpha, thresholds=state.thresholds,
        selftest_counts=state.selftest_counts, selftest_totals=state.selftest_totals,
        panel_mean=state.panel.mean, panel_std=state.panel.std, panel_scores=state.panel.scores,
        fit_rows=model._fit_rows,
        **({"pseudo_labels": state.pseudo_labels} if state.pseudo_labels is not None else {}),
    )
    meta = {
        "format": FORMAT,
        "versions": {"sccsa": package_version("sccsa"), "torch": torch.__version__},
        "params": params,
        "fitted": {
            "n_clusters": state.n_clusters, "n_clusters_method": state.n_clusters_method,
            "cluster_names": state.cluster_names, "input_kind": state.input_kind, "n_cells": state.n_cells,
            "n_obs": model._n_obs, "genes": list(state.panel.genes), "clip": state.panel.clip,
            "selector": selector_meta, "history": state.history.as_dict(), "timings": state.timings,
            "batches": state.batches, "pseudo_label_ensemble": state.pseudo_label_ensemble,
        },
    }
    with atomic_output(path, directory=True, overwrite=overwrite, replaceable=OWN_MODELS) as tmp:
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        torch.save(model.net_.state_dict(), tmp / WEIGHTS_FILE)
        np.savez_compressed(tmp / ARRAYS_FILE, **arrays)
    log.info("saved the fitted model to %s", path)
    return Path(path)


def _stop_before_patience(history: dict[str, Any]) -> str:
    """Why stage 2 ended, for a model saved before ``History.stop`` existed: then a converged
    clustering stage 2 had fewer than tol of its labels change, and a converged classifying one
    (its epochs carry a cross-entropy) had stalled for 10 epochs."""
    if not history["converged"]:
        return "epochs"
    classifying = bool(history["cluster"]) and "cross_entropy" in history["cluster"][-1]
    return "patience" if classifying else "tol"


def load_model(cls: type[SCCSA], path: str | os.PathLike[str]) -> SCCSA:
    """The fitted model saved at ``path`` by :func:`save_model`."""
    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a model saved by SCCSA.save ({exc}).") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("format"), int) or isinstance(meta["format"], bool):
        raise BundleError(f"{path}/{META_FILE} is not an sccsa saved-model description.")
    if meta["format"] > FORMAT:
        raise BundleError(f"{path} was saved in format {meta['format']}, newer than this sccsa reads ({FORMAT}); "
                          "upgrade sccsa.")
    saved_by = (meta.get("versions") or {}).get("sccsa")
    here = package_version("sccsa")
    if saved_by and here and parse_version(saved_by) > parse_version(here):
        warnings.warn(f"{path} was saved by sccsa {saved_by}, newer than this {here}.", SccsaWarning, stacklevel=3)
    params, fitted = dict(meta["params"]), meta["fitted"]
    params["channels"] = tuple(params["channels"])
    params.setdefault("objective", "cluster")  # saved before the option existed: stage 2 always clustered
    # saved before a classifying stage 2 had its own settings: it used the clustering stage's
    params.setdefault("classify_lr", params["cluster_lr"])
    params.setdefault("classify_reconstruction_weight", params["reconstruction_weight"])
    model = cls(**params)
    with np.load(path / ARRAYS_FILE, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    batches = fitted.get("batches")
    net = model._network(len(fitted["genes"]), fitted["n_clusters"], len(batches or ()))
    weights = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    weights.setdefault("latent_map", net.latent_map.clone())  # saved before class_metric: the identity
    net.load_state_dict(weights)
    history_dict = fitted["history"]
    history = History(pretrain=history_dict["pretrain"], cluster=history_dict["cluster"],
                      seconds=history_dict["seconds"], beta=history_dict["beta"],
                      starts=history_dict.get("starts", []),  # models saved before starts existed have none
                      stop=history_dict.get("stop") or _stop_before_patience(history_dict),
                      precision=history_dict.get("precision", model.precision))  # saved before auto: as given
    model.net_ = net.eval()
    model.state_ = FittedState(
        n_clusters=fitted["n_clusters"], n_clusters_method=fitted["n_clusters_method"],
        selector=_selector_from(fitted["selector"], arrays),
        panel=GenePanel(genes=list(fitted["genes"]), mean=arrays["panel_mean"], std=arrays["panel_std"],
                        scores=arrays["panel_scores"], clip=fitted["clip"]),
        labels=arrays["labels"], latent=arrays["latent"], alpha=arrays["alpha"], thresholds=arrays["thresholds"],
        cluster_names=fitted["cluster_names"], pseudo_labels=arrays.get("pseudo_labels"),
        **_selftest_arrays(arrays, net, fitted["n_clusters"]), history=history, timings=fitted["timings"],
        input_kind=fitted["input_kind"], n_cells=fitted["n_cells"], batches=batches,
        pseudo_label_ensemble=fitted.get("pseudo_label_ensemble"),  # None in models saved before it was kept
    )
    model._fit_rows = arrays["fit_rows"]
    model._n_obs = fitted["n_obs"]
    log.info("loaded the fitted model from %s", path)
    return model
