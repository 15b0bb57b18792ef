"""The one table of training options: name, type, range or choices, default and help.

``sccsa-train``'s options (:mod:`sccsa_train.cli`), the validation of :class:`SCCSA`'s
parameters and the defaults of the internal schedule all come from :data:`OPTIONS`; the bundle
records the estimator's parameters under the same names. Importable without torch, so that
``sccsa-train --help`` stays fast.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sccsa_infer.errors import InvalidParameterError
from sccsa_infer.validate import INPUT_KINDS

GENE_SELECTIONS: tuple[str, ...] = ("ftest", "hvg")
GENE_ORDERS: tuple[str, ...] = ("correlation", "fscore", "input")
CC_MODES: tuple[str, ...] = ("sa", "fixed", "off")
CENTROID_INITS: tuple[str, ...] = ("auto", "kmeans", "labels")
KMEANS_CHOICES: tuple[str, ...] = ("inertia", "silhouette")
CLASS_METRICS: tuple[str, ...] = ("euclidean", "within")
OBJECTIVES: tuple[str, ...] = ("auto", "cluster", "classify")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
PRECISIONS: tuple[str, ...] = ("32", "bf16-mixed", "auto")
LR_SCHEDULES: tuple[str, ...] = ("constant", "one_cycle")
DEFAULT_CHANNELS: tuple[int, int, int] = (16, 32, 64)
LATENT_DIM = 10
"""The latent dimension of a clustering fit under ``latent_dim='auto'``, and the least of a classifying one."""
STAGE2_STOPS: dict[str, str] = {"tol": "fewer than tol of the labels changed", "patience": "no progress in patience "
                                "epochs", "steps": "reached cluster_max_steps", "epochs": "reached cluster_epochs"}
"""Why stage 2 ended (``History.stop``), as the CLI and the log say it."""


@dataclass(frozen=True)
class Option:
    """One training option. ``kind`` is one of int, float, str, bool, 'k' (``auto`` or an integer
    ≥ 2; ``metavar`` names it on the command line), 'channels' (three positive integers) or 'key'
    (an obs/layer name or None)."""

    name: str
    kind: Any
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    short: str | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None

    @property
    def flag(self) -> str:
        """The CLI flag: the parameter name with dashes."""
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> None:
        """Raise :class:`InvalidParameterError` unless ``value`` is allowed for this option."""
        problem = self._problem(value)
        if problem:
            raise InvalidParameterError(
                f"{self.name}={value!r} is invalid: {problem} ({self.flag} on the command line).")

    def _problem(self, value: Any) -> str | None:
        if self.kind == "key":
            if value is None or (isinstance(value, str) and value):
                return None
            return "expected a column/layer name or None"
        if self.kind == "k":
            if value == "auto" or (_is_int(value) and value >= 2):
                return None
            return "expected 'auto' or an integer ≥ 2"
        if self.kind == "channels":
            if isinstance(value, (tuple, list)) and len(value) == 3 and all(_is_int(c) and c >= 1 for c in value):
                return None
            return "expected three positive integers, e.g. (16, 32, 64)"
        if self.kind is bool:
            return None if isinstance(value, bool) else "expected True or False"
        if self.kind is str:
            return None if value in (self.choices or ()) else f"expected one of {', '.join(self.choices or ())}"
        if self.kind is int and not _is_int(value):
            return "expected an integer"
        if self.kind is float and not (_is_number(value) and math.isfinite(value)):
            return "expected a finite number"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '≥'} {self.low:g}"
        if self.high is not None and value > self.high:
            return f"must be ≤ {self.high:g}"
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


OPTIONS: tuple[Option, ...] = (
    Option("n_clusters", "k", "auto", "Number of clusters K, or 'auto' (the number of labels_key classes when given, "
           "else estimated from the data: see README).", short="-k", metavar="K|auto"),
    Option("n_genes", int, 1000, "Number of genes the model reads (F-test or HVG selection).", low=4),
    Option("genes", str, "ftest", "ftest: SelectKBest(f_classif) on pseudo-labels (or labels_key); hvg: Scanpy highly "
           "variable genes.", choices=GENE_SELECTIONS),
    Option("labels_key", "key", None, "obs column of known cell types: the F-test uses them (reference-atlas mode) and "
           "clusters get their names."),
    Option("batch_key", "key", None, "obs column naming each cell's batch (donor, sample, condition): pseudo-labels "
           "from a Harmony-corrected embedding start the centroids and the decoder is told the batch, so clusters "
           "follow cell types rather than batches. Serving needs no batch column."),
    Option("gene_order", str, "correlation", "Order of genes in the 1-D signal/2-D image: correlation (co-expressed "
           "genes adjacent), fscore, input.", choices=GENE_ORDERS),
    Option("cc", str, "sa", "Coefficient compression: sa (self-attention, per-cell alpha), fixed (alpha), off (no "
           "autocorrelation).", choices=CC_MODES),
    Option("alpha", float, 0.5, "Weight of the expression channel with cc=fixed (1 = expression only).", low=0, high=1),
    Option("latent_dim", "k", LATENT_DIM, f"Latent dimension L, or 'auto': {LATENT_DIM} when stage 2 clusters; "
           f"max({LATENT_DIM}, K - 1) when it classifies (the nearest label centroid in the within-class whitened "
           "latent is linear discriminant analysis, whose K labels' means need K - 1 dimensions).", metavar="L|auto"),
    Option("attention_dim", int, 128, "Width h of the SA-CC projections.", low=1),
    Option("channels", "channels", DEFAULT_CHANNELS, "Channels of the three convolution layers, e.g. 16,32,64."),
    Option("batch_norm", bool, False, "BatchNorm after each convolution of the autoencoder."),
    Option("input_kind", str, "counts", "counts: raw integer counts; abundance: RPKM/FPKM/TPM (normalised + log1p like "
           "counts); lognorm: already log1p-normalised (used as is).", choices=INPUT_KINDS),
    Option("layer", "key", None, "Use adata.layers[LAYER] instead of X (e.g. counts)."),
    Option("total_counts_key", "key", None, "obs column with each cell's library size over ALL genes, for files that "
           "hold only a subset of genes (default: the row sums). Serving then needs the same option or full-gene "
           "queries."),
    Option("pretrain_epochs", int, 60, "Stage 1 epochs.", low=1),
    Option("pretrain_max_steps", int, 0, "Stage 1 stops after this many optimizer steps even before pretrain_epochs "
           "(0: no limit), so large data do not pay for epochs they do not need.", low=0),
    Option("input_noise", float, 0.0, "Stage 1 adds Gaussian noise of this standard deviation to the standardised "
           "panel and reconstructs the clean panel (a denoising autoencoder, as scDeepCluster); 0: off.", low=0),
    Option("pretrain_starts", int, 1, "Pretrain this many networks from different random starts and go on with the "
           "one whose latent K-means partition has the highest silhouette (costs one stage 1 per start).", low=1),
    Option("cluster_epochs", int, 100, "Stage 2 maximum epochs (stops earlier when < tol of labels change).", low=0),
    Option("cluster_max_steps", int, 0, "Stage 2 stops after this many optimizer steps even before cluster_epochs "
           "(0: no limit); the epoch it stops in still updates the centroids and labels from every cell.", low=0),
    Option("batch_size", int, 256, "Cells per mini-batch.", low=2),
    Option("lr", float, 1e-3, "Stage 1 learning rate (with lr_schedule='one_cycle', its peak).", low=0, low_open=True),
    Option("lr_schedule", str, "constant", "Stage 1's learning rate over its steps: constant (lr throughout); one_cycle "
           "(PyTorch's OneCycleLR, Smith's super-convergence: up from lr/25 to lr over the first 30 % of the steps, "
           "then cosine annealing to ~0 at the last).", choices=LR_SCHEDULES),
    Option("cluster_lr", float, 1e-4, "Stage 2 learning rate when it clusters (classify_lr when it classifies).",
           low=0, low_open=True),
    Option("tol", float, 0.001, "Stage 2 stops when fewer than this fraction of labels change in an epoch.", low=0,
           high=1),
    Option("patience", int, 10, "Stage 2 also stops after this many epochs without progress: clustering, when the "
           "fraction of labels changing has not gone below its earlier low (the partition no longer settles; "
           "benchmarks/results/stage2_stop.md); classifying, when the cross-entropy has not improved by tol "
           "(scikit-learn's n_iter_no_change). 0: off (a clustering stage 2 then stops only below tol or at "
           "cluster_epochs).", low=0),
    Option("beta_scale", float, 5.0, "Softness of r: beta = beta_scale / (mean squared distance to the nearest "
           "centroid at init).", low=0, low_open=True),
    Option("init", str, "auto", "Initial centroids: K-means on the pretrained latent, or the latent means of the "
           "labels the gene selection used (consensus pseudo-labels, or labels_key); auto: labels with batch_key, "
           "else kmeans.", choices=CENTROID_INITS),
    Option("kmeans_choice", str, "silhouette", "Which of the K-means restarts on the pretrained latent starts the "
           "centroids: silhouette (the best-separated partition among restarts whose inertia is within "
           "kmeans_tolerance of the lowest: K-means' near-ties between splitting one large type and separating small "
           "ones go to the separated types); inertia (the lowest inertia: plain K-means, the paper's).",
           choices=KMEANS_CHOICES),
    Option("kmeans_tolerance", float, 0.01, "kmeans_choice='silhouette' only: restarts whose inertia is within this "
           "fraction of the lowest compete on silhouette (0.01 = 1 %).", low=0, high=1),
    Option("objective", str, "auto", "Stage 2: cluster (the paper's soft k-means, KL and reconstruction); classify "
           "(needs labels_key: one centroid per label at its latent mean, and the encoder learns to put each cell "
           "nearest its own label's centroid, cross-entropy plus reconstruction: a nearest-class-mean classifier for "
           "label transfer, served by the same graph); auto: classify with labels_key, else cluster.",
           choices=OBJECTIVES),
    Option("class_metric", str, "within", "objective='classify' only (a clustering stage 2 ignores it): the "
           "distance to the label centroids. within: in the latent whitened by the labels' pooled within-class "
           "covariance after stage 2 (nearest centroid = linear discriminant analysis with equal priors; the exported "
           "graph and the 'latent' it returns carry the map); euclidean: in the latent as trained.",
           choices=CLASS_METRICS),
    Option("classify_lr", float, 1e-3, "objective='classify' only: stage 2's learning rate (cluster_lr is the "
           "clustering stage's).", low=0, low_open=True),
    Option("classify_reconstruction_weight", float, 10.0, "objective='classify' only: the reconstruction MSE's "
           "weight beside the cross-entropy (reconstruction_weight is the clustering stage's alpha2).", low=0),
    Option("kl_weight", float, 1.0, "alpha1, weight of KL(R||P).", low=0),
    Option("reconstruction_weight", float, 100.0, "alpha2, weight of the reconstruction MSE in a clustering stage 2 "
           "(classify_reconstruction_weight when stage 2 classifies).", low=0,
           aliases=("--recon-weight",)),
    Option("latent_norm_weight", float, 0.0, "lambda of the -lambda*z'z term.", low=0),
    Option("random_state", int, 0, "Random seed (same seed, same labels on CPU).", aliases=("--seed",)),
    Option("device", str, "auto", "auto uses a CUDA GPU when torch sees one.", choices=DEVICES),
    Option("precision", str, "32", "Arithmetic of the network's training passes: 32 (float32) or bf16-mixed "
           "(bfloat16 autocast of the forward pass, as Lightning names it; the losses, distances to the centroids, "
           "the centroid updates, the embeddings and the exported graph stay float32). Meant for GPUs; on a CPU "
           "without bfloat16 units it is slower. auto: bf16-mixed where the device computes bfloat16 natively (a CUDA "
           "GPU that supports it, a CPU with AVX-512-BF16 or AMX), else 32. The default stays 32, so one command "
           "gives the same numbers on every machine.", choices=PRECISIONS),
    Option("progress", bool, True,
           "Progress bars on stderr when it is a terminal, or in a notebook (never in log files)."),
)
BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}


def default(name: str) -> Any:
    """The default of option ``name`` (one source for the estimator, the CLI and the schedule)."""
    return BY_NAME[name].default


CLASSIFY_ONLY: tuple[str, ...] = ("class_metric", "classify_lr", "classify_reconstruction_weight")
"""Options that shape only a classifying stage 2 (``sccsa-train`` refuses them on the command line otherwise)."""


def classifies(objective: str, labels_key: str | None) -> bool:
    """Stage 2 learns the reference labels: ``objective='classify'``, or 'auto' with ``labels_key``."""
    return objective == "classify" or (objective == "auto" and labels_key is not None)


def validate(params: Mapping[str, Any]) -> None:
    """Check every parameter against the table; raise :class:`InvalidParameterError` on the first bad one."""
    unknown = sorted(set(params) - set(BY_NAME))
    if unknown:
        raise InvalidParameterError(f"Unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(BY_NAME)}.")
    for name, value in params.items():
        BY_NAME[name].check(value)
    if params.get("objective") == "classify":
        if params.get("labels_key") is None:
            raise InvalidParameterError("objective='classify' learns the reference labels, so it needs labels_key "
                                        "(--labels-key COL, the obs column of cell types); or use objective='cluster'.")
        if params.get("init") == "kmeans":
            raise InvalidParameterError("objective='classify' starts one centroid at each label's latent mean; "
                                        "drop init='kmeans' (use 'auto' or 'labels') or use objective='cluster'.")
