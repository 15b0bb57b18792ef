"""The scCompressSA objective (paper Eq. 1-6) with the reference code's errors fixed.

    r_ik = softmax_k(−β ‖z_i − μ_k‖²)                        soft k-means responsibilities
    p_ik = softmax_k(θ_kᵀ z_i + b_k)                          the trained classifier head
    L1   = (mean_i Σ_k r_ik ‖z_i − μ_k‖² − λ mean_i z_iᵀ z_i) / D0
    L2   = KL(R ‖ P) = mean_i Σ_k r_ik (log r_ik − log p_ik)  (added, not subtracted)
    L3   = mean squared reconstruction error
    L    = L1 + α1 L2 + α2 L3

With reference labels (``objective='classify'``) stage 2 instead minimises

    L    = CE(y, softmax_k(−β ‖z_i − μ_k‖²)) + α2' L3,   μ_k = the mean z of label k

(α2' = ``classify_reconstruction_weight``, 10 rather than α2's 100, at ``classify_lr`` 1e-3 rather
than stage 2's clustering 1e-4: at α2 and 1e-4 the classifier underfitted its own reference), so
the encoder learns to place each cell nearest its own label's centroid: a nearest-class-mean
classifier (as prototypical networks), computed by the same exported graph as the clusters.

D0, the mean squared distance of a cell to its nearest centroid at K-means initialisation, makes
L1 dimensionless (≈ 1 at the start) whatever the latent's scale, so the same α1/α2 work across
datasets; β = ``beta_scale`` / D0 sets how soft r is, independently of L1's weight. r is
treated as the E-step (no gradient through it): the gradient of L1 pulls each z towards its
responsible centroids. μ is updated in closed form (r-weighted means) between epochs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .options import default


@dataclass(frozen=True)
class ObjectiveWeights:
    """α1 (KL), α2 (reconstruction), λ (the −λ zᵀz term of L1), and α2' (reconstruction beside a
    classifying stage 2's cross-entropy)."""

    kl: float = default("kl_weight")
    reconstruction: float = default("reconstruction_weight")
    latent_norm: float = default("latent_norm_weight")
    classify_reconstruction: float = default("classify_reconstruction_weight")


def responsibilities(squared_distances: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
    """r_ik = softmax_k(−β d_ik)."""
    return torch.softmax(-beta * squared_distances, dim=1)


def clustering_loss(squared_distances: torch.Tensor, resp: torch.Tensor, latent: torch.Tensor,
                    scale: torch.Tensor | float, latent_norm: float) -> torch.Tensor:
    """L1 (times ``scale`` = 1/D0): soft k-means distortion minus λ times the latent's mean squared norm."""
    distortion = (resp.detach() * squared_distances).sum(dim=1).mean()
    return scale * (distortion - latent_norm * latent.square().sum(dim=1).mean())


def kl_loss(resp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """L2 = KL(R‖P), R fixed (the target), P = softmax(logits) from the classifier head."""
    target = resp.detach()
    return (target * (torch.log(target.clamp_min(1e-12)) - F.log_softmax(logits, dim=1))).sum(dim=1).mean()


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L3: mean squared error over the panel's genes."""
    return F.mse_loss(reconstruction, target)


@torch.no_grad()
def update_centroids(latent: torch.Tensor, centroids: torch.Tensor, beta: torch.Tensor | float,
                     total: Callable[[torch.Tensor], torch.Tensor] = lambda sums: sums) -> torch.Tensor:
    """Closed-form μ_k = Σ_i r_ik z_i / Σ_i r_ik; a centroid with no weight keeps its place.
    ``total`` sums both statistics over the processes that hold the other cells (distributed training)."""
    diff = latent.unsqueeze(1) - centroids.unsqueeze(0)
    resp = responsibilities(diff.square().sum(dim=-1), beta)
    weight = total(resp.sum(dim=0))
    updated = total(resp.T @ latent) / weight.clamp_min(1e-8).unsqueeze(1)
    return torch.where(weight.unsqueeze(1) > 1e-6, updated, centroids)


def classification_loss(squared_distances: torch.Tensor, beta: torch.Tensor | float,
                        targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the reference labels under softmax_k(−β d_ik), the soft assignment whose
    argmax the exported graph returns."""
    return F.cross_entropy(-beta * squared_distances, targets)


@torch.no_grad()
def class_means(latent: torch.Tensor, targets: torch.Tensor, centroids: torch.Tensor,
                total: Callable[[torch.Tensor], torch.Tensor] = lambda sums: sums) -> torch.Tensor:
    """μ_k = mean z of the cells labelled k (``total``: as :func:`update_centroids`); a label with
    no cell keeps its centroid."""
    one_hot = F.one_hot(targets, centroids.shape[0]).to(latent.dtype)
    weight = total(one_hot.sum(dim=0))
    updated = total(one_hot.T @ latent) / weight.clamp_min(1).unsqueeze(1)
    return torch.where(weight.unsqueeze(1) > 0, updated, centroids)


@torch.no_grad()
def within_class_whitening(latent: torch.Tensor, targets: torch.Tensor, n_classes: int,
                           total: Callable[[torch.Tensor], torch.Tensor] = lambda sums: sums) -> torch.Tensor:
    """Σ_w^(−1/2), the symmetric inverse square root of the labels' pooled within-class covariance
    of ``latent`` (``total``: as :func:`update_centroids`). Nearest class mean after this map is
    linear discriminant analysis with equal priors: the Euclidean rule treats every latent
    direction alike, although classes spread far more along some. Eigenvalues are floored at 10⁻⁶
    of the largest, so a direction no class varies in is not stretched without bound."""
    z = latent.to(torch.float64)
    one_hot = F.one_hot(targets, n_classes).to(torch.float64)
    counts = total(one_hot.sum(dim=0))
    means = total(one_hot.T @ z) / counts.clamp_min(1).unsqueeze(1)
    centred = z - means[targets]
    scatter = total(centred.T @ centred)
    degrees = (counts.sum() - (counts > 0).sum()).clamp_min(1)
    values, vectors = torch.linalg.eigh(scatter / degrees)
    values = values.clamp_min(float(values.max()) * 1e-6).clamp_min(1e-12)
    return ((vectors / values.sqrt()) @ vectors.T).to(latent.dtype)
