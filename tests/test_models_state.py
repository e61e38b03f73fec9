"""models.state: strict loading and the frozen() context used by the attacks and probes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.errors import CheckpointError
from selfsup.models.state import frozen, load_state_strict


def test_frozen_restores_mode_and_each_parameters_own_flag():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    m[2].weight.requires_grad_(False)  # frozen before: must stay frozen after
    m.train()
    with frozen(m) as inner:
        assert inner is m and not m.training
        assert not any(p.requires_grad for p in m.parameters())
    assert m.training
    assert [p.requires_grad for p in m.parameters()] == [True, True, True, True, False, True]
    with pytest.raises(RuntimeError), frozen(m):
        raise RuntimeError("an attack failed midway")
    assert m.training and m[0].weight.requires_grad and not m[2].weight.requires_grad


def test_load_state_strict_names_the_file_and_refuses_non_tensors():
    m = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="ck.pt: its linear weights are not a mapping of tensors"):
        load_state_strict(m, {"weight": "x"}, "linear", "ck.pt")  # type: ignore[dict-item]
    with pytest.raises(CheckpointError, match="shape of weight"):
        load_state_strict(m, {"weight": torch.zeros(3, 2), "bias": torch.zeros(2)}, "linear", "ck.pt")
