"""Training primitives and the PNG grid of recovered samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from recovery_helpers import TINY, mixed_card, random_batch

from dymo_ray.recovery import build_recovery, recovered_sample_grid, train_recovery_epoch, write_png


def test_epoch_lowers_loss_on_fixed_batch():
    card = mixed_card()
    recovery = build_recovery("mopoe", card, **TINY["mopoe"])
    optimizer = torch.optim.Adam(recovery.model.parameters(), lr=1e-3)
    batch = random_batch(card, 16, seed=0)
    first = train_recovery_epoch(recovery, [batch], optimizer)["loss"]
    for _ in range(15):
        last = train_recovery_epoch(recovery, [batch], optimizer)["loss"]
    assert last < first


def test_epoch_averages_terms_over_samples():
    card = mixed_card()
    recovery = build_recovery("mopoe", card, **TINY["mopoe"])
    batches = [random_batch(card, 6, seed=0), random_batch(card, 2, seed=1)]
    losses = [recovery.loss(batch)[1]["loss"] for batch in batches]
    optimizer = torch.optim.SGD(recovery.model.parameters(), lr=0.0)
    terms = train_recovery_epoch(recovery, batches, optimizer)
    # lr 0 leaves the weights fixed, but sampling differs, so compare loosely.
    assert terms["loss"] == pytest.approx((6 * losses[0] + 2 * losses[1]) / 8, rel=0.05)


def test_extra_batch_keys_ignored():
    card = mixed_card()
    recovery = build_recovery("mopoe", card, **TINY["mopoe"])
    batch = {**random_batch(card, 4, seed=0), "label": torch.zeros(4, dtype=torch.int64)}
    optimizer = torch.optim.Adam(recovery.model.parameters(), lr=1e-3)
    assert "loss" in train_recovery_epoch(recovery, [batch], optimizer)


def test_nan_loss_raises_with_batch_index(monkeypatch):
    card = mixed_card()
    recovery = build_recovery("mopoe", card, **TINY["mopoe"])
    optimizer = torch.optim.Adam(recovery.model.parameters(), lr=1e-3)
    original = recovery.loss
    calls = []

    def loss_with_nan(inputs, model=None):
        loss, terms = original(inputs, model)
        calls.append(1)
        if len(calls) == 2:
            return loss * float("nan"), {**terms, "loss": float("nan")}
        return loss, terms

    monkeypatch.setattr(recovery, "loss", loss_with_nan)
    batches = [random_batch(card, 4, seed) for seed in range(3)]
    with pytest.raises(FloatingPointError, match="at batch 1"):
        train_recovery_epoch(recovery, batches, optimizer)


def test_baseline_not_trainable():
    recovery = build_recovery("zeros", mixed_card())
    with pytest.raises(TypeError, match="no parameters to train"):
        train_recovery_epoch(recovery, [], torch.optim.SGD([torch.zeros(1)], lr=0.1))


def test_grid_shape_and_frames(tmp_path):
    card = mixed_card()
    recovery = build_recovery("noise", card)
    present = torch.tensor([[True, False, False], [False, True, True]])
    grid = recovered_sample_grid(recovery, random_batch(card, 2, seed=0), present)

    # Columns: 28 + 28 + (7 * 8 + 4) px cells, each with a 2 px frame on both sides.
    # Rows: a 14 px header, then 2 rows of 28 px cells with 2 px frames.
    assert grid.dtype == np.uint8
    assert grid.shape == (14 + 2 * 32, 32 + 32 + 64, 3)
    assert tuple(grid[14, 0]) == (60, 160, 60)  # observed: green frame
    assert tuple(grid[14, 32]) == (210, 40, 40)  # recovered: red frame

    path = write_png(grid, tmp_path / "grid.png")
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), grid)
