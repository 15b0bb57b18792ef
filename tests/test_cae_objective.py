"""The autoencoder's shapes for any panel size, and the objective's terms."""

import math

import pytest
import torch

from sccsa_train.cae import ConvAutoencoder
from sccsa_train.objective import clustering_loss, kl_loss, responsibilities, update_centroids


@pytest.mark.parametrize("d", [10, 100, 1000, 1600, 1601, 2003])
def test_cae_image_side_follows_the_gene_count(d):
    cae = ConvAutoencoder(d, latent_dim=7, channels=(2, 2, 2))
    assert cae.side == math.ceil(math.sqrt(d))
    x = torch.randn(3, d)
    z = cae.encode(x)
    assert z.shape == (3, 7)
    assert cae.decode(z).shape == (3, d)


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
