"""The SA-CC block: autocorrelation (FFT and exported matrix form), modes, and α on real data."""

import numpy as np
import pytest
import torch

from conftest import real_dataset
from sccsa_train.sacc import (
    SACC,
    autocorrelation_fft,
    autocorrelation_four_step,
    autocorrelation_matmul,
    dft_matrices,
    four_step_macs,
    four_step_matrices,
    four_step_shape,
)


def _direct(x: np.ndarray) -> np.ndarray:
    d = len(x)
    return np.array([np.dot(x[k:], x[: d - k]) for k in range(d)]) / d


@pytest.mark.parametrize("d", [1, 2, 7, 64, 1000, 1601])
def test_fft_autocorrelation_is_the_zero_padded_formula(d):
    x = np.random.default_rng(d).normal(size=(3, d))
    got = autocorrelation_fft(torch.from_numpy(x)).numpy()
    for row, expected in zip(got, map(_direct, x)):
        np.testing.assert_allclose(row, expected, atol=1e-10)


@pytest.mark.parametrize("d", [5, 100, 1000])
def test_dft_matrix_form_agrees_with_fft(d):
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(16, d)).astype(np.float32))
    matrices = [torch.from_numpy(m) for m in dft_matrices(d)]
    np.testing.assert_allclose(autocorrelation_matmul(x, *matrices).numpy(), autocorrelation_fft(x).numpy(),
                               atol=2e-4 * np.sqrt(d), rtol=1e-4)


@pytest.mark.parametrize("d", [2, 5, 100, 500, 1000, 2001])
def test_four_step_form_agrees_with_fft(d):
    n1, n2, rows, half = four_step_shape(d)
    assert n1 * n2 >= 2 * d - 1 and rows * n2 >= d and half == n1 // 2 + 1
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(16, d)).astype(np.float32))
    matrices = [torch.from_numpy(m) for m in four_step_matrices(d).values()]
    np.testing.assert_allclose(autocorrelation_four_step(x, *matrices).numpy(), autocorrelation_fft(x).numpy(),
                               atol=2e-4 * np.sqrt(d), rtol=1e-4)


def test_four_step_form_needs_an_eighth_of_the_dense_multiply_adds_at_1000_genes():
    d = 1000
    dense = 3 * d * d  # x @ cos, x @ sin, power @ inverse
    matrices = four_step_matrices(d)
    counted = (np.prod(matrices["rows"].shape)  # per cell: each product's matrix entries × the rows it meets
               + np.prod(matrices["columns"].shape) * matrices["rows"].shape[3]
               + np.prod(matrices["back"].shape) * matrices["rows"].shape[3]
               + np.prod(matrices["out"].shape))
    assert four_step_macs(d) == counted
    assert four_step_macs(d) < dense / 8


@pytest.mark.parametrize("form", ["four_step", "dense"])
def test_block_forward_is_the_same_in_every_form(form):
    torch.manual_seed(0)
    block = SACC(300, mode="sa").eval()
    x = torch.randn(8, 300)
    fft_out, fft_alpha = block(x)
    block.enable_export_form(form)
    mat_out, mat_alpha = block(x)
    np.testing.assert_allclose(mat_out.detach().numpy(), fft_out.detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(mat_alpha.detach().numpy(), fft_alpha.detach().numpy(), atol=1e-5)


def test_modes():
    x = torch.randn(4, 50)
    out, alpha = SACC(50, mode="off")(x)
    assert torch.equal(out, x) and torch.all(alpha == 1)
    out, alpha = SACC(50, mode="fixed", alpha=1.0)(x)
    torch.testing.assert_close(out, x)
    out, alpha = SACC(50, mode="fixed", alpha=0.0)(x)
    c = torch.nn.functional.layer_norm(autocorrelation_fft(x), (50,))
    torch.testing.assert_close(out, c)
    with pytest.raises(ValueError):
        SACC(50, mode="nope")


def test_alpha_varies_across_real_cells_after_training():
    """The trap: a saturated softmax gives α = 1 for every cell and the block does nothing.
    On PBMC-Zheng4k, trained end to end, α must differ between cells and stay inside (0, 1)."""
    from sccsa_train import SCCSA

    adata = real_dataset("pbmc_zheng4k_top2000")
    model = SCCSA(8, n_genes=400, pretrain_epochs=4, cluster_epochs=2, random_state=0, progress=False).fit(adata)
    alpha = model.alpha_
    assert alpha.std() > 0.01
    assert np.quantile(alpha, 0.95) - np.quantile(alpha, 0.05) > 0.05
    assert alpha.max() < 0.999 and alpha.min() > 0.001
