"""Dense weight averaging: the mean of the weights after each step from the start step; state round-trips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from chammi_models.training.swad import WeightAverager


def test_average_equals_mean_of_snapshots() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    avg = WeightAverager(model, start_step=3)
    snapshots = []
    for step in range(1, 7):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        if avg.update(model, step):
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    assert avg.count == len(snapshots) == 4
    for name, value in avg.averaged_model().state_dict().items():
        expected = torch.stack([s[name] for s in snapshots]).mean(0)
        assert torch.allclose(value, expected, atol=1e-6), name
    # the average is a separate copy, not the live model
    assert not torch.equal(avg.averaged_model().weight, model.weight)


def test_not_active_before_start_and_state_roundtrip() -> None:
    model = nn.Linear(2, 2)
    avg = WeightAverager(model, start_step=10)
    assert not avg.update(model, 5) and not avg.active
    avg.update(model, 10)
    state = avg.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    other = WeightAverager(nn.Linear(2, 2), start_step=0)
    other.load_state_dict(state)
    assert other.count == 1 and other.start_step == 10
    assert torch.equal(other.averaged_model().weight, model.weight)
    with pytest.raises(ValueError):
        WeightAverager(model, start_step=-1)
