"""ProxyLoss: the distance form of the paper, trainable proxies, class restriction, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from chammi_models.zoo.losses import ProxyLoss
from tests.chammi_models import zoo_helpers


def distance_form(features, proxies, temperature, targets):
    """The paper's form: scaled unit vectors, logits = -squared distance."""
    s = math.sqrt(1.0 / temperature)
    f = s * F.normalize(features, dim=1)
    p = s * F.normalize(proxies, dim=1)
    return F.cross_entropy(-torch.cdist(f, p).square(), targets)


def test_matches_the_distance_form():
    torch.manual_seed(0)
    loss = ProxyLoss(5, 16, temperature=0.1)
    feats, targets = torch.randn(8, 16), torch.randint(0, 5, (8,))
    torch.testing.assert_close(loss(feats, targets), distance_form(feats, loss.proxies, 0.1, targets))


def test_proxies_are_trained_with_the_model():
    torch.manual_seed(0)
    model = zoo_helpers.small_model("slice_param", num_classes=3)
    names = {n for n, _ in model.named_parameters()}
    assert "proxy_loss.proxies" in names and "proxy_loss.log_inv_temperature" in names  # learnable T


def test_a_few_steps_separate_two_clusters():
    torch.manual_seed(0)
    loss = ProxyLoss(2, 4, temperature=0.5)
    feats = torch.cat(
        [torch.randn(16, 4) + torch.tensor([3.0, 0, 0, 0]), torch.randn(16, 4) - torch.tensor([3.0, 0, 0, 0])]
    )
    targets = torch.tensor([0] * 16 + [1] * 16)
    opt = torch.optim.SGD(loss.parameters(), lr=0.5)
    first = loss(feats, targets).item()
    for _ in range(30):
        opt.zero_grad()
        value = loss(feats, targets)
        value.backward()
        opt.step()
    assert value.item() < first
    assert (loss.predict(feats) == targets).float().mean() > 0.9


def test_class_restriction_softmaxes_over_the_subset():
    torch.manual_seed(0)
    loss = ProxyLoss(6, 8, temperature=0.2)
    feats, targets = torch.randn(4, 8), torch.tensor([3, 5, 4, 3])
    restricted = loss(feats, targets, classes=[3, 4, 5])
    expected = F.cross_entropy(loss.logits(feats)[:, 3:], targets - 3)
    torch.testing.assert_close(restricted, expected)
    assert not torch.allclose(restricted, loss(feats, targets))
    with pytest.raises(ValueError, match=r"targets \[3\] are not among"):
        loss(feats, targets, classes=[4, 5])


def test_errors():
    with pytest.raises(ValueError, match="num_classes >= 1"):
        ProxyLoss(0, 4)
    with pytest.raises(ValueError, match="temperature"):
        ProxyLoss(2, 4, temperature=0)
    loss = ProxyLoss(2, 4)
    with pytest.raises(ValueError, match=r"features must be \(B, 4\)"):
        loss(torch.randn(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\)"):
        loss(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    model = zoo_helpers.small_model("hypernet", num_classes=0)
    with pytest.raises(RuntimeError, match="no proxies"):
        model.loss(torch.randn(2, 320), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="takes no proxies"):
        zoo_helpers.small_model("channel_replication", num_classes=4)
