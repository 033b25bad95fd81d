"""Calibration statistics: a hand-computed example, a direct recomputation, checks and storage."""

from __future__ import annotations

import math

import pytest
import torch
from selection_helpers import (
    TableBackbone,
    image_card,
    random_inputs,
    row_id_inputs,
    scalar_card,
    small_backbone,
)
from torch import nn

from dymo_ray.selection.calibration import (
    CalibrationStats,
    backbone_fingerprint,
    compute_calibration_stats,
)
from dymo_ray.subsets import all_subsets

LABELS = torch.tensor([0, 0, 0, 1, 1, 1])


def _table_model(
    embeddings_by_subset: list[list[tuple[float, float]]], metric: str
) -> TableBackbone:
    # 2 modalities, so 3 subsets in all_subsets order: {m0}, {m1}, {m0, m1}.
    embeddings = torch.tensor(embeddings_by_subset, dtype=torch.float32).transpose(0, 1)
    logits = torch.zeros(embeddings.shape[0], 3, 2)
    return TableBackbone(scalar_card(2, 2), logits, embeddings, metric)


def _batches(model: TableBackbone, order: list[list[int]]):
    inputs = row_id_inputs(model.card, len(LABELS))
    for rows in order:
        index = torch.tensor(rows)
        yield {k: v[index] for k, v in inputs.items()}, LABELS[index]


def test_euclidean_stats_hand_computed():
    # Subset {m0}: class 0 at (0,0), (2,0), (4,0): P = (2, 0), d = 2, 0, 2, sigma = sqrt(8/3).
    #              class 1 at (0,1), (0,1), (0,4): P = (0, 2), d = 1, 1, 2, sigma = sqrt(2).
    # Subset {m1} doubles every embedding: P and sigma double.
    # Subset {m0, m1} shifts every embedding by (1, 1): P shifts, sigma is unchanged.
    base = [(0, 0), (2, 0), (4, 0), (0, 1), (0, 1), (0, 4)]
    doubled = [(2 * x, 2 * y) for x, y in base]
    shifted = [(x + 1, y + 1) for x, y in base]
    model = _table_model([base, doubled, shifted], "euclidean")

    stats = compute_calibration_stats(model, _batches(model, [[0, 3, 5, 1], [2, 4]]), 2)

    expected_prototypes = torch.tensor(
        [[[2.0, 0.0], [0.0, 2.0]], [[4.0, 0.0], [0.0, 4.0]], [[3.0, 1.0], [1.0, 3.0]]]
    )
    root = [math.sqrt(8 / 3), math.sqrt(2)]
    expected_sigma = torch.tensor([root, [2 * root[0], 2 * root[1]], root])
    # Pbar: mean over the 3 subsets: class 0 (9/3, 1/3), class 1 (1/3, 9/3).
    expected_overall = torch.tensor([[3.0, 1 / 3], [1 / 3, 3.0]])
    assert stats.metric == "euclidean"
    assert torch.equal(stats.subsets, all_subsets(2))
    assert stats.prototypes.dtype == torch.float32
    assert torch.allclose(stats.prototypes, expected_prototypes, atol=1e-6)
    assert torch.allclose(stats.sigma, expected_sigma, atol=1e-6)
    assert torch.allclose(stats.overall_prototypes, expected_overall, atol=1e-6)
    assert stats.backbone_fingerprint == backbone_fingerprint(model)


def test_cosine_stats_hand_computed():
    # Subset {m0}: class 0 at (1,0), (0,1), (1,0): P = (2/3, 1/3), not renormalised;
    #   d = 1 - <h, P> = 1/3, 2/3, 1/3, sigma = sqrt((1 + 4 + 1) / 27) = sqrt(2) / 3.
    #   class 1 at (0,1), (0,1), (0.6,0.8): P = (0.2, 14/15); d = 1/15, 1/15, 2/15;
    #   sigma = sqrt((1 + 1 + 4) / (225 * 3)) = sqrt(2) / 15.
    # Subset {m1} swaps the coordinates, subset {m0, m1} repeats subset {m0}.
    base = [(1, 0), (0, 1), (1, 0), (0, 1), (0, 1), (0.6, 0.8)]
    swapped = [(y, x) for x, y in base]
    model = _table_model([base, swapped, base], "cosine")

    stats = compute_calibration_stats(model, _batches(model, [[0, 1, 2, 3, 4, 5]]), 2)

    prototypes = [[2 / 3, 1 / 3], [0.2, 14 / 15]]
    swapped_prototypes = [[1 / 3, 2 / 3], [14 / 15, 0.2]]
    expected_prototypes = torch.tensor([prototypes, swapped_prototypes, prototypes])
    expected_sigma = torch.tensor([[math.sqrt(2) / 3, math.sqrt(2) / 15]] * 3)
    expected_overall = (2 * expected_prototypes[0] + expected_prototypes[1]) / 3
    assert torch.allclose(stats.prototypes, expected_prototypes, atol=1e-6)
    assert torch.allclose(stats.sigma, expected_sigma, atol=1e-6)
    assert torch.allclose(stats.overall_prototypes, expected_overall, atol=1e-6)


