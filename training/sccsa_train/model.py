"""The scCompressSA network: SA-CC block → CAE, plus the centroids and the classifier head."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .cae import ConvAutoencoder
from .options import LATENT_DIM, default
from .sacc import SACC


class NetOutput(NamedTuple):
    """Everything one forward pass produces (a tuple, so DistributedDataParallel finds its tensors)."""

    latent: torch.Tensor
    reconstruction: torch.Tensor
    alpha: torch.Tensor
    logits: torch.Tensor


class SCCSANet(nn.Module):
    """Standardised panel vector → (SA-CC) → CAE latent; centroids μ, β and 1/D0 live here as buffers.

    ``head`` is the classifier p_ik = softmax(θ_kᵀ z_i + b_k) of paper Eq. 1, trained by the
    KL(R‖P) term. ``latent_map`` is a linear map applied to the encoder's code to give z: the
    identity, except after a classifying fit with ``class_metric='within'``, where it whitens the
    labels' pooled within-class covariance (so nearest-centroid is LDA's rule with equal priors);
    the decoder always reads the code itself.
    """

    def __init__(self, n_genes: int, n_clusters: int, *, latent_dim: int = LATENT_DIM,
                 cc: str = default("cc"), alpha: float = default("alpha"),
                 attention_dim: int = default("attention_dim"), channels: tuple[int, int, int] = default("channels"),
                 batch_norm: bool = default("batch_norm"), n_covariates: int = 0):
        super().__init__()
        self.sacc = SACC(n_genes, mode=cc, alpha=alpha, attention_dim=attention_dim)
        self.cae = ConvAutoencoder(n_genes, latent_dim, channels, batch_norm=batch_norm, n_covariates=n_covariates)
        self.head = nn.Linear(latent_dim, n_clusters)
        self.register_buffer("centroids", torch.zeros(n_clusters, latent_dim))
        self.register_buffer("beta", torch.tensor(1.0))
        self.register_buffer("distortion_scale", torch.tensor(1.0))
        self.register_buffer("latent_map", torch.eye(latent_dim))

    @property
    def n_clusters(self) -> int:
        return self.centroids.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.centroids.shape[1]

    def _code(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mixed, alpha = self.sacc(x)
        return self.cae.encode(mixed), alpha

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent z and SA-CC weight α for standardised inputs x."""
        code, alpha = self._code(x)
        return code @ self.latent_map.T, alpha

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> NetOutput:
        """Training pass; ``covariates`` (batch one-hot) only reach a conditional decoder."""
        code, alpha = self._code(x)
        latent = code @ self.latent_map.T
        return NetOutput(latent=latent, reconstruction=self.cae.decode(code, covariates), alpha=alpha,
                         logits=self.head(latent))

    def squared_distances(self, latent: torch.Tensor) -> torch.Tensor:
        """‖z_i − μ_k‖² for every cell and centroid, [N, K]."""
        diff = latent.unsqueeze(1) - self.centroids.unsqueeze(0)
        return diff.square().sum(dim=-1)
