"""Export a fitted model (:class:`~sccsa_train.fitted.FittedModel`) as a model bundle.

The serving computation (:class:`~sccsa_train.graph.ServingGraph`) is exported with the
``torch.onnx`` dynamo exporter as ONE self-contained ONNX graph (opset 18, dynamic batch axis,
named inputs/outputs), with the SA-CC autocorrelation in its constant-DFT-matrix form. The
bundle metadata is embedded in the graph's ``metadata_props`` and written to ``bundle.json``
(with the sha256 of every file) by :func:`sccsa_infer.bundle.write_bundle`.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import logging
import platform
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
import torch

from sccsa_infer.bundle import (
    INPUT_NAMES,
    METADATA_KEY,
    MODEL_FILE,
    OUTPUT_NAMES,
    REPORT_FILE,
    SCHEMA_VERSION,
    SELECTOR_FILE,
    SELFTEST_FILE,
    canonical_json,
    write_bundle,
)
from sccsa_infer.errors import InvalidParameterError
from sccsa_infer.ontology import ONTOLOGY_KEY, check_ontology
from sccsa_infer.versions import package_version

from .fitted import FittedModel
from .graph import ServingGraph
from .preprocess import TARGET_SUM
from .report import REPORT_PLOT_FILE, build_report, plot_report

log = logging.getLogger(__name__)

OPSET = 18


def training_versions() -> dict[str, str | None]:
    """Versions of everything that shaped the exported model."""
    names = ("sccsa", "torch", "onnx", "onnxscript", "onnxruntime", "numpy", "scikit-learn", "scanpy", "anndata")
    versions: dict[str, str | None] = {name: package_version(name) for name in names}
    versions["python"] = platform.python_version()
    return versions


def export_onnx(graph: ServingGraph, n_genes: int, form: str = "four_step") -> onnx.ModelProto:
    """Trace ``graph`` into an ONNX model with a dynamic batch axis and the SA-CC autocorrelation
    as matrix products (``form``: see :meth:`sccsa_train.sacc.SACC.enable_export_form`)."""
    graph = copy.deepcopy(graph).cpu().eval()
    graph.net.sacc.enable_export_form(form)
    example = (torch.zeros(2, n_genes), torch.ones(2, 1))
    batch = torch.export.Dim("batch", min=1)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # silences "torchvision is not installed" notices
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                example,
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"counts": {0: batch}, "total_counts": {0: batch}},
                opset_version=OPSET,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)
    model = program.model_proto
    onnx.checker.check_model(model, full_check=True)
    return model


def with_metadata(model: onnx.ModelProto, metadata: dict[str, Any]) -> bytes:
    """``model`` serialised with ``metadata`` (JSON) under :data:`METADATA_KEY` in metadata_props."""
    model = copy.deepcopy(model)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = canonical_json(metadata)
    model.producer_name = "sccsa"
    model.producer_version = package_version("sccsa") or "0"
    return model.SerializeToString()


def selftest_case(fitted: FittedModel) -> bytes:
    """``selftest.npz``: the most clearly assigned training cells of each cluster (chosen when the
    fit was stored, :mod:`sccsa_train.selftest`) plus one empty cell, their gene names, and the
    labels and latents the torch serving graph gives them.

    The genes are stored so that ``sccsa-infer verify`` feeds the cells through gene-name
    alignment: a bundle whose gene list was reordered or renamed then fails its self-test."""
    state = fitted.state
    graph = fitted.serving_graph()
    counts = np.vstack([state.selftest_counts, np.zeros((1, len(state.panel.genes)))]).astype(np.float32)
    totals = np.append(state.selftest_totals, 0.0).astype(np.float32).reshape(-1, 1)
    with torch.no_grad():
        label, _, latent, _ = graph(torch.from_numpy(counts), torch.from_numpy(totals))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, counts=counts, total_counts=totals, label=label.numpy(), latent=latent.numpy(),
                        genes=np.asarray(state.panel.genes, dtype=str))
    return buffer.getvalue()


def bundle_metadata(fitted: FittedModel, metrics: dict[str, float],
                    cell_ontology: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The metadata of the bundle contract (without the file hashes)."""
    state = fitted.state
    if cell_ontology is not None:
        check_ontology(cell_ontology, state.cluster_names, "export(cell_ontology=...)", error=InvalidParameterError)
    params = dict(fitted.params)
    params["channels"] = list(params["channels"])
    training = {
        **params,
        "n_clusters_resolved": state.n_clusters,
        "n_clusters_method": state.n_clusters_method,
        "n_cells": state.n_cells,
        "beta": float(fitted.net.beta),
        "clip": state.panel.clip,
        "batches": state.batches,  # training cells per batch_key value (None without batch_key)
    }
    optional = {ONTOLOGY_KEY: cell_ontology} if cell_ontology else {}
    return {
        **optional,
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "genes": list(state.panel.genes),
        "n_clusters": state.n_clusters,
        "cluster_names": state.cluster_names,
        "thresholds": [float(t) for t in state.thresholds],
        "input_kind": state.input_kind,
        "latent_dim": fitted.net.latent_dim,
        "target_sum": TARGET_SUM,
        "training": training,
        "versions": training_versions(),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "onnx": {"opset": OPSET, "inputs": list(INPUT_NAMES), "outputs": list(OUTPUT_NAMES)},
    }


def export_bundle(fitted: FittedModel, path: str | Path, *, metrics: dict[str, float], overwrite: bool = False,
                  form: str = "four_step", cell_ontology: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write the bundle of a fitted model to ``path`` (directory, or ``.zip``); ``form``: how the
    graph computes the autocorrelation (the speed page compares the two)."""
    state = fitted.state
    metadata = bundle_metadata(fitted, metrics, cell_ontology)  # checks cell_ontology before any work
    graph = fitted.serving_graph()
    model = export_onnx(graph, len(state.panel.genes), form)
    selector = io.BytesIO()
    joblib.dump(state.selector, selector)
    report = build_report(fitted, metrics)
    files = {
        MODEL_FILE: with_metadata(model, metadata),
        SELECTOR_FILE: selector.getvalue(),
        REPORT_FILE: json.dumps(report, indent=1, sort_keys=True).encode("utf-8"),
        REPORT_PLOT_FILE: plot_report(report),
        SELFTEST_FILE: selftest_case(fitted),
    }
    written = write_bundle(path, metadata, files, overwrite=overwrite)
    log.info("exported the bundle to %s (%d genes, K=%d)", written, len(state.panel.genes), state.n_clusters)
    return written
