"""``SCCSA``: the scikit-learn-style estimator that fits scCompressSA on an AnnData."""

from __future__ import annotations

import inspect
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from sccsa_infer.align import align_genes
from sccsa_infer.errors import InputDataError, SccsaWarning
from sccsa_infer.validate import INPUT_KINDS, check_values, warn_duplicate_cells

from . import n_clusters as n_clusters_estimation
from .fit import History, Schedule, embed_all, resolve_device, seed_everything, torch_threads_kept, train
from .genes import GenePanel, build_panel, fit_selector
from .graph import ServingGraph
from .model import SCCSANet
from .objective import ObjectiveWeights
from .options import CC_MODES, CENTROID_INITS, DEFAULT_CHANNELS, GENE_ORDERS, GENE_SELECTIONS
from .preprocess import MIN_CELLS_PER_GENE, expression_matrix, library_sizes, prepare
from .pseudolabels import consensus_labels

THRESHOLD_QUANTILE = 0.995
MIN_CELLS_PER_CLUSTER = 10


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
    panel_counts: Any  # CSR, fitted cells × panel genes, raw input values
    total_counts: np.ndarray  # fitted cells' library sizes over all genes
    history: History
    timings: dict[str, float]
    input_kind: str
    n_cells: int


class SCCSA:
    """scCompressSA clustering of single cells (Zhang et al., BMC Genomics 2024).

    Parameters mirror ``sccsa-train``'s options. ``fit`` never modifies the AnnData it is given;
    use :meth:`annotate` to write ``obs['sccsa_cluster']`` / ``obsm['X_sccsa']`` into one.

    >>> model = SCCSA(n_clusters=8, seed=0).fit(adata)        # doctest: +SKIP
    >>> model.labels_                                          # doctest: +SKIP
    >>> model.annotate(adata)                                  # doctest: +SKIP
    >>> model.export("pbmc_bundle")                            # doctest: +SKIP
    """

    def __init__(
        self,
        n_clusters: int | str = "auto",
        *,
        n_genes: int = 1000,
        genes: str = "ftest",
        labels_key: str | None = None,
        gene_order: str = "correlation",
        cc: str = "sa",
        alpha: float = 0.5,
        latent_dim: int = 10,
        attention_dim: int = 128,
        channels: tuple[int, int, int] = DEFAULT_CHANNELS,
        batch_norm: bool = False,
        input_kind: str = "counts",
        layer: str | None = None,
        total_counts_key: str | None = None,
        pretrain_epochs: int = 60,
        cluster_epochs: int = 100,
        batch_size: int = 256,
        lr: float = 1e-3,
        cluster_lr: float = 1e-4,
        tol: float = 0.001,
        beta_scale: float = 5.0,
        init: str = "kmeans",
        kl_weight: float = 1.0,
        reconstruction_weight: float = 100.0,
        latent_norm_weight: float = 0.0,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
    ):
        self.n_clusters = n_clusters
        self.n_genes = n_genes
        self.genes = genes
        self.labels_key = labels_key
        self.gene_order = gene_order
        self.cc = cc
        self.alpha = alpha
        self.latent_dim = latent_dim
        self.attention_dim = attention_dim
        self.channels = tuple(channels)
        self.batch_norm = batch_norm
        self.input_kind = input_kind
        self.layer = layer
        self.total_counts_key = total_counts_key
        self.pretrain_epochs = pretrain_epochs
        self.cluster_epochs = cluster_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.cluster_lr = cluster_lr
        self.tol = tol
        self.beta_scale = beta_scale
        self.init = init
        self.kl_weight = kl_weight
        self.reconstruction_weight = reconstruction_weight
        self.latent_norm_weight = latent_norm_weight
        self.seed = seed
        self.device = device
        self.progress = progress

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (recorded in the bundle as the training options)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def _check_params(self) -> None:
        if self.genes not in GENE_SELECTIONS:
            raise InputDataError(f"genes must be one of {', '.join(GENE_SELECTIONS)}, not {self.genes!r}.")
        if self.gene_order not in GENE_ORDERS:
            raise InputDataError(f"gene_order must be one of {', '.join(GENE_ORDERS)}, not {self.gene_order!r}.")
        if self.cc not in CC_MODES:
            raise InputDataError(f"cc must be one of {', '.join(CC_MODES)}, not {self.cc!r}.")
        if self.init not in CENTROID_INITS:
            raise InputDataError(f"init must be one of {', '.join(CENTROID_INITS)}, not {self.init!r}.")
        if self.input_kind not in INPUT_KINDS:
            raise InputDataError(f"input_kind must be one of {', '.join(INPUT_KINDS)}, not {self.input_kind!r}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputDataError(f"alpha must lie in [0, 1], not {self.alpha}.")
        if self.n_genes < 4:
            raise InputDataError(f"n_genes must be at least 4, not {self.n_genes}.")
        if self.n_clusters != "auto" and (not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 2):
            raise InputDataError(f"n_clusters must be 'auto' or an integer ≥ 2, not {self.n_clusters!r}.")

    def _schedule(self) -> Schedule:
        return Schedule(
            pretrain_epochs=self.pretrain_epochs, cluster_epochs=self.cluster_epochs, batch_size=self.batch_size,
            pretrain_lr=self.lr, cluster_lr=self.cluster_lr, tol=self.tol, beta_scale=self.beta_scale,
            weights=ObjectiveWeights(kl=self.kl_weight, reconstruction=self.reconstruction_weight,
                                     latent_norm=self.latent_norm_weight),
        )

    # ------------------------------------------------------------------ fitting
    def fit(self, adata: ad.AnnData) -> SCCSA:
        """Select genes, train the network and the centroids on ``adata`` (raw counts by default)."""
        self._check_params()
        timings: dict[str, float] = {}
        started = time.perf_counter()
        with torch_threads_kept():  # Scanpy below may reset torch's threads (see torch_threads_kept)
            data = prepare(adata, layer=self.layer, input_kind=self.input_kind,
                           total_counts_key=self.total_counts_key)
            fit_rows = np.flatnonzero(~data.empty_cells)
            lognorm = data.lognorm[fit_rows]
            warn_duplicate_cells(adata.obs_names, "the training data")
            if self.n_genes > len(data.genes):
                warnings.warn(
                    f"n_genes={self.n_genes} but only {len(data.genes)} genes are expressed in at least "
                    f"{MIN_CELLS_PER_GENE} cells; the model reads all {len(data.genes)} of them.",
                    SccsaWarning, stacklevel=2,
                )
            user_labels = self._user_labels(adata, fit_rows)
            k, k_method = self._resolve_k(lognorm, len(fit_rows), user_labels)
            timings["preprocess"] = time.perf_counter() - started

            mark = time.perf_counter()
            pseudo = None
            selection_labels = user_labels
            if user_labels is None and (self.genes == "ftest" or self.init == "labels"):
                pseudo = consensus_labels(lognorm, k, seed=self.seed).labels
                selection_labels = pseudo
            selector = fit_selector(lognorm, data.genes, self.n_genes, self.genes, selection_labels)
            panel, panel_values = build_panel(lognorm, data.genes, selector, self.gene_order)
            timings["gene_selection"] = time.perf_counter() - mark

        mark = time.perf_counter()
        device = resolve_device(self.device)
        seed_everything(self.seed)
        net = SCCSANet(len(panel.genes), k, latent_dim=self.latent_dim, cc=self.cc, alpha=self.alpha,
                       attention_dim=self.attention_dim, channels=self.channels, batch_norm=self.batch_norm).to(device)
        x = torch.from_numpy(panel.standardise(panel_values)).to(device)
        start_labels = _start_labels(selection_labels, k) if self.init == "labels" else None
        labels, history = train(net, x, self._schedule(), seed=self.seed, progress=self.progress,
                                start_labels=start_labels)
        timings["train"] = time.perf_counter() - mark

        latent, alpha = embed_all(net, x)
        distance = net.squared_distances(latent).min(dim=1).values.sqrt().cpu().numpy()
        self.net_ = net.cpu().eval()
        self.state_ = FittedState(
            n_clusters=k, n_clusters_method=k_method, selector=selector, panel=panel, labels=labels,
            latent=latent.cpu().numpy(), alpha=alpha.cpu().numpy(),
            thresholds=_thresholds(distance, labels, k),
            cluster_names=_cluster_names(labels, user_labels, k),
            pseudo_labels=pseudo, history=history,
            panel_counts=data.counts[fit_rows][:, _positions(data.all_genes, panel.genes)].tocsr(),
            total_counts=data.total_counts[fit_rows], timings=timings, input_kind=self.input_kind,
            n_cells=len(fit_rows),
        )
        self._fit_rows = fit_rows
        self._n_obs = adata.n_obs
        timings["total"] = time.perf_counter() - started
        return self

    def _user_labels(self, adata: ad.AnnData, rows: np.ndarray) -> np.ndarray | None:
        if self.labels_key is None:
            return None
        if self.labels_key not in adata.obs.columns:
            raise InputDataError(
                f"labels_key {self.labels_key!r} is not an obs column; available: {', '.join(adata.obs.columns) or '(none)'}."
            )
        labels = adata.obs[self.labels_key].iloc[rows]
        if labels.isna().any():
            raise InputDataError(
                f"obs[{self.labels_key!r}] has {int(labels.isna().sum())} missing label(s); label every cell or "
                "drop the unlabelled ones before training."
            )
        return labels.astype(str).to_numpy()

    def _resolve_k(self, lognorm: Any, n_cells: int, user_labels: np.ndarray | None) -> tuple[int, str]:
        if self.n_clusters == "auto":
            if user_labels is not None:
                k, method = len(np.unique(user_labels)), f"number of distinct {self.labels_key}"
            else:
                k, method = n_clusters_estimation.estimate(lognorm, seed=self.seed), n_clusters_estimation.METHOD
        else:
            k, method = int(self.n_clusters), "given"
        if k > n_cells:
            raise InputDataError(
                f"{k} clusters were requested but only {n_cells} cells (with counts) are available; "
                "use fewer clusters than cells."
            )
        if n_cells < 2 * k:
            raise InputDataError(
                f"{n_cells} cells are too few for {k} clusters (need at least {2 * k}); lower --n-clusters."
            )
        if n_cells < MIN_CELLS_PER_CLUSTER * k:
            warnings.warn(
                f"Only {n_cells} cells for {k} clusters (fewer than {MIN_CELLS_PER_CLUSTER} per cluster): clusters of "
                "one or two cells and unstable centroids are likely. Train on more cells or ask for fewer clusters.",
                SccsaWarning, stacklevel=3,
            )
        return k, method

    def _fitted(self) -> FittedState:
        if not hasattr(self, "state_"):
            raise RuntimeError("This SCCSA model is not fitted yet; call fit(adata) first.")
        return self.state_

    # ------------------------------------------------------------------ results
    @property
    def labels_(self) -> np.ndarray:
        """Cluster of every cell of the training AnnData (cells with zero counts: -1)."""
        state = self._fitted()
        labels = np.full(self._n_obs, -1, dtype=np.int64)
        labels[self._fit_rows] = state.labels
        return labels

    @property
    def n_clusters_(self) -> int:
        return self._fitted().n_clusters

    @property
    def genes_(self) -> list[str]:
        """The gene panel, in the order the model reads it."""
        return list(self._fitted().panel.genes)

    @property
    def alpha_(self) -> np.ndarray:
        """Per training cell SA-CC weight α of the expression channel."""
        return self._fitted().alpha

    @property
    def history_(self) -> History:
        return self._fitted().history

    def fit_predict(self, adata: ad.AnnData) -> np.ndarray:
        """``fit`` and return the cluster of every cell."""
        return self.fit(adata).labels_

    def serving_graph(self) -> ServingGraph:
        """The torch module that the ONNX export traces (counts + library size → outputs)."""
        state = self._fitted()
        return ServingGraph(self.net_, state.panel, state.input_kind).eval()

    def _run(self, adata: ad.AnnData, layer: str | None) -> dict[str, np.ndarray]:
        state = self._fitted()
        matrix = expression_matrix(adata, layer if layer is not None else self.layer)
        check_values(matrix, state.input_kind, source="the data")
        alignment = align_genes([str(g) for g in adata.var_names], state.panel.genes, source="the data")
        graph = self.serving_graph()
        totals = library_sizes(adata, matrix, self.total_counts_key).astype(np.float32)
        outputs: dict[str, list[np.ndarray]] = {"label": [], "latent": [], "distance": [], "prob": []}
        with torch.no_grad():
            for start in range(0, matrix.shape[0], 4096):
                chunk = matrix[start : start + 4096]
                result = graph(torch.from_numpy(alignment.take(chunk)), torch.from_numpy(totals[start : start + 4096]))
                for name, value in zip(("label", "prob", "latent", "distance"), result):
                    outputs[name].append(value.numpy())
        return {name: np.concatenate(parts) for name, parts in outputs.items()}

    def transform(self, adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
        """Latent coordinates z of the cells of ``adata`` (genes matched by name)."""
        return self._run(adata, layer)["latent"]

    def predict(self, adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
        """Nearest-centroid cluster of the cells of ``adata`` (what the exported graph returns)."""
        return self._run(adata, layer)["label"].astype(np.int64)

    def annotate(self, adata: ad.AnnData, *, layer: str | None = None, copy: bool = False) -> ad.AnnData | None:
        """Write ``obs['sccsa_cluster']`` (categorical), ``obs['sccsa_label']`` (when trained with
        labels), ``obs['sccsa_distance']`` and ``obsm['X_sccsa']`` into ``adata`` (Scanpy style:
        in place, or on a copy that is returned with ``copy=True``)."""
        state = self._fitted()
        target = adata.copy() if copy else adata
        outputs = self._run(target, layer)
        target.obs["sccsa_cluster"] = pd.Categorical(outputs["label"].astype(str), categories=[str(i) for i in range(state.n_clusters)])
        if state.cluster_names is not None:
            target.obs["sccsa_label"] = pd.Categorical(np.asarray(state.cluster_names, dtype=object)[outputs["label"]])
        target.obs["sccsa_distance"] = outputs["distance"]
        target.obsm["X_sccsa"] = outputs["latent"]
        return target if copy else None

    def export(self, path: str | Path, *, metrics: dict[str, float] | None = None, overwrite: bool = False) -> Path:
        """Write the model bundle (ONNX graph + metadata + selector + report) to ``path``."""
        from .export import export_bundle

        return export_bundle(self, path, metrics=metrics or {}, overwrite=overwrite)


def _start_labels(labels: np.ndarray, k: int) -> np.ndarray:
    """``labels`` as integers 0..K-1 (init='labels' needs exactly K distinct labels)."""
    names, codes = np.unique(labels, return_inverse=True)
    if len(names) != k:
        raise InputDataError(
            f"init='labels' starts one centroid per label, but the labels have {len(names)} classes and "
            f"n_clusters is {k}; set n_clusters to {len(names)} (or 'auto') or use init='kmeans'."
        )
    return codes.astype(np.int64)


def _thresholds(distance: np.ndarray, labels: np.ndarray, k: int, quantile: float = THRESHOLD_QUANTILE) -> np.ndarray:
    """Per-cluster ``quantile`` of the training cells' distance to their centroid."""
    fallback = float(np.quantile(distance, quantile))
    return np.array(
        [float(np.quantile(distance[labels == c], quantile)) if np.any(labels == c) else fallback for c in range(k)],
        dtype=np.float64,
    )


def _cluster_names(labels: np.ndarray, user_labels: np.ndarray | None, k: int) -> list[str] | None:
    """Majority user label of each cluster's training cells (None without user labels)."""
    if user_labels is None:
        return None
    names = []
    for c in range(k):
        members = user_labels[labels == c]
        names.append(pd.Series(members).value_counts().index[0] if len(members) else f"cluster_{c}")
    return [str(n) for n in names]


def _positions(names: list[str], wanted: list[str]) -> list[int]:
    """Index of each of ``wanted`` in ``names``."""
    where = {name: i for i, name in enumerate(names)}
    return [where[name] for name in wanted]
