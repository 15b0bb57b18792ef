"""The dual-channel self-attention coefficient-compression (SA-CC) block (paper Eq. 13-18).

For a cell's standardised panel vector x (length d), the block computes the zero-padded
(linear) autocorrelation c_k = (1/d) Σ_n x_{n+k} x_n for lags k = 0..d-1, brings it onto the
scale of x with a LayerNorm (no affine), and mixes the two channels with per-cell weights

    s_m = τ · cos(W_q x, W_m K_m),   (α, β) = softmax(s_1, s_2),   x' = α x + β c̃

with K_1 = V_1 = x, K_2 = V_2 = c̃ and learnable projections W (d → h) and temperature τ.
The scaled dot product ⟨W_q x, W_m K_m⟩/√h of the paper saturated to α ∈ {0, 1} on
PBMC-Zheng4k in our measurements and then never moved (zero gradient); the cosine form with a
learned temperature keeps the scores bounded (|s| ≤ τ), so α varies per cell and is trained.

Training computes the autocorrelation with ``torch.fft``. ONNX Runtime's ``DFT`` operator is
slower than plain matrix products, so the exported graph computes the same numbers with MatMuls:
by default a four-step (Cooley–Tukey) factorisation of a length N = N1·N2 ≥ 2d − 1 transform
that computes only the bins a real signal does not mirror (:func:`autocorrelation_four_step`,
fewer than an eighth of the multiply-adds of the dense form at d = 1000), or, for comparison
(``form="dense"``), three dense d × d DFT matrices (:func:`autocorrelation_matmul`).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import scipy.fft
import torch
from torch import nn
from torch.nn import functional as F

from .options import CC_MODES, default

CCMode = Literal["sa", "fixed", "off"]
EXPORT_FORMS: tuple[str, ...] = ("four_step", "dense")


def autocorrelation_fft(x: torch.Tensor) -> torch.Tensor:
    """c_k = (1/d) Σ_n x_{n+k} x_n, k = 0..d-1, zero-padded (linear), via a real FFT.

    Any transform length n ≥ 2d − 1 gives the linear autocorrelation; n is the next length with
    small prime factors, since 2d − 1 can be prime (1999 for the 1000-gene default), where the FFT
    is several times slower (13 against 2.5 ms for 256 cells, one thread)."""
    d = x.shape[-1]
    n = scipy.fft.next_fast_len(2 * d - 1, real=True)
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
    """The autocorrelation as three matrix products with :func:`dft_matrices` (the dense export form)."""
    return ((x @ cos).square() + (x @ sin).square()) @ inverse


def four_step_shape(d: int) -> tuple[int, int, int, int]:
    """(N1, N2, R, H) of the four-step transform for length-``d`` signals: N = N1·N2 ≥ 2d − 1 with
    N2 ≈ √(N/2) (any factors work, since every step is a matrix product; this split measured
    fastest in ONNX Runtime at d = 1000), the R = ⌈d / N2⌉ rows of the N1 × N2 arrangement that
    hold the signal (the rest is zero padding), and the H = ⌊N1/2⌋ + 1 first-step bins computed
    (the others are complex conjugates of these, since the signal is real)."""
    n = 2 * d - 1
    n2 = max(1, round(math.sqrt(n / 2)))
    n1 = -(-n // n2)
    return n1, n2, -(-d // n2), n1 // 2 + 1


def four_step_macs(d: int) -> int:
    """Multiply-adds per cell of :func:`autocorrelation_four_step` (its four matrix products)."""
    n1, n2, r, h = four_step_shape(d)
    return 2 * n2 * r * h + (2 * n2) ** 2 * h + 2 * n2 * n2 * h + 2 * n2 * h * r


def four_step_matrices(d: int) -> dict[str, np.ndarray]:
    """Constants of :func:`autocorrelation_four_step` (float32), for N = N1·N2, ω_M = e^{−2πi/M},
    signal index n = N2·n1 + n2 and bin k = k1 + N1·k2 with k1 < H only:

    ``rows`` [2, N2, R, H]: ω_N1^{n1·k1}·ω_N^{n2·k1} (real; imaginary), the first transform over
    n1 with its twiddle folded in, one matrix per n2; ``columns`` [2·N2, 2·N2]: the transform over
    n2 acting on stacked (real; imaginary) rows; ``back`` [2·N2, N2]: the inverse transform over k2
    of the (real) power spectrum, (real; imaginary); ``out`` [2, N2, H, R]: the inverse transform
    over k1 with its twiddle, real part only, one matrix per output column m2, scaled by 1/(N·d)
    and by 2 for the bins that stand for their conjugate too (all but k1 = 0 and k1 = N1/2)."""
    n1, n2, r, h = four_step_shape(d)
    n = n1 * n2
    tau = 2.0 * np.pi
    k1 = np.arange(h)
    col = np.arange(n2)[:, None, None]
    angle = (tau * ((np.arange(r)[None, :, None] * k1[None, None, :]) % n1) / n1
             + tau * ((col * k1[None, None, :]) % n) / n)                                   # [n2, n1 < R, k1]
    rows = np.stack([np.cos(angle), -np.sin(angle)])
    inner = tau * ((np.arange(n2)[:, None] * np.arange(n2)[None, :]) % n2) / n2
    cos, sin = np.cos(inner), np.sin(inner)
    columns = np.block([[cos, sin], [-sin, cos]])
    back = np.concatenate([cos, sin], axis=0)
    weight = np.full(h, 2.0)
    weight[0] = 1.0
    if n1 % 2 == 0:
        weight[-1] = 1.0
    angle = (tau * ((k1[None, :, None] * np.arange(r)[None, None, :]) % n1) / n1
             + tau * ((col * k1[None, :, None]) % n) / n)                                   # [m2, k1, m1 < R]
    out = np.stack([np.cos(angle), -np.sin(angle)]) * (weight[:, None] / (n * d))
    return {name: m.astype(np.float32) for name, m in
            (("rows", rows), ("columns", columns), ("back", back), ("out", out))}


def autocorrelation_four_step(x: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, back: torch.Tensor,
                              out: torch.Tensor) -> torch.Tensor:
    """The autocorrelation through a length-N DFT split as N = N1·N2 (index n = N2·n1 + n2, bin
    k = k1 + N1·k2): a batched MatMul over n1 (twiddles folded in) for the first half of the k1
    bins only, one over n2, the power spectrum, and the same two steps back (real part only,
    the missing bins counted through their conjugates). Real and imaginary parts stay stacked on
    the leading axis, so no step transposes the spectrum. Matrices from :func:`four_step_matrices`."""
    batch, d = x.shape
    _, n2, r, h = rows.shape
    signal = F.pad(x, (0, r * n2 - d)).reshape(batch, r, n2).permute(2, 0, 1)              # [n2, cells, n1]
    spectrum = columns @ (signal @ rows).reshape(2 * n2, batch * h)                         # (re; im) rows k2
    squared = spectrum * spectrum
    power = squared[:n2] + squared[n2:]                                                     # [k2, cells · k1]
    parts = (back @ power).reshape(2, n2, batch, h) @ out                                   # (re; im) [m2, cells, m1]
    return (parts[0] + parts[1]).permute(1, 2, 0).reshape(batch, r * n2)[:, :d]


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
        self.export_form: str | None = None

    def enable_export_form(self, form: str = "four_step") -> None:
        """Switch the autocorrelation to a matrix-product form for the exported graph:
        ``four_step`` (the default) or ``dense`` (three d × d DFT matrices)."""
        if form not in EXPORT_FORMS:
            raise ValueError(f"export form must be one of {EXPORT_FORMS}, not {form!r}")
        matrices = (four_step_matrices(self.n_genes) if form == "four_step"
                    else dict(zip(("cos", "sin", "inverse"), dft_matrices(self.n_genes))))
        self.export_matrices = list(matrices)
        for name, matrix in matrices.items():
            self.register_buffer(f"dft_{name}", torch.from_numpy(matrix), persistent=False)
        self.export_form = form

    def autocorrelation(self, x: torch.Tensor) -> torch.Tensor:
        if self.export_form is None:
            return autocorrelation_fft(x)
        matrices = [getattr(self, f"dft_{name}") for name in self.export_matrices]
        if self.export_form == "four_step":
            return autocorrelation_four_step(x, *matrices)
        return autocorrelation_matmul(x, *matrices)

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
