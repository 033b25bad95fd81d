"""Fixtures of the recovery tests."""

from __future__ import annotations

import pytest
import torch
from recovery_helpers import TINY, mixed_card, random_batch

from dymo_ray.data.spec import DatasetCard


@pytest.fixture
def card() -> DatasetCard:
    return mixed_card()


@pytest.fixture(scope="module")
def trained_mopoe():
    """A tiny MoPoE on the mixed card after a few training steps (shared per module)."""
    from dymo_ray.recovery import build_recovery, train_recovery_epoch

    card = mixed_card()
    recovery = build_recovery("mopoe", card, **TINY["mopoe"])
    optimizer = torch.optim.Adam(recovery.model.parameters(), lr=1e-3)
    batches = [random_batch(card, 16, seed) for seed in range(3)]
    train_recovery_epoch(recovery, batches, optimizer)
    return recovery
