"""SimCLR NT-Xent: positive pairs are (i, i + B), the loss matches a hand computation and drops for paired
views."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from chammi_models.training.ssl import SimCLRLoss, nt_xent, positive_index


def test_positive_index_pairs_views_of_the_same_image() -> None:
    idx = positive_index(3)
    assert idx.tolist() == [3, 4, 5, 0, 1, 2]
    # an involution without fixed points: the positive of my positive is me
    assert torch.equal(idx[idx], torch.arange(6))


def _reference(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """Loop-by-loop InfoNCE: anchor k, positive = the other view of image k, negatives = all other rows."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n, b = z.shape[0], z1.shape[0]
    total = 0.0
    for k in range(n):
        pos = (k + b) % n
        sims = [(z[k] @ z[j]).item() / t for j in range(n) if j != k]
        total += -(z[k] @ z[pos]).item() / t + math.log(sum(math.exp(s) for s in sims))
    return total / n


def test_matches_reference_loop() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(_reference(z1, z2, 0.5), rel=1e-5)


def test_matched_views_beat_shuffled_views() -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(16, 32, generator=g)
    v1 = base + 0.05 * torch.randn(16, 32, generator=g)
    v2 = base + 0.05 * torch.randn(16, 32, generator=g)
    matched = nt_xent(v1, v2, 0.1).item()
    shuffled = nt_xent(v1, v2.roll(1, dims=0), 0.1).item()
    assert matched < 0.1 < shuffled
    # identical embeddings for every row carry no information: loss = log(2B - 1)
    same = torch.ones(4, 3)
    assert nt_xent(same, same, 0.07).item() == pytest.approx(math.log(7), rel=1e-5)


def test_module_with_projection_backpropagates() -> None:
    loss_fn = SimCLRLoss(12, temperature=0.2, projection=True, projection_dim=6)
    f1 = torch.randn(4, 12, requires_grad=True)
    loss = loss_fn(f1, torch.randn(4, 12))
    loss.backward()
    assert f1.grad is not None and f1.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3))


def test_two_views_are_different_deterministic_and_collate_aligned() -> None:
    from chammi_data.augment.transforms import train_transform
    from chammi_data.loading.collate import group_by_channels
    from chammi_models.training.ssl import TwoViews, second_views

    t = TwoViews(train_transform(16, scale=(0.3, 1.0), hflip=0.5))
    samples = []
    for i in range(3):
        img = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(i))
        s = {
            "image": img,
            "channels": ("nucleus", "membrane", "protein"),
            "source": "wtc11",
            "label": "M0",
            "cell_id": f"c{i}",
            "meta": {},
        }
        out = t(s, generator=torch.Generator().manual_seed(10 + i))
        again = t(s, generator=torch.Generator().manual_seed(10 + i))
        assert torch.equal(out["image"], again["image"]) and torch.equal(
            out["meta"]["view2"], again["meta"]["view2"]
        )
        assert not torch.equal(out["image"], out["meta"]["view2"])
        samples.append(out)
    (batch,) = group_by_channels(samples)
    v2 = second_views(batch)
    for i, s in enumerate(samples):  # row i of view 2 is the second view of sample i
        assert torch.equal(v2[i], s["meta"]["view2"]) and torch.equal(batch["image"][i], s["image"])
