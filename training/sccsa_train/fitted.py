"""A fitted model as a value: its parameters, network and learned state.

The estimator produces it (:meth:`SCCSA.fitted`); export, the report and the serving graph read
it. So the training package is a straight stack: estimator → export/report → fitted → model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .fit import History
from .genes import GenePanel
from .graph import ServingGraph
from .model import SCCSANet


@dataclass
class FittedState:
    """What ``fit`` learned besides the network (kept for export and the report)."""

    n_clusters: int
    n_clusters_method: str
    selector: Any
    panel: GenePanel
    labels: np.ndarray
    latent: np.ndarray
    alpha: np.ndarray
    thresholds: np.ndarray
    cluster_names: list[str] | None
    pseudo_labels: np.ndarray | None
    selftest_counts: np.ndarray  # the self-test cells (selftest.selftest_cells) × panel genes, raw input values
    selftest_totals: np.ndarray  # their library sizes over all genes
    history: History
    timings: dict[str, float]
    input_kind: str
    n_cells: int
    batches: dict[str, int] | None = None  # training cells per batch (batch_key), in decoder order
    pseudo_label_ensemble: dict[str, Any] | None = None  # Consensus.summary() of the pseudo-labels' ensemble


@dataclass(frozen=True)
class FittedModel:
    """Parameters (as ``SCCSA.get_params`` gives them), the trained network and its state."""

    params: dict[str, Any]
    net: SCCSANet
    state: FittedState

    def serving_graph(self) -> ServingGraph:
        """The torch module that the ONNX export traces (counts + library size → outputs)."""
        return ServingGraph(self.net, self.state.panel, self.state.input_kind).eval()
