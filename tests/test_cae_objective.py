"""The autoencoder's shapes for any panel size, and the objective's terms."""

import math

import pytest
import torch

from torch import nn

from sccsa_train.cae import ConvAutoencoder, PhaseConv2d, PhaseConvTranspose2d
from sccsa_train.fit import _plateaued, settled
from sccsa_train.objective import (
    class_means,
    classification_loss,
    clustering_loss,
    kl_loss,
    responsibilities,
    update_centroids,
    within_class_whitening,
)
from sccsa_train.options import default

PATIENCE = default("patience")


@pytest.mark.parametrize("d", [10, 100, 1000, 1600, 1601, 2003])
def test_cae_image_side_follows_the_gene_count(d):
    cae = ConvAutoencoder(d, latent_dim=7, channels=(2, 2, 2))
    assert cae.side == math.ceil(math.sqrt(d))
    x = torch.randn(3, d)
    z = cae.encode(x)
    assert z.shape == (3, 7)
    assert cae.decode(z).shape == (3, d)


@pytest.mark.parametrize("side", [2, 3, 5, 16, 23, 32])
@pytest.mark.parametrize("cin, cout", [(1, 4), (3, 2)])
def test_phase_layers_are_the_plain_layers(side, cin, cout):
    # Same parameters, same values and same gradients as Conv2d / ConvTranspose2d (odd sides included).
    torch.manual_seed(side)
    phase, plain = PhaseConv2d(cin, cout), nn.Conv2d(cin, cout, 5, stride=2, padding=2)
    plain.load_state_dict(phase.state_dict())
    half = (side + 1) // 2
    phase_t = PhaseConvTranspose2d(cout, cin, side)
    plain_t = nn.ConvTranspose2d(cout, cin, 5, stride=2, padding=2, output_padding=side - (2 * half - 1))
    plain_t.load_state_dict(phase_t.state_dict())
    for fast, slow, shape in ((phase, plain, (5, cin, side, side)), (phase_t, plain_t, (5, cout, half, half))):
        x = torch.randn(shape)
        a, b = fast(x), slow(x)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        (a.square().sum()).backward()
        (b.square().sum()).backward()
        torch.testing.assert_close(fast.weight.grad, slow.weight.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fast.bias.grad, slow.bias.grad, atol=1e-4, rtol=1e-4)


def test_the_autoencoder_uses_phase_layers_next_to_the_image():
    cae = ConvAutoencoder(100, latent_dim=3, channels=(2, 2, 2))
    assert isinstance(cae.encoder[0], PhaseConv2d) and isinstance(cae.decoder[-1], PhaseConvTranspose2d)
    assert sum(isinstance(m, (PhaseConv2d, PhaseConvTranspose2d)) for m in cae.modules()) == 2


def test_linear_decoder_can_exceed_one():
    cae = ConvAutoencoder(64, latent_dim=4, channels=(2, 2, 2))
    target = torch.full((8, 64), 5.0)
    optimizer = torch.optim.Adam(cae.parameters(), lr=0.05)
    for _ in range(150):
        loss = ((cae.decode(cae.encode(target)) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert cae.decode(cae.encode(target)).mean() > 3.0  # a tanh output could never pass 1


def test_responsibilities_and_kl():
    d2 = torch.tensor([[0.0, 4.0], [4.0, 0.0]])
    r = responsibilities(d2, 1.0)
    torch.testing.assert_close(r.sum(1), torch.ones(2))
    assert r[0, 0] > 0.98
    assert kl_loss(r, torch.log(r)).abs() < 1e-6  # P == R
    assert kl_loss(r, torch.zeros(2, 2)) > 0.5  # uniform P


def test_clustering_loss_formula():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    d2 = ((z[:, None] - mu[None]) ** 2).sum(-1)
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # distortion = mean(0, 4) = 2; mean z'z = (1 + 4) / 2 = 2.5
    torch.testing.assert_close(clustering_loss(d2, r, z, scale=0.5, latent_norm=0.1), torch.tensor(0.5 * (2 - 0.25)))


def test_centroid_update_is_the_weighted_mean_and_keeps_empty_centroids():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0]])
    mu = torch.tensor([[1.0, 0.0], [10.0, 10.0], [-100.0, -100.0]])
    new = update_centroids(z, mu, beta=50.0)
    torch.testing.assert_close(new[0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(new[1], torch.tensor([10.0, 10.0]))
    torch.testing.assert_close(new[2], mu[2])  # no weight: stays


def test_class_means_are_the_label_means_and_keep_an_empty_class():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0]])
    mu = torch.tensor([[5.0, 5.0], [5.0, 5.0], [-1.0, -1.0]])
    new = class_means(z, torch.tensor([0, 0, 1]), mu)
    torch.testing.assert_close(new, torch.tensor([[1.0, 0.0], [10.0, 10.0], [-1.0, -1.0]]))


