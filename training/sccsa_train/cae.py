"""The convolutional autoencoder (CAE): a cell's panel vector as a 1 × s × s image.

s = ⌈√d⌉ for any panel size d (zero-padded, row-major). The encoder is three stride-2
convolutions (kernels 5/5/3) and a linear layer to the latent z; the latent is batch-normalised
without affine parameters, which fixes its scale so the soft k-means term cannot shrink it to a
point (or blow it up, with the −λ‖z‖² term). The decoder mirrors the encoder with transposed
convolutions and ends in a *linear* output, so it can reconstruct standardised values beyond ±1.
With ``n_covariates`` > 0 the decoder also receives each cell's batch one-hot next to z (a
conditional decoder, as in scVI), so the encoder need not spend latent space on the batch; the
exported graph holds only the encoder, so serving never needs the batch.

The layers next to the one-channel image (the first convolution, the last transposed one) compute
the same function in phase form: a stride-2 convolution of a 5 × 5 kernel over one channel is a
stride-1 3 × 3 convolution over the image's four 2 × 2 phases (``pixel_unshuffle``), and its
transpose one that writes four phases (``pixel_shuffle``). The parameters and the state dict are
those of the plain layers. Why: PyTorch's CPU kernels for one channel are slow (in a development
run at 256 cells, one thread, both layers took 2.3× the CPU time of their phase form, forward and
backward; a whole stage-1 step of the default 1000-gene model 12 % more). The 16- and 32-channel
layers stay plain: there the phase form, with its zero taps, was slower. The ONNX export keeps
the plain layers, which ONNX Runtime runs faster (6.7 against 15.3 µs per cell for the first).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .options import LATENT_DIM, default

KERNELS = (5, 5, 3)


def _half(size: int) -> int:
    return (size + 1) // 2


def _phase_taps(transposed: bool) -> torch.Tensor:
    """For each phase (a, b) (channel 2a + b of ``pixel_(un)shuffle``) and each tap (r1, r2) of the
    3 × 3 phase kernel, the position in the flattened 5 × 5 kernel, or 25 where no tap falls.
    Stride 2, padding 2: input row 2(o + q) + a meets kernel row 2q + a + 2 (convolution, q = r − 1);
    output row 2p + a receives kernel row 4 − 2r + a from hidden row p + r − 1 (transposed)."""
    taps = torch.full((4, 3, 3), 25, dtype=torch.long)
    for a in range(2):
        for b in range(2):
            for r1 in range(3):
                for r2 in range(3):
                    u, v = ((4 - 2 * r1 + a, 4 - 2 * r2 + b) if transposed
                            else (2 * (r1 - 1) + a + 2, 2 * (r2 - 1) + b + 2))
                    if u < 5 and v < 5:
                        taps[2 * a + b, r1, r2] = 5 * u + v
    return taps


def _phase_kernel(weight: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """[out, in, 5, 5] kernels gathered into [out, in · 4, 3, 3] phase kernels (phase fastest)."""
    out, cin = weight.shape[:2]
    flat = F.pad(weight.reshape(out, cin, 25), (0, 1))
    return flat[:, :, taps].reshape(out, cin * 4, 3, 3)


class PhaseConv2d(nn.Conv2d):
    """``Conv2d(in, out, 5, stride=2, padding=2)`` computed on the image's 2 × 2 phases."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 5, stride=2, padding=2)
        self.register_buffer("taps", _phase_taps(transposed=False), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # ONNX Runtime runs the plain layer faster (see above)
            return super().forward(image)
        side = image.shape[-1]
        phases = F.pixel_unshuffle(F.pad(image, (0, side % 2, 0, side % 2)), 2)
        return F.conv2d(phases, _phase_kernel(self.weight, self.taps), self.bias, padding=1)


class PhaseConvTranspose2d(nn.ConvTranspose2d):
    """``ConvTranspose2d(in, out, 5, stride=2, padding=2)`` to a ``target`` × ``target`` image,
    computed as a convolution that writes the output's 2 × 2 phases."""

    def __init__(self, in_channels: int, out_channels: int, target: int):
        super().__init__(in_channels, out_channels, 5, stride=2, padding=2,
                         output_padding=target - (2 * _half(target) - 1))
        self.target = target
        self.register_buffer("taps", _phase_taps(transposed=True), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if torch.onnx.is_in_onnx_export():
            return super().forward(hidden)
        cin, out = self.weight.shape[:2]
        kernel = _phase_kernel(self.weight.transpose(0, 1), self.taps)  # [out, in · 4, 3, 3], phase fastest
        kernel = kernel.reshape(out, cin, 4, 3, 3).transpose(1, 2).reshape(out * 4, cin, 3, 3)
        image = F.pixel_shuffle(F.conv2d(hidden, kernel, padding=1), 2) + self.bias.view(1, -1, 1, 1)
        return image[..., : self.target, : self.target]


class ConvAutoencoder(nn.Module):
    """Encoder/decoder pair; ``encode`` gives z, ``decode`` gives the reconstructed vector."""

    def __init__(self, n_genes: int, latent_dim: int = LATENT_DIM,
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
            conv = PhaseConv2d(cin, cout) if cin == 1 else nn.Conv2d(cin, cout, k, stride=2, padding=k // 2)
            encoder += block(conv, cout)
        self.encoder = nn.Sequential(*encoder)
        flat = c3 * sizes[-1] ** 2
        self.to_latent = nn.Linear(flat, latent_dim)
        self.latent_norm = nn.BatchNorm1d(latent_dim, affine=False)
        self.from_latent = nn.Linear(latent_dim + n_covariates, flat)
        decoder: list[nn.Module] = [nn.LeakyReLU(0.2)]
        for i, (cin, cout, k) in enumerate(zip(reversed(outs), reversed(ins), reversed(KERNELS))):
            target, source = sizes[-2 - i], sizes[-1 - i]
            if cout == 1:
                decoder.append(PhaseConvTranspose2d(cin, cout, target))
            else:
                conv = nn.ConvTranspose2d(cin, cout, k, stride=2, padding=k // 2,
                                          output_padding=target - (2 * source - 1))
                decoder += block(conv, cout)
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
