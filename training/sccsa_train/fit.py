"""The two-stage training schedule: pretrain the autoencoder (+SA-CC), initialise μ (K-means, or
the means of the labels gene selection used), then optimise the joint objective until fewer
than ``tol`` of the labels change per epoch.

With ``pretrain_starts`` > 1, stage 1 trains that many networks from different random starts
and stage 2 goes on with the one whose latent K-means partitions best by the silhouette (an
unsupervised criterion: the latent differs by seed, and a start can split a large class).

Under ``torchrun`` the stages run data-parallel (:mod:`sccsa_train.distributed`): ``workers``
says which share of every mini-batch and of the cells this process handles.

Evaluation labels never enter this module: nothing here can select epochs or models by them.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin
from tqdm.auto import tqdm

from sccsa_infer.defaults import bar_disabled

from .distributed import SINGLE, Workers, unwrap
from .kmeans_restarts import Restart, choose_restart, kmeans_restarts, near_lowest, score_silhouettes
from .model import NetOutput, SCCSANet
from .network_input import NetworkInput
from .objective import (
    ObjectiveWeights,
    class_means,
    classification_loss,
    clustering_loss,
    kl_loss,
    reconstruction_loss,
    responsibilities,
    update_centroids,
    within_class_whitening,
)
from .options import STAGE2_STOPS, default
from .sketch import SKETCH_CELLS, on_sketch, sketch_rows, to_all_cells

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """Optimisation settings of both stages."""

    pretrain_epochs: int = default("pretrain_epochs")
    pretrain_max_steps: int = default("pretrain_max_steps")
    pretrain_starts: int = default("pretrain_starts")
    input_noise: float = default("input_noise")
    cluster_epochs: int = default("cluster_epochs")
    cluster_max_steps: int = default("cluster_max_steps")
    batch_size: int = default("batch_size")
    pretrain_lr: float = default("lr")
    lr_schedule: str = default("lr_schedule")
    cluster_lr: float = default("cluster_lr")
    classify_lr: float = default("classify_lr")
    tol: float = default("tol")
    patience: int = default("patience")
    beta_scale: float = default("beta_scale")
    kmeans_choice: str = default("kmeans_choice")
    kmeans_tolerance: float = default("kmeans_tolerance")
    class_metric: str = default("class_metric")
    precision: str = default("precision")
    kmeans_n_init: int = 20
    kmeans_cells: int = SKETCH_CELLS
    silhouette_cells: int = 10_000
    weights: ObjectiveWeights = field(default_factory=ObjectiveWeights)


@dataclass
class History:
    """Per-epoch losses, label changes and timings (what report.json records)."""

    pretrain: list[dict[str, float]] = field(default_factory=list)
    cluster: list[dict[str, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    stop: str = "epochs"
    beta: float = float("nan")
    starts: list[dict[str, float]] = field(default_factory=list)
    precision: str = default("precision")
    """The arithmetic of the training passes, ``precision='auto'`` resolved (what report.json names)."""

    @property
    def converged(self) -> bool:
        """Stage 2 stopped on its own rule (``tol`` or ``patience``), not at a cap."""
        return self.stop in ("tol", "patience")

    def as_dict(self) -> dict[str, Any]:
        return {"pretrain": self.pretrain, "cluster": self.cluster, "seconds": self.seconds,
                "converged": self.converged, "stop": self.stop, "beta": self.beta, "starts": self.starts,
                "precision": self.precision}


def start_seed(seed: int, start: int) -> int:
    """The seed of pretraining start ``start``: the run's own seed for the first (one start trains
    exactly as before), then seeds drawn from (seed, start), distinct from other runs' first starts."""
    return seed if start == 0 else int(np.random.SeedSequence([seed, start]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels.

    Deterministic mode also fills every new tensor's memory with NaN, so that a kernel that read
    it uninitialised would show. Ours write their outputs whole: the fill changes no result (a
    test compares fits bit for bit) but adds ~200 operator calls to every stage-1 step, each a
    kernel launch on a GPU (benchmarks/results/step_profile.md). It is left off."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restore torch's intra-op thread count after the block.

    Scanpy's numba kernels start numba's OpenMP threading layer, which shares the OpenMP runtime
    with torch and sets it to one thread per core: without this, training ignores
    ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` (``sccsa-train --threads``) once Scanpy ran.
    """
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from sccsa_infer.errors import SccsaError

        raise SccsaError("--device cuda was requested but torch sees no CUDA GPU; use --device auto or cpu.")
    return torch.device(device)


Embedding = tuple[torch.Tensor, torch.Tensor]
"""Latent z and SA-CC weight α of every cell of an input, in evaluation mode."""


@torch.no_grad()
def embed_all(net: SCCSANet, x: NetworkInput, batch_size: int = 2048) -> Embedding:
    """Latent z and α of every row of ``x`` in evaluation mode, ``batch_size`` rows at a time.

    The results go into tensors allocated once: kept as one small tensor per chunk, they sit
    between the chunks' large freed temporaries and the heap never shrinks (4 GiB more at 10⁶ cells)."""
    was_training = net.training
    net.eval()
    latent = alpha = torch.empty(0)
    for start, chunk in zip(range(0, len(x), batch_size), x.chunks(batch_size)):
        z, a = net.embed(chunk)
        if start == 0:
            latent, alpha = z.new_empty((len(x), *z.shape[1:])), a.new_empty((len(x), *a.shape[1:]))
        latent[start : start + len(z)] = z
        alpha[start : start + len(a)] = a
    net.train(was_training)
    return latent, alpha


def batches_per_epoch(n: int, batch_size: int, workers: Workers = SINGLE) -> int:
    """How many mini-batches :func:`_batches` makes of ``n`` cells: a last batch too small for
    BatchNorm (fewer than two cells per rank) joins the one before it."""
    count = math.ceil(n / batch_size)
    return count - 1 if count > 1 and n - (count - 1) * batch_size < 2 * workers.size else count


def _batches(n: int, batch_size: int, generator: torch.Generator, workers: Workers = SINGLE) -> list[torch.Tensor]:
    """This rank's share of each global mini-batch of one epoch (every rank draws the same order)."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > batches_per_epoch(n, batch_size, workers):
        tail = batches.pop()
        batches[-1] = torch.cat([batches[-1], tail])
    return [workers.share(batch) for batch in batches]


def _epoch_means(sums: list[float], n: int, workers: Workers) -> list[float]:
    """Cell-weighted sums of one epoch's losses, summed over ranks, as means over all ``n`` cells."""
    return (workers.sum(torch.tensor(sums, dtype=torch.float64)) / n).tolist()


def _label_change(old: np.ndarray, new: np.ndarray, workers: Workers) -> float:
    """Fraction of the cells that had a label (≥ 0) whose label changed, over all ranks."""
    known = old >= 0
    counts = torch.tensor([np.sum(new[known] != old[known]), np.sum(known)], dtype=torch.float64)
    changed, labelled = workers.sum(counts).tolist()
    return changed / max(labelled, 1.0)


def _plateaued(epochs: list[dict[str, float]], tol: float, patience: int) -> bool:
    """The cross-entropy has not improved by ``tol`` on its best value for ``patience`` epochs.
    Classification cannot stop on stable labels as clustering does: the training cells' nearest
    centroids can stay the same from the first epoch while the classifier still improves."""
    losses = [epoch["cross_entropy"] for epoch in epochs]
    return 0 < patience < len(losses) and min(losses[-patience:]) > min(losses[:-patience]) - tol


def settled(changes: list[float], patience: int) -> bool:
    """The fraction of labels changing per epoch has not gone below its earlier low for ``patience``
    epochs: the partition no longer settles, it only churns. On the larger shared sets stage 2 ran
    into its cap with ~0.5 % of the cells changing every epoch while the ARI drifted; this rule,
    fixed before it was measured, stopped those fits after 19–29 epochs instead of 52–100
    (benchmarks/results/stage2_stop.md). It cannot act before epoch ``patience`` + 1."""
    return 0 < patience < len(changes) and min(changes[-patience:]) >= min(changes[:-patience])


def _stop_reason(epochs: list[dict[str, float]], schedule: Schedule, clustering: bool, out_of_steps: bool) -> str:
    """Why stage 2 stops after the latest of ``epochs`` (this run's; :data:`~sccsa_train.options.STAGE2_STOPS`),
    or ``"epochs"`` while it goes on (the cap of ``cluster_epochs`` ends the loop itself)."""
    if clustering and epochs[-1]["label_change"] < schedule.tol:
        return "tol"
    if (settled([e["label_change"] for e in epochs], schedule.patience) if clustering
            else _plateaued(epochs, schedule.tol, schedule.patience)):
        return "patience"
    return "steps" if out_of_steps else "epochs"


def forward_pass(model: torch.nn.Module, batch: torch.Tensor, covariates: torch.Tensor | None,
                 precision: str) -> NetOutput:
    """The network's training pass, under bfloat16 autocast with ``precision='bf16-mixed'``. The
    outputs come back as float32: the distances to μ, the losses and the centroid statistics
    built from them need float32's resolution (a bfloat16 latent has ~3 significant digits)."""
    with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        out = model(batch, covariates)
    return NetOutput(*(value.float() for value in out))


def _rows(covariates: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if covariates is None else covariates[index]


def pretrain(model: torch.nn.Module, x: NetworkInput, schedule: Schedule, history: History,
             generator: torch.Generator, progress: bool = True, covariates: torch.Tensor | None = None,
             workers: Workers = SINGLE) -> None:
    """Stage 1: reconstruction only (``model``: the network, inside DistributedDataParallel when
    ``workers`` are several; ``covariates``: the batch one-hot of each row of ``x``, for a
    conditional decoder)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=schedule.pretrain_lr)
    steps, limit = 0, schedule.pretrain_max_steps or None
    annealing = None
    if schedule.lr_schedule == "one_cycle":
        planned = schedule.pretrain_epochs * batches_per_epoch(len(x), schedule.batch_size, workers)
        annealing = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=schedule.pretrain_lr,
                                                        total_steps=min(planned, limit or planned))
    model.train()
    for epoch in tqdm(range(schedule.pretrain_epochs), desc="pretrain", unit="epoch", disable=bar_disabled(progress),
                      leave=False):
        started, total, seen = time.perf_counter(), 0.0, 0
        for index in _batches(len(x), schedule.batch_size, generator, workers):
            batch = x.take(index)
            noisy = batch
            if schedule.input_noise:
                noise = torch.randn(batch.shape, generator=generator).to(batch.device)
                noisy = batch + schedule.input_noise * noise
            out = forward_pass(model, noisy, _rows(covariates, index), schedule.precision)
            loss = reconstruction_loss(out.reconstruction, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if annealing is not None:
                annealing.step()
            total += float(loss.detach()) * len(index)
            seen += len(index)
            steps += 1
            if steps == limit:
                break
        total, seen = workers.sum(torch.tensor([total, seen], dtype=torch.float64)).tolist()  # over all ranks
        history.pretrain.append({"epoch": epoch, "reconstruction": total / seen, "steps": steps,
                                 "seconds": time.perf_counter() - started})
        if steps == limit:
            log.info("stage 1 reached its step budget (%d) in epoch %d", limit, epoch)
            break


def latent_kmeans(latent: torch.Tensor, k: int, schedule: Schedule, seed: int,
                  workers: Workers = SINGLE, score: bool = False) -> Restart:
    """K-means (``kmeans_n_init`` k-means++ restarts) on ``latent``, the restart chosen by
    ``kmeans_choice`` (:mod:`sccsa_train.kmeans_restarts`), computed by rank 0 and sent to the
    other ranks. Silhouettes are computed only where they are read: to choose among several
    candidate restarts, or with ``score`` (several pretraining starts are compared by it).
    Beyond ``kmeans_cells`` cells the restarts run on a random sample of that many (seeded, as the
    gene selection's sketch) and every cell gets its nearest centre, so they cost the same at any
    size (20 restarts on 10⁶ ten-dimensional points took ~9 s in a development run, on 50,000 of
    them ~1 s)."""
    def fit() -> Restart:
        values = latent.cpu().numpy().astype(np.float64)
        sample = sketch_rows(len(values), seed, schedule.kmeans_cells, purpose="K-means of the latent")
        fitted = on_sketch(values, sample)
        if schedule.kmeans_choice == "silhouette":
            candidates = near_lowest(kmeans_restarts(fitted, k, schedule.kmeans_n_init, seed),
                                     schedule.kmeans_tolerance)
        else:  # scikit-learn's K-means keeps its lowest-inertia restart
            kmeans = KMeans(k, n_init=schedule.kmeans_n_init, random_state=seed).fit(fitted)
            candidates = [Restart(kmeans.cluster_centers_, kmeans.labels_.astype(np.int64), float(kmeans.inertia_))]
        if score or len(candidates) > 1:
            score_silhouettes(fitted, candidates, seed, schedule.silhouette_cells)
        chosen = choose_restart(candidates)
        if sample is not None:
            chosen.labels = pairwise_distances_argmin(values, chosen.centres).astype(np.int64)
        return chosen

    return workers.on_main(fit)


def initialise_centroids(net: SCCSANet, x: NetworkInput, schedule: Schedule, seed: int,
                         start_labels: np.ndarray | None = None, workers: Workers = SINGLE,
                         kmeans: Restart | None = None,
                         latent: torch.Tensor | None = None) -> np.ndarray:
    """μ ← K-means on z (``kmeans``: a fit of :func:`latent_kmeans` already made on this net's
    ``latent`` of every cell, which is then not embedded again), or, given ``start_labels``
    (integers 0..K-1; −1 for a cell without a label, e.g. outside the sketch), the mean z of each
    label; β and 1/D0 from the initial distortion D0 (mean squared distance to the nearest
    centroid). Returns the nearest-centroid labels. With several ``workers`` every rank embeds the
    cells and rank 0's K-means is sent to the others.

    Beyond ``kmeans_cells`` cells, when stage 2 follows, the K-means start embeds only the sample
    its centres are fitted on (one embedding of 10⁶ cells took ~100 s in the speed page's rows at 9b1e317):
    D0 is that sample's, and the other cells get the label −1 (none yet), which stage 2's first
    epoch replaces."""
    workers.same_buffers(net)
    sample = None
    if start_labels is None and kmeans is None and schedule.cluster_epochs > 0:
        sample = sketch_rows(len(x), seed, schedule.kmeans_cells, purpose="K-means of the latent")
    if latent is None:
        latent, _ = embed_all(net, x if sample is None else x[sample])
    if start_labels is None:
        kmeans = kmeans or latent_kmeans(latent, net.n_clusters, schedule, seed, workers)
        net.centroids.copy_(torch.as_tensor(kmeans.centres, dtype=net.centroids.dtype))
    else:
        groups = torch.as_tensor(start_labels, device=latent.device)
        net.centroids.copy_(torch.stack([latent[groups == k].mean(dim=0) for k in range(net.n_clusters)]))
    distances = net.squared_distances(latent)
    distortion = float(distances.min(dim=1).values.mean().clamp_min(1e-12))
    net.distortion_scale.fill_(1.0 / distortion)
    net.beta.fill_(schedule.beta_scale / distortion)
    if start_labels is not None:
        return distances.argmin(dim=1).cpu().numpy().astype(np.int64)
    return to_all_cells(kmeans.labels, sample, len(x))


def _stage2_loss(net: SCCSANet, out: Any, batch: torch.Tensor, weights: ObjectiveWeights,
                 targets: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage 2's loss on one mini-batch and its terms: the joint clustering objective, or with
    ``targets`` (the batch's reference label codes) cross-entropy plus reconstruction."""
    distances = net.squared_distances(out.latent)
    l3 = reconstruction_loss(out.reconstruction, batch)
    if targets is not None:
        ce = classification_loss(distances, net.beta, targets)
        return ce + weights.classify_reconstruction * l3, {"cross_entropy": ce, "reconstruction": l3}
    resp = responsibilities(distances, net.beta)
    l1 = clustering_loss(distances, resp, out.latent, net.distortion_scale, weights.latent_norm)
    l2 = kl_loss(resp, out.logits)
    return l1 + weights.kl * l2 + weights.reconstruction * l3, {"l1": l1, "kl": l2, "reconstruction": l3}


def cluster(model: torch.nn.Module, x: NetworkInput, labels: np.ndarray, schedule: Schedule, history: History,
            generator: torch.Generator, progress: bool = True, covariates: torch.Tensor | None = None,
            workers: Workers = SINGLE, targets: torch.Tensor | None = None) -> tuple[np.ndarray, Embedding | None]:
    """Stage 2: joint objective with closed-form μ updates; stop when < ``tol`` labels change, when
    their fraction has not reached a new low in ``patience`` epochs (:func:`settled`), or after
    ``cluster_max_steps`` optimizer steps (the epoch they end in still updates μ and the labels
    from every cell). With several ``workers`` each rank embeds its share of the cells;
    the centroid statistics, the label changes and, at the end, the labels are summed over ranks.

    ``labels``: the start's (−1 for a cell without one yet: the first epoch's label change counts
    only the cells that had one). Returns the labels and the last epoch's embedding of every
    cell, which the trained network gives unchanged (None under several workers, each holding its
    share, or without an epoch): embedding 10⁶ cells once more took about 100 s in the speed
    page's rows at 9b1e317.

    ``targets`` (reference label codes 0..K−1 of every row, ``objective='classify'``): the loss is
    cross-entropy plus reconstruction (weighed ``classify_reconstruction``, at ``classify_lr``) and
    μ_k is the mean latent of label k; the labels returned are still the nearest centroids, but it
    stops when the cross-entropy stalls (:func:`_plateaued`)."""
    net = unwrap(model)
    weights = schedule.weights
    optimizer = torch.optim.Adam(model.parameters(),
                                 lr=schedule.cluster_lr if targets is None else schedule.classify_lr)
    bar = tqdm(range(schedule.cluster_epochs), desc="cluster", unit="epoch", disable=bar_disabled(progress),
               leave=False)
    labels = labels.copy()
    steps, limit = 0, schedule.cluster_max_steps or None
    first = len(history.cluster)  # partial_fit goes on with the fit's history; its stop reads only its own epochs
    embedding = None
    for epoch in bar:
        model.train()
        started = time.perf_counter()
        sums: dict[str, float] = {}
        for index in _batches(len(x), schedule.batch_size, generator, workers):
            batch = x.take(index)
            out = forward_pass(model, batch, _rows(covariates, index), schedule.precision)
            loss, terms = _stage2_loss(net, out, batch, weights, _rows(targets, index))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) * len(index)
            steps += 1
            if steps == limit:
                break
        workers.same_buffers(net)
        embedding = latent, _ = embed_all(net, workers.share(x))
        if targets is None:
            net.centroids.copy_(update_centroids(latent, net.centroids, net.beta, workers.sum))
        else:
            net.centroids.copy_(class_means(latent, workers.share(targets), net.centroids, workers.sum))
        new_labels = net.squared_distances(latent).argmin(dim=1).cpu().numpy()
        change = _label_change(workers.share(labels), new_labels, workers)
        workers.share(labels)[:] = new_labels
        means = dict(zip(sums, _epoch_means(list(sums.values()), len(x), workers)))
        loss = means["loss"]
        history.cluster.append({"epoch": epoch, **means,
                                "label_change": change, "steps": steps, "seconds": time.perf_counter() - started})
        bar.set_postfix(loss=f"{loss:.3f}", changed=f"{change:.2%}")
        log.debug("stage 2 epoch %d: loss %.4f, %.2f%% of labels changed", epoch, loss, 100 * change)
        history.stop = _stop_reason(history.cluster[first:], schedule, targets is None, steps == limit)
        if history.stop != "epochs":
            break
    bar.close()
    if targets is not None and schedule.class_metric == "within":
        embedding = whiten_classes(net, embedding or embed_all(net, workers.share(x)), workers.share(targets),
                                   schedule, workers)
        workers.share(labels)[:] = net.squared_distances(embedding[0]).argmin(dim=1).cpu().numpy()
    if workers.size > 1:  # each rank holds the current labels of its own share of the cells
        mine = torch.zeros(len(labels), dtype=torch.int64)
        workers.share(mine)[:] = torch.from_numpy(workers.share(labels))
        labels = workers.sum(mine).numpy()
        embedding = None
    return labels, embedding


@torch.no_grad()
def whiten_classes(net: SCCSANet, embedding: Embedding, targets: torch.Tensor, schedule: Schedule,
                   workers: Workers = SINGLE) -> Embedding:
    """``class_metric='within'``: compose the net's ``latent_map`` with the whitening of the labels'
    within-class covariance (:func:`within_class_whitening`), move the centroids (class means)
    with it and re-set β and 1/D0 from the new mean squared distance to the nearest centroid, as
    at the start of stage 2. ``embedding``: this rank's cells; returns it in the new latent."""
    latent, alpha = embedding
    transform = within_class_whitening(latent, targets, net.n_clusters, workers.sum)
    net.latent_map.copy_(transform @ net.latent_map)
    net.centroids.copy_(net.centroids @ transform.T)
    latent = latent @ transform.T
    nearest = net.squared_distances(latent).min(dim=1).values
    total, count = workers.sum(torch.stack([nearest.sum().double(), torch.tensor(float(len(latent)),
                                                                                  dtype=torch.float64)])).tolist()
    distortion = max(total / max(count, 1.0), 1e-12)
    net.distortion_scale.fill_(1.0 / distortion)
    net.beta.fill_(schedule.beta_scale / distortion)
    log.info("class metric: latent whitened by the labels' within-class covariance (beta %.4g)", float(net.beta))
    return latent, alpha


@dataclass
class Start:
    """One pretrained network, the generator that goes on into stage 2, and (scored among several)
    its latent of every cell and that latent's K-means."""

    index: int
    net: SCCSANet
    generator: torch.Generator
    history: History
    latent: torch.Tensor | None = None
    kmeans: Restart | None = None
    silhouette: float = float("nan")


def pretrain_start(make_net: Callable[[], SCCSANet], x: NetworkInput, schedule: Schedule, seed: int, index: int,
                   progress: bool, covariates: torch.Tensor | None, workers: Workers) -> Start:
    """Stage 1 for start ``index``: a new network from ``make_net`` under :func:`start_seed`. The
    classifier head is idle in stage 1, so it is frozen there and DDP has no unused parameters to look for."""
    seed = start_seed(seed, index)
    seed_everything(seed)
    net = make_net()
    seed_everything(seed)
    start = Start(index, net, torch.Generator().manual_seed(seed), History(precision=schedule.precision))
    net.head.requires_grad_(False)
    pretrain(workers.wrap(net), x, schedule, start.history, start.generator, progress, covariates, workers)
    net.head.requires_grad_(True)
    return start


def score_start(start: Start, x: NetworkInput, schedule: Schedule, seed: int, workers: Workers) -> None:
    """K-means at K on the start's latent and the silhouette of that partition (on at most
    ``silhouette_cells`` cells, drawn with ``seed``): the criterion that chooses among starts."""
    workers.same_buffers(start.net)
    latent, _ = embed_all(start.net, x)
    start.latent = latent
    start.kmeans = latent_kmeans(latent, start.net.n_clusters, schedule, seed, workers, score=True)
    start.silhouette = start.kmeans.silhouette


def pretrain_best(make_net: Callable[[], SCCSANet], x: NetworkInput, schedule: Schedule, seed: int,
                  progress: bool, covariates: torch.Tensor | None, workers: Workers) -> Start:
    """Stage 1 from ``pretrain_starts`` random starts; the start whose latent K-means partition
    has the highest silhouette goes on, its history listing every start (one start: that start, unscored)."""
    best, summaries = None, []
    for index in range(schedule.pretrain_starts):
        started = time.perf_counter()
        start = pretrain_start(make_net, x, schedule, seed, index, progress, covariates, workers)
        if schedule.pretrain_starts > 1:
            score_start(start, x, schedule, seed, workers)
            summaries.append({"start": index, "silhouette": start.silhouette,
                              "reconstruction": start.history.pretrain[-1]["reconstruction"],
                              "seconds": time.perf_counter() - started})
            log.info("pretraining start %d: silhouette %.4f", index, start.silhouette)
        if best is None or start.silhouette > best.silhouette:
            best = start
    best.history.starts = summaries
    if summaries:
        log.info("kept pretraining start %d of %d (highest silhouette)", best.index, len(summaries))
    return best


def train(make_net: Callable[[], SCCSANet], x: NetworkInput, schedule: Schedule, *, seed: int = 0,
          progress: bool = True, start_labels: np.ndarray | None = None, covariates: torch.Tensor | None = None,
          workers: Workers = SINGLE, targets: np.ndarray | None = None,
          ) -> tuple[SCCSANet, np.ndarray, History, Embedding | None]:
    """Run both stages on the input ``x`` (made dense a batch at a time on the device
    ``make_net``'s networks live on);
    return the trained network, its labels, the history and the final embedding of every cell
    (see :func:`cluster`). ``start_labels`` (0..K-1 per row, −1:
    none) initialise μ as label means instead of K-means; ``covariates`` (batch one-hot per row)
    feed a conditional decoder; ``workers``: the processes ``torchrun`` started (each holds all
    of ``x`` and trains on its share); ``targets`` (reference label codes 0..K−1 of every row):
    stage 2 classifies (μ starts at, and stays, the label means; see :func:`cluster`)."""
    if targets is not None:
        start_labels = targets
    progress = progress and workers.is_main
    started = time.perf_counter()
    best = pretrain_best(make_net, x, schedule, seed, progress, covariates, workers)
    net, history = best.net, best.history
    history.seconds["pretrain"] = time.perf_counter() - started
    log.info("stage 1 (pretraining): %d epochs, reconstruction %.4f, %.1f s", len(history.pretrain),
             history.pretrain[-1]["reconstruction"], history.seconds["pretrain"])
    mark = time.perf_counter()
    labels = initialise_centroids(net, x, schedule, seed, start_labels, workers, best.kmeans, best.latent)
    history.beta = float(net.beta)
    history.seconds["kmeans_init"] = time.perf_counter() - mark
    log.info("centroids from %s in %.1f s", "K-means" if start_labels is None else "label means",
             history.seconds["kmeans_init"])
    mark = time.perf_counter()
    head = net.head.requires_grad_(targets is None)  # idle when classifying (DDP: no unused parameters)
    labels, embedding = cluster(workers.wrap(net), x, labels, schedule, history, best.generator, progress, covariates,
                                workers, None if targets is None else torch.as_tensor(targets, device=x.device))
    head.requires_grad_(True)
    history.seconds["cluster"] = time.perf_counter() - mark
    log.info("stage 2 (%s): %d epochs, %s, %.1f s", "clustering" if targets is None else "classifying",
             len(history.cluster), STAGE2_STOPS[history.stop], history.seconds["cluster"])
    return net, labels, history, embedding
