"""The training report: losses per epoch, the α distribution, timings, metrics (+ a PNG)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .fitted import FittedModel

REPORT_PLOT_FILE = "report.png"
ALPHA_QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)


def alpha_summary(alpha: np.ndarray, bins: int = 20) -> dict[str, Any]:
    """Mean, sd, quantiles and a 0..1 histogram of the per-cell SA-CC weights α."""
    counts, edges = np.histogram(alpha, bins=bins, range=(0.0, 1.0))
    return {
        "mean": float(np.mean(alpha)),
        "sd": float(np.std(alpha)),
        "quantiles": {f"{q:g}": float(np.quantile(alpha, q)) for q in ALPHA_QUANTILES},
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def build_report(fitted: FittedModel, metrics: dict[str, float]) -> dict[str, Any]:
    """Everything worth keeping about one training run, JSON-ready."""
    state = fitted.state
    sizes = np.bincount(state.labels, minlength=state.n_clusters)
    report: dict[str, Any] = {
        "n_cells": state.n_cells,
        "n_clusters": state.n_clusters,
        "n_clusters_method": state.n_clusters_method,
        "cluster_sizes": [int(s) for s in sizes],
        "cluster_names": state.cluster_names,
        "thresholds": [float(t) for t in state.thresholds],
        "alpha": alpha_summary(state.alpha),
        "history": state.history.as_dict(),
        "timings_seconds": {k: float(v) for k, v in state.timings.items()},
        "metrics": {k: float(v) for k, v in metrics.items()},
        "genes": {"n": len(state.panel.genes), "selection": fitted.params["genes"],
                  "order": fitted.params["gene_order"], "pseudo_label_ensemble": state.pseudo_label_ensemble},
    }
    return report


def plot_report(report: dict[str, Any]) -> bytes:
    """PNG with the loss curves of both stages and the α histogram."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    history = report["history"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    pre = history["pretrain"]
    axes[0].plot([h["epoch"] for h in pre], [h["reconstruction"] for h in pre])
    axes[0].set(title="stage 1: reconstruction", xlabel="epoch", ylabel="MSE")
    clu = history["cluster"]
    for key in [key for key in ("l1", "kl", "cross_entropy", "reconstruction") if clu and key in clu[0]]:
        axes[1].plot([h["epoch"] for h in clu], [h[key] for h in clu], label=key)
    axes[1].set(title="stage 2: objective terms", xlabel="epoch", yscale="log")
    axes[1].legend()
    hist = report["alpha"]["histogram"]
    edges = np.asarray(hist["edges"])
    axes[2].bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge")
    axes[2].set(title=f"SA-CC α per cell (mean {report['alpha']['mean']:.3f})", xlabel="α", ylabel="cells")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()
