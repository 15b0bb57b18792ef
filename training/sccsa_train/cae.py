"""The convolutional autoencoder (CAE): a cell's panel vector as a 1 × s × s image.

s = ⌈√d⌉ for any panel size d (zero-padded, row-major). The encoder is three stride-2
convolutions (kernels 5/5/3) and a linear layer to the latent z; the latent is batch-normalised
without affine parameters, which fixes its scale so the soft k-means term cannot shrink it to a
point (or blow it up, with the −λ‖z‖² term). The decoder mirrors the encoder with transposed
convolutions and ends in a *linear* output, so it can reconstruct standardised values beyond ±1.
With ``n_covariates`` > 0 the decoder also receives each cell's batch one-hot next to z (a
conditional decoder, as in scVI), so the encoder need not spend latent space on the batch; the
exported graph holds only the encoder, so serving never needs the batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .options import default

KERNELS = (5, 5, 3)


def _half(size: int) -> int:
    return (size + 1) // 2


class ConvAutoencoder(nn.Module):
    """Encoder/decoder pair; ``encode`` gives z, ``decode`` gives the reconstructed vector."""

    def __init__(self, n_genes: int, latent_dim: int = default("latent_dim"),
                 channels: tuple[int, int, int] = default("channels"), batch_norm: bool = default("batch_norm"),
                 n_covariates: int = 0):
        super().__init__()
        self.n_genes = n_genes
        self.n_covariates = n_covariates
        self.side = math.ceil(math.sqrt(n_genes))
        sizes = [self.side]
        for _ in KERNELS:
            sizes.append(_half(sizes[-1]))
        self.sizes = sizes
        c1, c2, c3 = channels
        ins, outs = (1, c1, c2), (c1, c2, c3)

        def block(conv: nn.Module, width: int) -> list[nn.Module]:
            return [conv, nn.BatchNorm2d(width), nn.LeakyReLU(0.2)] if batch_norm else [conv, nn.LeakyReLU(0.2)]

        encoder: list[nn.Module] = []
        for cin, cout, k in zip(ins, outs, KERNELS):
            encoder += block(nn.Conv2d(cin, cout, k, stride=2, padding=k // 2), cout)
        self.encoder = nn.Sequential(*encoder)
        flat = c3 * sizes[-1] ** 2
        self.to_latent = nn.Linear(flat, latent_dim)
        self.latent_norm = nn.BatchNorm1d(latent_dim, affine=False)
        self.from_latent = nn.Linear(latent_dim + n_covariates, flat)
        decoder: list[nn.Module] = [nn.LeakyReLU(0.2)]
        for i, (cin, cout, k) in enumerate(zip(reversed(outs), reversed(ins), reversed(KERNELS))):
            target, source = sizes[-2 - i], sizes[-1 - i]
            conv = nn.ConvTranspose2d(cin, cout, k, stride=2, padding=k // 2, output_padding=target - (2 * source - 1))
            decoder += [conv] if cout == 1 else block(conv, cout)
        self.decoder = nn.Sequential(*decoder)
        self.channels = channels

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """[N, d] → [N, 1, s, s], zero-padded row-major."""
        return F.pad(x, (0, self.side * self.side - self.n_genes)).reshape(-1, 1, self.side, self.side)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.latent_norm(self.to_latent(self.encoder(self.to_image(x)).flatten(1)))

    def decode(self, z: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction of the panel vector from z (and the batch one-hot, for a conditional decoder)."""
        if self.n_covariates:
            if covariates is None:
                raise ValueError("this decoder is conditional: pass the batch one-hot as covariates")
            z = torch.cat([z, covariates], dim=1)
        c3, s3 = self.channels[2], self.sizes[-1]
        image = self.decoder(self.from_latent(z).reshape(-1, c3, s3, s3))
        return image.flatten(1)[:, : self.n_genes]
