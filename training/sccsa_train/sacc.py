"""The dual-channel self-attention coefficient-compression (SA-CC) block (paper Eq. 13-18).

For a cell's standardised panel vector x (length d), the block computes the zero-padded
(linear) autocorrelation c_k = (1/d) Σ_n x_{n+k} x_n for lags k = 0..d-1, brings it onto the
scale of x with a LayerNorm (no affine), and mixes the two channels with per-cell weights

    s_m = τ · cos(W_q x, W_m K_m),   (α, β) = softmax(s_1, s_2),   x' = α x + β c̃

with K_1 = V_1 = x, K_2 = V_2 = c̃ and learnable projections W (d → h) and temperature τ.
The scaled dot product ⟨W_q x, W_m K_m⟩/√h of the paper saturated to α ∈ {0, 1} on
PBMC-Zheng4k in our measurements and then never moved (zero gradient); the cosine form with a
learned temperature keeps the scores bounded (|s| ≤ τ), so α varies per cell and is trained.

Training computes the autocorrelation with ``torch.fft``; the exported graph uses
:func:`dft_matrices` instead (three MatMuls, exact, fast in ONNX Runtime at any length).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .options import CC_MODES, default

CCMode = Literal["sa", "fixed", "off"]


def autocorrelation_fft(x: torch.Tensor) -> torch.Tensor:
    """c_k = (1/d) Σ_n x_{n+k} x_n, k = 0..d-1, zero-padded (linear), via a real FFT."""
    d = x.shape[-1]
    n = 2 * d - 1
    spectrum = torch.fft.rfft(x, n=n)
    power = spectrum.real.square() + spectrum.imag.square()
    return torch.fft.irfft(power, n=n)[..., :d] / d


def dft_matrices(d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Constant matrices (cos [d, F], sin [d, F], inverse [F, d]) with F = d bins of a length
    2d-1 real DFT, such that ``((x@cos)**2 + (x@sin)**2) @ inverse`` is the autocorrelation."""
    n = 2 * d - 1
    bins = n // 2 + 1  # == d, and n is odd so there is no Nyquist bin
    t = np.arange(d, dtype=np.float64)[:, None]
    f = np.arange(bins, dtype=np.float64)[None, :]
    angle = 2.0 * np.pi * ((t * f) % n) / n
    cos, sin = np.cos(angle), np.sin(angle)
    weight = np.full(bins, 2.0)
    weight[0] = 1.0
    inverse = (weight[:, None] * np.cos(angle.T)) / (n * d)  # [F, d]; includes the 1/d of c_k
    return cos.astype(np.float32), sin.astype(np.float32), inverse.astype(np.float32)


def autocorrelation_matmul(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """The autocorrelation as three matrix products with :func:`dft_matrices` (export form)."""
    return ((x @ cos).square() + (x @ sin).square()) @ inverse


class SACC(nn.Module):
    """SA-CC block: returns the mixed vector x' and the per-cell weight α of the expression channel.

    ``mode='sa'`` learns α per cell; ``'fixed'`` uses the constant ``alpha`` (the paper's fixed-CC
    ablation); ``'off'`` passes x through (α = 1).
    """

    def __init__(self, n_genes: int, mode: str = default("cc"), alpha: float = default("alpha"),
                 attention_dim: int = default("attention_dim")):
        super().__init__()
        if mode not in CC_MODES:
            raise ValueError(f"cc mode must be one of {CC_MODES}, not {mode!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError("fixed alpha must lie in [0, 1]")
        self.n_genes = n_genes
        self.mode = mode
        self.alpha = float(alpha)
        self.attention_dim = attention_dim
        self.norm = nn.LayerNorm(n_genes, elementwise_affine=False)
        if mode == "sa":
            self.query = nn.Linear(n_genes, attention_dim, bias=False)
            self.key_expression = nn.Linear(n_genes, attention_dim, bias=False)
            self.key_correlation = nn.Linear(n_genes, attention_dim, bias=False)
            self.log_temperature = nn.Parameter(torch.tensor(math.log(math.sqrt(attention_dim) / 4)))
        self.use_dft_matrices = False

    def enable_dft_matrices(self) -> None:
        """Switch the autocorrelation to the constant-matrix form used in the exported graph."""
        cos, sin, inverse = (torch.from_numpy(m) for m in dft_matrices(self.n_genes))
        self.register_buffer("dft_cos", cos, persistent=False)
        self.register_buffer("dft_sin", sin, persistent=False)
        self.register_buffer("dft_inverse", inverse, persistent=False)
        self.use_dft_matrices = True

    def autocorrelation(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_dft_matrices:
            return autocorrelation_matmul(x, self.dft_cos, self.dft_sin, self.dft_inverse)
        return autocorrelation_fft(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "off":
            return x, torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
        c = self.norm(self.autocorrelation(x))
        if self.mode == "fixed":
            alpha = torch.full((x.shape[0], 1), self.alpha, device=x.device, dtype=x.dtype)
        else:
            q = F.normalize(self.query(x), dim=1)
            s1 = (q * F.normalize(self.key_expression(x), dim=1)).sum(dim=1)
            s2 = (q * F.normalize(self.key_correlation(c), dim=1)).sum(dim=1)
            scores = torch.stack([s1, s2], dim=1) * self.log_temperature.exp()
            alpha = torch.softmax(scores, dim=1)[:, :1]
        return alpha * x + (1.0 - alpha) * c, alpha.squeeze(1)