def _anisotropic_classes(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes sharing a covariance that stretches one direction 30-fold and tilts it."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % 3
    rotation = torch.tensor([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    noise = torch.randn(n, 3, generator=generator, dtype=torch.float64) * torch.tensor([6.0, 0.2, 1.0],
                                                                                        dtype=torch.float64)
    means = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 0.0]], dtype=torch.float64)
    return (means[targets] + noise @ rotation.T).float(), targets


def test_within_class_whitening_makes_the_pooled_within_class_covariance_the_identity():
    z, targets = _anisotropic_classes()
    transform = within_class_whitening(z, targets, 3)
    torch.testing.assert_close(transform, transform.T)
    w = (z @ transform.T).double()
    centred = w - class_means(w, targets, torch.zeros(3, 3, dtype=torch.float64))[targets]
    pooled = centred.T @ centred / (len(w) - 3)
    torch.testing.assert_close(pooled, torch.eye(3, dtype=torch.float64), atol=1e-4, rtol=0)


def test_nearest_class_mean_after_whitening_is_lda_with_equal_priors():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    z, targets = _anisotropic_classes()
    query, _ = _anisotropic_classes(seed=1)
    transform = within_class_whitening(z, targets, 3)
    means = class_means(z, targets, torch.zeros(3, 3)) @ transform.T
    nearest = torch.cdist(query @ transform.T, means).argmin(dim=1).numpy()
    lda = LinearDiscriminantAnalysis(priors=[1 / 3] * 3).fit(z.numpy(), targets.numpy())
    assert (nearest == lda.predict(query.numpy())).mean() == 1.0
    euclidean = torch.cdist(query, class_means(z, targets, torch.zeros(3, 3))).argmin(dim=1).numpy()
    assert (euclidean == lda.predict(query.numpy())).mean() < 0.9  # the stretched direction misleads it


def test_within_class_whitening_summed_over_shares_equals_one_process():
    """Two ranks each holding half the cells, ``total`` summing their statistics (as torchrun's
    all-reduce does; here two threads), get the one-process map."""
    import threading

    z, targets = _anisotropic_classes()
    halves = [(z[:250], targets[:250]), (z[250:], targets[250:])]
    barrier, slots, maps = threading.Barrier(2), [None, None], [None, None]

    def run(rank: int) -> None:
        def total(value: torch.Tensor) -> torch.Tensor:
            slots[rank] = value
            barrier.wait()
            summed = slots[0] + slots[1]
            barrier.wait()
            return summed
        maps[rank] = within_class_whitening(*halves[rank], 3, total)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    whole = within_class_whitening(z, targets, 3)
    torch.testing.assert_close(maps[0], whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(maps[1], whole, atol=1e-5, rtol=1e-5)


def test_classification_loss_is_the_cross_entropy_of_the_soft_assignment():
    d2 = torch.tensor([[0.0, 1.0], [4.0, 0.0]])
    expected = -(torch.log_softmax(-2.0 * d2, dim=1)[[0, 1], [0, 0]]).mean()
    torch.testing.assert_close(classification_loss(d2, 2.0, torch.tensor([0, 0])), expected)


@pytest.mark.parametrize("losses, stalled", [
    ([1.0] * PATIENCE, False),  # too few epochs to judge
    ([1.0] + [0.9995] * PATIENCE, True),  # a gain of 0.0005 is less than tol
    ([1.0] + [0.99] * PATIENCE, False),
    ([0.5, 1.0] + [0.6] * (PATIENCE - 1), True),  # worse than the best before
])
def test_classification_plateau(losses, stalled):
    epochs = [{"cross_entropy": value} for value in losses]
    assert _plateaued(epochs, tol=0.001, patience=PATIENCE) is stalled
    assert not _plateaued(epochs, tol=0.001, patience=0)  # 0: off


@pytest.mark.parametrize("changes, stop", [
    ([0.05] * PATIENCE, False),  # too few epochs to judge
    ([0.05, 0.01] + [0.01] * PATIENCE, True),  # a tie is no new low
    ([0.05, 0.01] + [0.02] * (PATIENCE - 1) + [0.009], False),  # a new low in the last epoch
    ([0.05, 0.01] + [0.005] + [0.02] * (PATIENCE - 1), False),  # the low was reached within the window
    ([0.05, 0.01] + [0.005] + [0.02] * PATIENCE, True),
])
def test_clustering_stops_when_the_label_change_makes_no_new_low(changes, stop):
    assert settled(changes, PATIENCE) is stop
    assert not settled(changes, 0)  # 0: off