def test_stats_match_direct_computation():
    card = image_card(num_modalities=3, num_classes=3)
    model = small_backbone(card, "euclidean", seed=3)
    model.train()
    generator = torch.Generator().manual_seed(3)
    inputs = random_inputs(card, 30, generator)
    labels = torch.arange(30) % 3
    batches = [
        ({k: v[:17] for k, v in inputs.items()}, labels[:17]),
        ({k: v[17:] for k, v in inputs.items()}, labels[17:]),
    ]

    stats = compute_calibration_stats(model, batches, 3)

    assert model.training, "compute_calibration_stats must restore the training mode"
    model.eval()
    for subset_id, subset in enumerate(all_subsets(3)):
        with torch.no_grad():
            _, h = model(inputs, subset)
        for label in range(3):
            members = h[labels == label].double()
            prototype = members.mean(dim=0)
            sigma = (members - prototype).norm(dim=1).pow(2).mean().sqrt()
            assert torch.allclose(
                stats.prototypes[subset_id, label].double(), prototype, atol=1e-5
            ), (subset_id, label)
            assert stats.sigma[subset_id, label].item() == pytest.approx(sigma.item(), rel=1e-5)
    assert torch.allclose(stats.overall_prototypes, stats.prototypes.mean(dim=0), atol=1e-6)


def test_class_without_sample_raises():
    base = [(0, 0), (2, 0), (4, 0), (0, 1), (0, 1), (0, 4)]
    model = _table_model([base, base, base], "euclidean")
    inputs = row_id_inputs(model.card, 6)
    with pytest.raises(ValueError, match=r"classes \[1\] \(\['c1'\]\) have no sample"):
        compute_calibration_stats(model, [(inputs, torch.zeros(6, dtype=torch.long))], 2)


def test_identical_embeddings_raise_zero_sigma():
    base = [(1, 1)] * 3 + [(0, 1), (0, 2), (0, 4)]
    model = _table_model([base, base, base], "euclidean")
    message = r"distance scale of 0, e.g. class 0 under subset \['m0'\]"
    with pytest.raises(ValueError, match=message):
        compute_calibration_stats(model, _batches(model, [[0, 1, 2, 3, 4, 5]]), 2)


