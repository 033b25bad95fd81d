"""Batched selection against the literal per-sample reference in literal_selection.py.

Random backbones with calibration statistics from random data and random labels give
rewards of both signs, so candidates are accepted and rejected. Each test asserts that both
happen, so that it cannot pass on decisions that never vary.
"""

from __future__ import annotations

import pytest
import torch
from literal_selection import reference_select
from selection_helpers import (
    every_observed_set,
    image_card,
    mixed_card,
    random_inputs,
    random_stats,
    small_backbone,
)

from dymo_ray.selection import SelectionConfig, select

REWARD_TOLERANCE = 1e-5

# (metric, calibration form): both metrics with both forms, 5 seeds each, 20 in all.
SETTINGS = [
    ("cosine", "log-ratio"),
    ("cosine", "ratio"),
    ("euclidean", "ratio"),
    ("euclidean", "log-ratio"),
]


def _compare(model, stats, inputs, present, config: SelectionConfig) -> tuple[int, int]:
    """Assert equal decisions and close rewards; return (accepted, rejected) counts."""
    result = select(model, stats, inputs, present, config)
    expected = reference_select(
        model, stats, inputs, present, config.tau, config.calibration_form(stats.metric)
    )
    for row, outcome in enumerate(expected):
        assert result.selected[row].tolist() == outcome.selected, f"selected differs, row {row}"
        assert result.rejected[row].tolist() == outcome.rejected, f"rejected differs, row {row}"
        assert int(result.predictions[row]) == outcome.prediction, f"prediction differs, row {row}"
        probabilities = torch.from_numpy(outcome.probabilities).float()
        assert torch.allclose(result.probabilities[row], probabilities, atol=REWARD_TOLERANCE)

        steps = result.traces[row]
        assert len(steps) == len(outcome.steps), f"number of steps differs, row {row}"
        for step, reference_step in zip(steps, outcome.steps):
            assert step.candidates == reference_step.candidates, f"candidates differ, row {row}"
            assert step.accepted == reference_step.accepted, f"accepted differs, row {row}"
            assert step.rejected == reference_step.rejected, f"rejected differs, row {row}"
            for modality, reward in zip(step.candidates, step.rewards):
                assert reward == pytest.approx(
                    reference_step.rewards[modality], abs=REWARD_TOLERANCE
                ), f"reward of modality {modality} differs, row {row} step {step.step}"
    return int(result.recovered_used.sum()), int(result.rejected.sum())


@pytest.mark.parametrize("metric, form", SETTINGS)
def test_every_missing_pattern_matches_reference(metric, form):
    card = image_card(num_modalities=5, num_classes=4)
    accepted = rejected = 0
    for seed in range(5):
        model = small_backbone(card, metric, seed=100 * seed + 7)
        generator = torch.Generator().manual_seed(seed)
        stats = random_stats(model, 64, generator)
        present = every_observed_set(5, rows_per_set=3)  # all 31 observed sets, 3 rows each
        inputs = random_inputs(card, len(present), generator)
        counts = _compare(model, stats, inputs, present, SelectionConfig(calibration=form))
        accepted += counts[0]
        rejected += counts[1]
    assert accepted > 0, "no candidate was accepted: the comparison is vacuous"
    assert rejected > 0, "no candidate was rejected: the comparison is vacuous"


@pytest.mark.parametrize("metric, form", SETTINGS)
def test_mixed_kinds_match_reference(metric, form):
    card = mixed_card(num_classes=3)
    accepted = rejected = 0
    for seed in range(3):
        model = small_backbone(card, metric, seed=100 * seed + 9)
        generator = torch.Generator().manual_seed(seed + 50)
        stats = random_stats(model, 48, generator)
        present = every_observed_set(3, rows_per_set=6)
        inputs = random_inputs(card, len(present), generator)
        counts = _compare(model, stats, inputs, present, SelectionConfig(calibration=form))
        accepted += counts[0]
        rejected += counts[1]
    assert accepted > 0, "no candidate was accepted: the comparison is vacuous"
    assert rejected > 0, "no candidate was rejected: the comparison is vacuous"


def test_temperature_and_step_limit_match_reference():
    card = image_card(num_modalities=5, num_classes=4)
    model = small_backbone(card, "cosine", seed=3)
    generator = torch.Generator().manual_seed(3)
    stats = random_stats(model, 64, generator)
    present = every_observed_set(5, rows_per_set=1)
    inputs = random_inputs(card, len(present), generator)
    config = SelectionConfig(tau=0.5, calibration="ratio", max_steps=1)

    result = select(model, stats, inputs, present, config)
    expected = reference_select(model, stats, inputs, present, 0.5, "ratio", max_steps=1)
    for row, outcome in enumerate(expected):
        assert result.selected[row].tolist() == outcome.selected, f"selected differs, row {row}"
        assert result.rejected[row].tolist() == outcome.rejected, f"rejected differs, row {row}"
    assert int((result.selected.sum(dim=1) - present.sum(dim=1)).max()) <= 1
