"""``SCCSA``: the scikit-learn-style estimator that fits scCompressSA on an AnnData."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from functools import cache, partial
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from sccsa_infer.align import align_genes
from sccsa_infer.block import BlockLabeller
from sccsa_infer.defaults import DEFAULT_BATCH_SIZE, KEY_ADDED
from sccsa_infer.errors import InputDataError, SccsaError, SccsaWarning
from sccsa_infer.prediction import Prediction
from sccsa_infer.validate import complete_obs_strings, warn_duplicate_cells

from . import n_clusters as n_clusters_estimation
from .fit import (
    Embedding,
    History,
    Schedule,
    cluster,
    embed_all,
    resolve_device,
    seed_everything,
    torch_threads_kept,
    train,
)
from .batches import read_batches
from .distributed import workers_from_environment
from .fitted import FittedModel, FittedState
from .genes import GenePanel, build_panel, fit_selector
from .graph import ServingGraph
from .model import SCCSANet
from .network_input import NetworkInput
from .objective import ObjectiveWeights
from .options import LATENT_DIM, classifies, default, validate
from .precision import resolve_precision
from .preprocess import MIN_CELLS_PER_GENE, expression_matrix, library_sizes, prepare
from .pseudolabels import consensus_labels, standard_pcs
from .selftest import selftest_cells
from .sketch import on_sketch, sketch_rows, to_all_cells
from .thresholds import unassigned_thresholds

log = logging.getLogger(__name__)

MIN_CELLS_PER_CLUSTER = 10


class SCCSA(ClusterMixin, TransformerMixin, BaseEstimator):
    """scCompressSA clustering of single cells (Zhang et al., BMC Genomics 2024).

    A scikit-learn estimator (``clone``, ``get_params``/``set_params``, grid search, pipelines)
    whose ``X`` is an AnnData of raw counts (or ``layer``): gene names matter, so a bare matrix is
    not enough. Parameters, their ranges and defaults are :data:`sccsa_train.options.OPTIONS`,
    the same table ``sccsa-train`` builds its options from. ``fit`` never modifies the AnnData it
    is given; use :meth:`annotate` to write results into one.

    >>> model = SCCSA(n_clusters=8, random_state=0).fit(adata)   # doctest: +SKIP
    >>> model.labels_                                             # doctest: +SKIP
    >>> model.annotate(adata)                                     # doctest: +SKIP
    >>> model.export("pbmc_bundle")                               # doctest: +SKIP
    """

    def __init__(
        self,
        n_clusters: int | str = default("n_clusters"),
        *,
        n_genes: int = default("n_genes"),
        genes: str = default("genes"),
        labels_key: str | None = default("labels_key"),
        batch_key: str | None = default("batch_key"),
        gene_order: str = default("gene_order"),
        cc: str = default("cc"),
        alpha: float = default("alpha"),
        latent_dim: int | str = default("latent_dim"),
        attention_dim: int = default("attention_dim"),
        channels: tuple[int, int, int] = default("channels"),
        batch_norm: bool = default("batch_norm"),
        input_kind: str = default("input_kind"),
        layer: str | None = default("layer"),
        total_counts_key: str | None = default("total_counts_key"),
        pretrain_epochs: int = default("pretrain_epochs"),
        pretrain_max_steps: int = default("pretrain_max_steps"),
        input_noise: float = default("input_noise"),
        pretrain_starts: int = default("pretrain_starts"),
        cluster_epochs: int = default("cluster_epochs"),
        cluster_max_steps: int = default("cluster_max_steps"),
        batch_size: int = default("batch_size"),
        lr: float = default("lr"),
        lr_schedule: str = default("lr_schedule"),
        cluster_lr: float = default("cluster_lr"),
        tol: float = default("tol"),
        patience: int = default("patience"),
        beta_scale: float = default("beta_scale"),
        init: str = default("init"),
        kmeans_choice: str = default("kmeans_choice"),
        kmeans_tolerance: float = default("kmeans_tolerance"),
        objective: str = default("objective"),
        class_metric: str = default("class_metric"),
        classify_lr: float = default("classify_lr"),
        classify_reconstruction_weight: float = default("classify_reconstruction_weight"),
        kl_weight: float = default("kl_weight"),
        reconstruction_weight: float = default("reconstruction_weight"),
        latent_norm_weight: float = default("latent_norm_weight"),
        random_state: int = default("random_state"),
        device: str = default("device"),
        precision: str = default("precision"),
        progress: bool = default("progress"),
    ):
        self.n_clusters = n_clusters
        self.n_genes = n_genes
        self.genes = genes
        self.labels_key = labels_key
        self.batch_key = batch_key
        self.gene_order = gene_order
        self.cc = cc
        self.alpha = alpha
        self.latent_dim = latent_dim
        self.attention_dim = attention_dim
        self.channels = channels
        self.batch_norm = batch_norm
        self.input_kind = input_kind
        self.layer = layer
        self.total_counts_key = total_counts_key
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_max_steps = pretrain_max_steps
        self.input_noise = input_noise
        self.pretrain_starts = pretrain_starts
        self.cluster_epochs = cluster_epochs
        self.cluster_max_steps = cluster_max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.cluster_lr = cluster_lr
        self.tol = tol
        self.patience = patience
        self.beta_scale = beta_scale
        self.init = init
        self.kmeans_choice = kmeans_choice
        self.kmeans_tolerance = kmeans_tolerance
        self.objective = objective
        self.class_metric = class_metric
        self.classify_lr = classify_lr
        self.classify_reconstruction_weight = classify_reconstruction_weight
        self.kl_weight = kl_weight
        self.reconstruction_weight = reconstruction_weight
        self.latent_norm_weight = latent_norm_weight
        self.random_state = random_state
        self.device = device
        self.precision = precision
        self.progress = progress

    def _schedule(self, device: torch.device) -> Schedule:
        """The optimisation settings, ``precision='auto'`` resolved for ``device``."""
        return Schedule(
            pretrain_epochs=self.pretrain_epochs, pretrain_max_steps=self.pretrain_max_steps,
            pretrain_starts=self.pretrain_starts, input_noise=self.input_noise, cluster_epochs=self.cluster_epochs,
            cluster_max_steps=self.cluster_max_steps, batch_size=self.batch_size,
            pretrain_lr=self.lr, lr_schedule=self.lr_schedule, cluster_lr=self.cluster_lr, tol=self.tol, patience=self.patience,
            beta_scale=self.beta_scale,
            kmeans_choice=self.kmeans_choice, kmeans_tolerance=self.kmeans_tolerance,
            class_metric=self.class_metric, classify_lr=self.classify_lr,
            precision=resolve_precision(self.precision, device),
            weights=ObjectiveWeights(kl=self.kl_weight, reconstruction=self.reconstruction_weight,
                                     latent_norm=self.latent_norm_weight,
                                     classify_reconstruction=self.classify_reconstruction_weight),
        )

    # ------------------------------------------------------------------ fitting
    def fit(self, X: ad.AnnData, y: Any = None) -> SCCSA:
        """Select genes, train the network and the centroids on the AnnData ``X`` (raw counts by
        default). ``y`` is ignored: it is accepted for the scikit-learn protocol, and true labels
        never steer training (reference labels are given by name with ``labels_key``)."""
        validate(self.get_params())
        _require_anndata(X)
        adata = X
        timings: dict[str, float] = {}
        started = time.perf_counter()
        all_batches = read_batches(adata, self.batch_key, np.arange(adata.n_obs))  # checked before any work
        device = resolve_device(self.device)
        workers = workers_from_environment(device)  # several processes under torchrun
        device = workers.device(device)
        with torch_threads_kept():  # Scanpy below may reset torch's threads (see torch_threads_kept)
            data = prepare(adata, layer=self.layer, input_kind=self.input_kind,
                           total_counts_key=self.total_counts_key)
            fit_rows = np.flatnonzero(~data.empty_cells)
            batches = None if all_batches is None else all_batches.subset(fit_rows)
            lognorm = _rows_of(data.lognorm, fit_rows)
            warn_duplicate_cells(adata.obs_names, "the training data")
            if self.n_genes > len(data.genes):
                warnings.warn(
                    f"n_genes={self.n_genes} but only {len(data.genes)} genes are expressed in at least "
                    f"{MIN_CELLS_PER_GENE} cells; the model reads all {len(data.genes)} of them.",
                    SccsaWarning, stacklevel=2,
                )
            user_labels = self._user_labels(adata, fit_rows)
            sketch = sketch_rows(len(fit_rows), self.random_state)  # None: all cells (up to SKETCH_CELLS)
            sketched = on_sketch(lognorm, sketch)
            pcs = cache(partial(standard_pcs, sketched, seed=self.random_state))  # for K and pseudo-labels, once
            k, k_method = workers.on_main(partial(self._resolve_k, sketched, len(fit_rows), user_labels, pcs))
            timings["preprocess"] = time.perf_counter() - started
            log.info("preprocessed %d cells × %d genes (%d pass QC); K=%d (%s) in %.1f s", len(fit_rows),
                     len(data.all_genes), len(data.genes), k, k_method, timings["preprocess"])

            mark = time.perf_counter()
            pseudo = ensemble = None
            selection_labels = on_sketch(user_labels, sketch)
            init = self._init(batches is not None)
            if user_labels is None and (self.genes == "ftest" or init == "labels"):
                codes = None if batches is None else on_sketch(batches.codes, sketch)
                pseudo, ensemble = workers.on_main(partial(self._pseudo_labels, sketched, k, codes, pcs))
                selection_labels = pseudo
            selector = fit_selector(sketched, data.genes, self.n_genes, self.genes, selection_labels)
            panel, _ = build_panel(sketched, data.genes, selector, self.gene_order)
            timings["gene_selection"] = time.perf_counter() - mark
            log.info("selected %d genes (%s on %s), ordered by %s, in %.1f s", len(panel.genes), self.genes,
                     "pseudo-labels" if pseudo is not None else ("labels" if user_labels is not None else "data"),
                     self.gene_order, timings["gene_selection"])

        if workers.from_main(panel.genes) != panel.genes:
            raise SccsaError(f"Training process {workers.rank} selected other genes than process 0 from the same "
                             "data and labels; start every torchrun process on the same file and options.")
        mark = time.perf_counter()
        n_batches = 0 if batches is None else len(batches.names)

        def make_net() -> SCCSANet:
            return self._network(len(panel.genes), k, n_batches).to(device)

        covariates = None if batches is None else batches.one_hot().to(device)
        x = NetworkInput.from_lognorm(lognorm, data.genes, panel, device)
        panel_columns = panel.columns_in(data.all_genes)
        total_counts = data.total_counts[fit_rows]
        del data, lognorm, sketched, pcs  # all genes of all cells: training reads x alone (gigabytes at 10^6 cells)

        def panel_counts(positions: np.ndarray) -> np.ndarray:
            """Raw panel counts of the fitted cells at ``positions``, read from ``X`` again."""
            return expression_matrix(adata[fit_rows[positions]], self.layer)[:, panel_columns].toarray()

        start_labels = targets = names = None
        if self._classifies():
            names, targets = _label_codes(user_labels)
        elif init == "labels":  # the user's labels are known for every cell, pseudo-labels for the sketch
            start_labels = (_start_labels(user_labels, k) if user_labels is not None
                            else to_all_cells(_start_labels(pseudo, k), sketch, len(fit_rows)))
        net, labels, history, embedding = train(make_net, x, self._schedule(device), seed=self.random_state,
                                                progress=self.progress, start_labels=start_labels,
                                                covariates=covariates, workers=workers, targets=targets)
        timings["train"] = time.perf_counter() - mark

        self._store(net, x, labels, fit_rows, adata.n_obs, embedding, panel_counts, total_counts,
                    history=history, timings=timings, n_clusters=k, n_clusters_method=k_method, selector=selector,
                    panel=panel,
                    cluster_names=names or _cluster_names(labels, user_labels, k),
                    pseudo_labels=None if pseudo is None else to_all_cells(pseudo, sketch, len(fit_rows)),
                    pseudo_label_ensemble=ensemble,
                    batches=None if batches is None else batches.sizes())
        timings["total"] = time.perf_counter() - started
        log.info("fitted %d cells into %d clusters in %.1f s", len(fit_rows), k, timings["total"])
        return self

    def _store(self, net: SCCSANet, x: NetworkInput, labels: np.ndarray, fit_rows: np.ndarray, n_obs: int,
               embedding: Embedding | None, panel_counts: Callable[[np.ndarray], np.ndarray],
               total_counts: np.ndarray, *, panel: GenePanel, **kept: Any) -> None:
        """Keep what was learned: the network on the CPU, and the state export and the report read
        (latents, α, per-cluster thresholds, the self-test cells' raw panel counts (``panel_counts``
        of positions among the fitted cells) and library sizes; ``kept``: the rest of
        :class:`FittedState`). ``embedding``: stage 2's last embedding of every cell, when training
        returned one; otherwise it is computed here."""
        latent, alpha = embedding if embedding is not None else embed_all(net, x)
        squared = net.squared_distances(latent)
        distance = squared.min(dim=1).values.sqrt().cpu().numpy()
        selftest = selftest_cells(squared, labels, net.n_clusters)
        self.net_ = net.cpu().eval()
        self.state_ = FittedState(
            panel=panel, labels=labels, latent=latent.cpu().numpy(), alpha=alpha.cpu().numpy(),
            thresholds=unassigned_thresholds(distance, labels, net.n_clusters),
            selftest_counts=panel_counts(selftest).astype(np.float32), selftest_totals=total_counts[selftest],
            input_kind=self.input_kind, n_cells=len(fit_rows), **kept,
        )
        self._fit_rows = fit_rows
        self._n_obs = n_obs

    def partial_fit(self, X: ad.AnnData, y: Any = None, *, epochs: int | None = None) -> SCCSA:
        """Go on training on the cells of the AnnData ``X`` (e.g. a new batch, or after :meth:`load`):
        stage 2 (the joint objective with closed-form centroid updates) for up to ``epochs``
        (default ``cluster_epochs``) or until it stops as in :meth:`fit` (``tol``, ``patience``), keeping the
        gene panel (genes matched by name, missing ones as zero), its scaling, the cluster names
        and the centroids it starts from. Afterwards ``labels_`` and the thresholds are those of
        ``X``. An unfitted model is fitted on ``X`` instead. ``y`` is ignored."""
        if not hasattr(self, "state_"):
            return self.fit(X)
        validate(self.get_params())
        _require_anndata(X)
        old = self._fitted()
        started = time.perf_counter()
        with torch_threads_kept():
            data = prepare(X, layer=self.layer, input_kind=old.input_kind, total_counts_key=self.total_counts_key,
                           min_cells=0)
        fit_rows = np.flatnonzero(~data.empty_cells)
        alignment = align_genes(data.genes, old.panel.genes, source="the data")
        device = resolve_device(self.device)
        workers = workers_from_environment(device)
        device = workers.device(device)
        seed_everything(self.random_state)
        net = self.net_.to(device)
        x = NetworkInput(alignment.take_csr(_rows_of(data.lognorm, fit_rows)), old.panel, device)
        batches = None
        if old.batches is not None:
            if self.batch_key is None:
                raise InputDataError("This model was trained with a batch_key, so partial_fit needs one too; set "
                                     "batch_key to the obs column naming each cell's batch.")
            batches = read_batches(X, self.batch_key, fit_rows, known=tuple(old.batches))
        targets = self._known_label_codes(X, fit_rows, old.cluster_names) if self._classifies() else None
        latent, _ = embed_all(net, x)
        labels = net.squared_distances(latent).argmin(dim=1).cpu().numpy()
        schedule = replace(self._schedule(device), cluster_epochs=self.cluster_epochs if epochs is None else epochs)
        history = History(pretrain=list(old.history.pretrain), cluster=list(old.history.cluster),
                          beta=old.history.beta, seconds=dict(old.history.seconds), precision=schedule.precision)
        generator = torch.Generator().manual_seed(self.random_state)
        labels, embedding = cluster(workers.wrap(net), x, labels, schedule, history, generator,
                                    self.progress and workers.is_main,
                                    None if batches is None else batches.one_hot().to(device), workers,
                                    None if targets is None else torch.as_tensor(targets, device=device))
        timings = dict(old.timings, partial_fit=time.perf_counter() - started)
        self._store(net, x, labels, fit_rows, X.n_obs, embedding,
                    lambda positions: alignment.take_csr(data.counts[fit_rows[positions]]).toarray(),
                    data.total_counts[fit_rows], history=history, timings=timings,
                    n_clusters=old.n_clusters, n_clusters_method=old.n_clusters_method, selector=old.selector,
                    panel=old.panel, cluster_names=old.cluster_names, pseudo_labels=None, batches=old.batches,
                    pseudo_label_ensemble=old.pseudo_label_ensemble)  # the panel's, chosen in fit
        log.info("went on training on %d cells for %d epochs in %.1f s", len(fit_rows),
                 len(history.cluster) - len(old.history.cluster), timings["partial_fit"])
        return self

    def _user_labels(self, adata: ad.AnnData, rows: np.ndarray) -> np.ndarray | None:
        if self.labels_key is None:
            return None
        return complete_obs_strings(adata.obs, self.labels_key, "labels_key", rows,
                                    "label every cell or drop the unlabelled ones before training.")

    def _known_label_codes(self, adata: ad.AnnData, rows: np.ndarray, names: list[str] | None) -> np.ndarray:
        """Codes of ``labels_key`` in the cluster names of a classifying model (``partial_fit``: the
        new cells must carry labels the model already knows)."""
        labels = self._user_labels(adata, rows)
        unknown = sorted(set(labels) - set(names or []))
        if unknown:
            raise InputDataError(
                f"partial_fit goes on learning the model's {len(names or [])} labels, but {self.labels_key} also "
                f"holds {', '.join(map(repr, unknown[:5]))}; drop those cells, or fit a new model on all labels.")
        return np.searchsorted(names, labels).astype(np.int64)

    def _classifies(self) -> bool:
        """Stage 2 learns the reference labels (the rule the CLI checks too)."""
        return classifies(self.objective, self.labels_key)

    def _init(self, batch_aware: bool) -> str:
        """``init='auto'``: centroids at the pseudo-label means when training is batch-aware (the
        labels come from the batch-corrected embedding, the latent does not), else K-means on the latent."""
        if self.init != "auto":
            return self.init
        return "labels" if batch_aware else "kmeans"

    def _latent_size(self, k: int) -> int:
        """``latent_dim``, with 'auto' resolved for K clusters: LATENT_DIM when stage 2 clusters; when it
        classifies, at least K − 1, since the K label means a nearest-centroid (LDA) rule separates
        span K − 1 dimensions."""
        if self.latent_dim != "auto":
            return int(self.latent_dim)
        return max(LATENT_DIM, k - 1) if self._classifies() else LATENT_DIM

    def _network(self, n_genes: int, k: int, n_batches: int) -> SCCSANet:
        """The untrained network these parameters describe (``n_batches`` > 0: conditional decoder)."""
        return SCCSANet(n_genes, k, latent_dim=self._latent_size(k), cc=self.cc, alpha=self.alpha,
                        attention_dim=self.attention_dim, channels=tuple(self.channels), batch_norm=self.batch_norm,
                        n_covariates=n_batches)

    def _pseudo_labels(self, lognorm: Any, k: int, batches: np.ndarray | None,
                       pcs: Callable[[], np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        """The consensus pseudo-labels the F-test reads and the summary of their ensemble the
        report records (``pcs``: the standard PCs of ``lognorm``)."""
        consensus = consensus_labels(lognorm, k, seed=self.random_state, batches=batches, pcs=pcs())
        return consensus.labels, consensus.summary()

    def _resolve_k(self, lognorm: Any, n_cells: int, user_labels: np.ndarray | None,
                   pcs: Callable[[], np.ndarray]) -> tuple[int, str]:
        """K as given, the number of reference labels, or estimated (``pcs``: the standard PCs of ``lognorm``)."""
        classes = None if user_labels is None else len(np.unique(user_labels))
        if self.n_clusters == "auto":
            if classes is not None:
                k, method = classes, f"number of distinct {self.labels_key}"
            else:
                k = n_clusters_estimation.estimate(lognorm, seed=self.random_state, pcs=pcs())
                method = n_clusters_estimation.METHOD
        else:
            k, method = int(self.n_clusters), "given"
        if self._classifies() and k != classes:
            raise InputDataError(
                f"objective='classify' learns one cluster per label, but {self.labels_key} has "
                f"{classes} classes and n_clusters is {k}; set n_clusters to 'auto' or use "
                "objective='cluster'.")
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
        check_is_fitted(self, "state_", msg="This SCCSA model is not fitted yet; call fit(adata) first.")
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

    def fitted(self) -> FittedModel:
        """The fitted model as a value (parameters, network, learned state): what export and the
        report read, so they need nothing else of the estimator."""
        return FittedModel(params=self.get_params(), net=self.net_, state=self._fitted())

    def serving_graph(self) -> ServingGraph:
        """The torch module that the ONNX export traces (counts + library size → outputs)."""
        return self.fitted().serving_graph()

    def _predict(self, adata: ad.AnnData, layer: str | None) -> Prediction:
        """Run the torch serving graph over ``adata`` through the serving half's block primitive, so
        results are exactly what ``sccsa-infer`` derives from the exported graph."""
        state = self._fitted()
        matrix = expression_matrix(adata, layer if layer is not None else self.layer)
        alignment = align_genes([str(g) for g in adata.var_names], state.panel.genes, source="the data")
        totals = None
        if self.total_counts_key is not None:
            totals = library_sizes(adata, matrix, self.total_counts_key)
        labeller = BlockLabeller(self.serving_graph().run, alignment, state.input_kind, state.thresholds, state.cluster_names)
        return labeller.label(matrix, total_counts=totals, batch_size=DEFAULT_BATCH_SIZE, source="the data")

    def transform(self, X: ad.AnnData, layer: str | None = None) -> np.ndarray:
        """Latent coordinates z of the cells of the AnnData ``X`` (genes matched by name)."""
        return self._predict(X, layer).latent

    def predict(self, X: ad.AnnData, layer: str | None = None) -> np.ndarray:
        """Nearest-centroid cluster of the cells of the AnnData ``X`` (what the exported graph returns)."""
        return self._predict(X, layer).cluster

    def annotate(self, adata: ad.AnnData, *, layer: str | None = None, key_added: str = KEY_ADDED,
                 copy: bool = False) -> ad.AnnData | None:
        """Write the serving half's output schema into ``adata``: ``obs['{key_added}_cluster']``,
        ``_label`` (when trained with labels), ``_confidence``, ``_distance``, ``_unassigned``,
        ``obsm['X_{key_added}']`` and ``uns[key_added]['params']`` (Scanpy style: in place, or on a
        copy that is returned with ``copy=True``)."""
        target = adata.copy() if copy else adata
        result = self._predict(target, layer)
        for key, values in result.obs_columns(key_added).items():
            target.obs[key] = values
        target.obsm.update(result.obsm(key_added))
        params = {k: ("" if v is None else v) for k, v in self.get_params().items()}
        params["channels"] = list(params["channels"])
        target.uns[key_added] = {"params": params, "model": "sccsa_train.SCCSA (torch, in memory)",
                                 "gene_coverage": float(result.gene_coverage or 0.0),
                                 "cluster_names": self.state_.cluster_names or []}
        return target if copy else None

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save the fitted model (parameters, network weights, fitted state; no pickle) to the
        folder ``path``, to load it later with :meth:`load` and go on training or embedding."""
        from .persistence import save_model

        return save_model(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> SCCSA:
        """A model saved with :meth:`save` (format- and version-checked)."""
        from .persistence import load_model

        return load_model(cls, path)

    def export(self, path: str | Path, *, metrics: dict[str, float] | None = None, overwrite: bool = False,
               cell_ontology: dict[str, dict[str, Any]] | None = None) -> Path:
        """Write the model bundle (ONNX graph + metadata + selector + report) to ``path``.
        ``cell_ontology``: {cluster name: {"id": "CL:…", "synonyms": [...]}} for a model whose
        clusters carry Cell Ontology names, so that serving reports the ids and ``--eval-key``
        understands ids and synonyms (checked before anything is written)."""
        from .export import export_bundle

        return export_bundle(self.fitted(), path, metrics=metrics or {}, overwrite=overwrite,
                             cell_ontology=cell_ontology)


def _require_anndata(X: Any) -> None:
    """sccsa reads genes by name, so ``X`` must be an AnnData; say so instead of failing deep inside."""
    if not isinstance(X, ad.AnnData):
        raise InputDataError(
            f"SCCSA needs an AnnData (cells × genes with gene names in var_names), not {type(X).__name__}: "
            "wrap a matrix as anndata.AnnData(X=counts, var=pandas.DataFrame(index=gene_names))."
        )


def _label_codes(labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The labels' names (sorted) and each cell's code: cluster k is label k with
    objective='classify' (:meth:`SCCSA._resolve_k` checked that K is their number) and init='labels'."""
    names, codes = np.unique(labels, return_inverse=True)
    return [str(name) for name in names], codes.astype(np.int64)


def _start_labels(labels: np.ndarray, k: int) -> np.ndarray:
    """``labels`` as integers 0..K-1 (init='labels' needs exactly K distinct labels)."""
    names, codes = _label_codes(labels)
    if len(names) != k:
        raise InputDataError(
            f"init='labels' starts one centroid per label, but the labels have {len(names)} classes and "
            f"n_clusters is {k}; set n_clusters to {len(names)} (or 'auto') or use init='kmeans'."
        )
    return codes


def _cluster_names(labels: np.ndarray, user_labels: np.ndarray | None, k: int) -> list[str] | None:
    """Majority user label of each cluster's training cells (None without user labels)."""
    if user_labels is None:
        return None
    names = []
    for c in range(k):
        members = user_labels[labels == c]
        names.append(pd.Series(members).value_counts().index[0] if len(members) else f"cluster_{c}")
    return [str(n) for n in names]


def _rows_of(matrix: sp.csr_matrix, fit_rows: np.ndarray) -> sp.csr_matrix:
    """``matrix[fit_rows]`` (``fit_rows``: sorted distinct positions), or ``matrix`` itself when
    they are all of its rows: a fancy row index copies the whole matrix (gigabytes at 10^6 cells)."""
    return matrix if len(fit_rows) == matrix.shape[0] else matrix[fit_rows]