def test_invalid_labels_and_counts_raise():
    base = [(0, 0), (2, 0), (4, 0), (0, 1), (0, 1), (0, 4)]
    model = _table_model([base, base, base], "euclidean")
    inputs = row_id_inputs(model.card, 6)
    with pytest.raises(ValueError, match=r"num_classes is 3, but the backbone has 2 classes"):
        compute_calibration_stats(model, [(inputs, LABELS)], 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        compute_calibration_stats(model, [(inputs, LABELS + 1)], 2)
    with pytest.raises(ValueError, match=r"labels have shape \(5,\), expected \(6,\)"):
        compute_calibration_stats(model, [(inputs, LABELS[:5])], 2)
    with pytest.raises(ValueError, match=r"no batches"):
        compute_calibration_stats(model, [], 2)


def _hand_stats(metric: str = "euclidean", fingerprint: str = "abc") -> CalibrationStats:
    return CalibrationStats(
        metric=metric,
        subsets=all_subsets(2),
        prototypes=torch.arange(12, dtype=torch.float32).reshape(3, 2, 2),
        sigma=torch.ones(3, 2),
        overall_prototypes=torch.zeros(2, 2),
        backbone_fingerprint=fingerprint,
    )


def test_stats_round_trip_through_torch_save(tmp_path):
    stats = _hand_stats()
    path = tmp_path / "stats.pt"
    torch.save(stats.to_dict(), path)
    loaded = CalibrationStats.from_dict(torch.load(path))
    assert loaded.metric == stats.metric
    assert loaded.backbone_fingerprint == stats.backbone_fingerprint
    for name in ("subsets", "prototypes", "sigma", "overall_prototypes"):
        assert torch.equal(getattr(loaded, name), getattr(stats, name)), name


def test_from_dict_rejects_bad_keys_and_version():
    data = _hand_stats().to_dict()
    with pytest.raises(ValueError, match=r"missing keys \['sigma'\]"):
        CalibrationStats.from_dict({k: v for k, v in data.items() if k != "sigma"})
    with pytest.raises(ValueError, match=r"unknown keys \['t_dist_params'\]"):
        CalibrationStats.from_dict({**data, "t_dist_params": None})
    with pytest.raises(ValueError, match=r"format version 99 is not supported"):
        CalibrationStats.from_dict({**data, "format_version": 99})


def test_inconsistent_stats_rejected():
    stats = _hand_stats()
    with pytest.raises(ValueError, match=r"sigma must have shape \(3, 2\), got \(3, 3\)"):
        CalibrationStats(**{**_fields(stats), "sigma": torch.ones(3, 3)})
    with pytest.raises(ValueError, match=r"sigma must be > 0"):
        CalibrationStats(**{**_fields(stats), "sigma": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match=r"not the 3 non-empty subsets in all_subsets order"):
        CalibrationStats(**{**_fields(stats), "subsets": all_subsets(2).flip(0)})
    with pytest.raises(ValueError, match=r"metric 'dot' is not one of"):
        CalibrationStats(**{**_fields(stats), "metric": "dot"})
    with pytest.raises(ValueError, match=r"prototypes contains NaN or inf"):
        CalibrationStats(**{**_fields(stats), "prototypes": torch.full((3, 2, 2), math.nan)})


def _fields(stats: CalibrationStats) -> dict:
    data = stats.to_dict()
    data.pop("format_version")
    return data


def test_validate_names_every_difference():
    model = small_backbone(image_card(num_modalities=2, num_classes=3), "cosine", seed=0)
    stats = _hand_stats(metric="euclidean", fingerprint="0" * 64)
    with pytest.raises(ValueError) as error:
        stats.validate(model)
    message = str(error.value)
    assert "num_classes differs: statistics have 2, backbone has 3" in message
    assert "embedding_dim differs: statistics have 2, backbone has 8" in message
    assert "metric differs: statistics have 'euclidean', backbone has 'cosine'" in message
    assert "backbone fingerprint differs" in message
    assert "num_modalities" not in message


def test_validate_accepts_shape_mapping():
    stats = _hand_stats()
    stats.validate({"num_modalities": 2, "num_classes": 2, "embedding_dim": 2})
    message = r"num_modalities differs: statistics have 2, backbone has 5"
    with pytest.raises(ValueError, match=message):
        stats.validate({"num_modalities": 5})
    with pytest.raises(ValueError, match=r"unknown expectation keys \['classes'\]"):
        stats.validate({"classes": 2})


def test_stats_from_other_weights_rejected():
    card = image_card(num_modalities=2, num_classes=2)
    model = small_backbone(card, "cosine", seed=0)
    generator = torch.Generator().manual_seed(0)
    inputs = random_inputs(card, 8, generator)
    stats = compute_calibration_stats(model, [(inputs, torch.arange(8) % 2)], 2)
    stats.validate(model)

    other = small_backbone(card, "cosine", seed=1)
    with pytest.raises(ValueError, match=r"backbone fingerprint differs .* other weights"):
        stats.validate(other)


class _Wrapper(nn.Module):
    # Stands in for DistributedDataParallel, which stores the model as `.module`.
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_fingerprint_same_weights_same_digest():
    card = image_card(num_modalities=2)
    first = small_backbone(card, "cosine", seed=5)
    second = small_backbone(card, "cosine", seed=5)
    assert backbone_fingerprint(first) == backbone_fingerprint(second)
    assert backbone_fingerprint(_Wrapper(first)) == backbone_fingerprint(first)
    assert len(backbone_fingerprint(first)) == 64


def test_fingerprint_tracks_weight_changes():
    """Guards against a stale cached digest after the weights change in place."""
    card = image_card(num_modalities=2)
    model = small_backbone(card, "cosine", seed=5)
    other = small_backbone(card, "cosine", seed=6)
    before = backbone_fingerprint(model)
    with torch.no_grad():
        model.classifier.bias.add_(1e-3)
    after_edit = backbone_fingerprint(model)
    assert after_edit != before
    model.load_state_dict(other.state_dict())
    assert backbone_fingerprint(model) == backbone_fingerprint(other)
