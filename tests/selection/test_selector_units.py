"""The greedy selector on hand-built cases: decisions, traces, pass counts, baselines, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from selection_helpers import (
    TableBackbone,
    image_card,
    mixed_card,
    random_inputs,
    random_stats,
    row_id_inputs,
    scalar_card,
    small_backbone,
)

from dymo_ray.selection import (
    CalibrationStats,
    SelectionConfig,
    backbone_fingerprint,
    discard_predict,
    impute_all_predict,
    select,
)
from dymo_ray.subsets import all_subsets, num_subsets, subset_index

# ----------------------------------------------------------------------------- scripted cases
#
# A table backbone in euclidean mode whose embedding under subset S is (x_S, 0), with two
# classes, every prototype (subset or overall) at (1, 0) for class 0 and (-1, 0) for class 1,
# sigma = 1 and the classifier always predicting class 0. With tau = 1:
#     Q(x) = softmax(-(x - 1)^2, -(x + 1)^2)_0 = sigmoid(4 x)
#     ICS(x) = erfc(|x - 1| / sqrt 2)
# For x in [0, 1] both grow with x, so a candidate is useful exactly when it raises x.

SCRIPTED = SelectionConfig(tau=1.0, calibration="ratio")


def _q(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-4.0 * x))


def _ics(x: float) -> float:
    return math.erfc(abs(x - 1.0) / math.sqrt(2.0))


def _scripted(num_modalities: int, rows: list[dict[tuple[int, ...], float]]):
    """Build the table backbone and its statistics; x is 0 for subsets a row does not list."""
    count = num_subsets(num_modalities)
    embeddings = torch.zeros(len(rows), count, 2)
    for row, values in enumerate(rows):
        for members, x in values.items():
            subset = torch.zeros(num_modalities, dtype=torch.bool)
            subset[list(members)] = True
            embeddings[row, int(subset_index(subset)), 0] = x
    logits = torch.zeros(len(rows), count, 2)
    logits[..., 0] = 1.0
    card = scalar_card(num_modalities, 2)
    model = TableBackbone(card, logits, embeddings, "euclidean")
    prototypes = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    stats = CalibrationStats(
        metric="euclidean",
        subsets=all_subsets(num_modalities),
        prototypes=prototypes.expand(count, 2, 2).clone(),
        sigma=torch.ones(count, 2),
        overall_prototypes=prototypes,
        backbone_fingerprint=backbone_fingerprint(model),
    )
    return model, stats, row_id_inputs(card, len(rows))


def _present(rows: list[list[int]], num_modalities: int) -> torch.Tensor:
    present = torch.zeros(len(rows), num_modalities, dtype=torch.bool)
    for row, observed in enumerate(rows):
        present[row, observed] = True
    return present


def test_rejected_candidate_never_returns():
    # Step 0 from {0}: m1 lowers x (rejected), m2 is best, m3 is useful but smaller.
    # Step 1 from {0, 2}: adding m1 would now give the best x (0.9), but m1 is in Bad, so only
    # m3 is evaluated and accepted. Step 2 has no candidate left.
    model, stats, inputs = _scripted(
        4,
        [
            {
                (0,): 0.2,
                (0, 1): 0.1,
                (0, 2): 0.6,
                (0, 3): 0.4,
                (0, 1, 2): 0.9,
                (0, 2, 3): 0.7,
                (0, 1, 2, 3): 0.95,
            }
        ],
    )
    result = select(model, stats, inputs, _present([[0]], 4), SCRIPTED)

    assert result.selected[0].tolist() == [True, False, True, True]
    assert result.rejected[0].tolist() == [False, True, False, False]
    assert result.recovered_used[0].tolist() == [False, False, True, True]
    first, second = result.traces[0]
    assert first.candidates == [1, 2, 3]
    assert first.accepted == 2
    assert first.rejected == [1]
    assert first.left_out == [3]
    assert second.candidates == [3]
    assert second.accepted == 3
    assert second.rejected == []
    assert len(result.traces[0]) == 2


def test_trace_values_hand_computed():
    model, stats, inputs = _scripted(
        4, [{(0,): 0.2, (0, 1): 0.1, (0, 2): 0.6, (0, 3): 0.4, (0, 2, 3): 0.7}]
    )
    first = select(model, stats, inputs, _present([[0]], 4), SCRIPTED).traces[0][0]

    assert first.q_base == pytest.approx(_q(0.2), abs=1e-7)
    assert first.ics_base == pytest.approx(_ics(0.2), abs=1e-7)
    assert first.q_candidates == pytest.approx([_q(0.1), _q(0.6), _q(0.4)], abs=1e-7)
    assert first.ics_candidates == pytest.approx([_ics(0.1), _ics(0.6), _ics(0.4)], abs=1e-7)
    # m1 lowers ICS, so G = g' / g (ratio form); m2 and m3 raise it, so G = 1.
    factor_m1 = _ics(0.1) / _ics(0.2)
    assert first.calibration_factors == pytest.approx([factor_m1, 1.0, 1.0], abs=1e-7)
    expected_rewards = [
        _q(0.1) * factor_m1 - _q(0.2),
        _q(0.6) - _q(0.2),
        _q(0.4) - _q(0.2),
    ]
    assert first.rewards == pytest.approx(expected_rewards, abs=1e-7)


def test_ties_go_to_lowest_index():
    # Row 0 observes m2; m0 and m1 give the same x (an exact tie), so m0 is added. From
    # {0, 2}, adding m1 lowers x, so m1 is rejected. Row 1 observes m0; m1 and m2 tie.
    model, stats, inputs = _scripted(
        3,
        [
            {(2,): 0.2, (0, 2): 0.5, (1, 2): 0.5, (0, 1, 2): 0.3},
            {(0,): 0.2, (0, 1): 0.5, (0, 2): 0.5, (0, 1, 2): 0.6},
        ],
    )
    result = select(model, stats, inputs, _present([[2], [0]], 3), SCRIPTED)

    row0_first = result.traces[0][0]
    assert row0_first.rewards[0] == row0_first.rewards[1]
    assert row0_first.accepted == 0
    assert result.selected[0].tolist() == [True, False, True]
    assert result.rejected[0].tolist() == [False, True, False]
    assert result.traces[1][0].accepted == 1
    assert result.selected[1].tolist() == [True, True, True]


def test_zero_reward_left_out_and_stops():
    # m1 leaves x unchanged (R = 0): neither added nor rejected. m2 lowers x: rejected.
    model, stats, inputs = _scripted(3, [{(0,): 0.2, (0, 1): 0.2, (0, 2): 0.1}])
    result = select(model, stats, inputs, _present([[0]], 3), SCRIPTED)

    (step,) = result.traces[0]
    assert step.rewards[0] == 0.0
    assert step.accepted is None
    assert step.left_out == [1]
    assert step.rejected == [2]
    assert result.selected[0].tolist() == [True, False, False]
    assert result.rejected[0].tolist() == [False, False, True]


def _growing(num_modalities: int, observed: list[int]) -> dict[tuple[int, ...], float]:
    # x grows with the subset size (and slightly with the modality indices), so every step
    # accepts a candidate until nothing is missing.
    values = {}
    for subset in all_subsets(num_modalities):
        members = tuple(subset.nonzero().flatten().tolist())
        if set(observed) <= set(members):
            values[members] = 0.2 * len(members) + 0.01 * sum(members)
    return values


def test_one_fusion_call_per_step():
    """Guards the batching contract: encode once, base pass plus one fuse call per step."""
    observed = [[0], [0, 1, 2], [0, 1, 2, 3]]
    rows = [_growing(4, row) for row in observed]
    model, stats, inputs = _scripted(4, rows)
    result = select(model, stats, inputs, _present(observed, 4), SCRIPTED)

    assert model.encode_calls == 1
    # Base: 3 rows. Step 0: 3 candidates of row 0 and 1 of row 1. Steps 1 and 2: row 0 only.
    assert model.fuse_calls == [3, 4, 2, 1]
    # Row 0 has k = 3 missing: 1 + k (k + 1) / 2 = 7 fused rows, the cost floor.
    assert result.fused_rows == 3 + 4 + 2 + 1
    assert result.selected.all()
    assert [len(trace) for trace in result.traces] == [3, 1, 0]


def test_max_steps_limits_additions():
    model, stats, inputs = _scripted(4, [_growing(4, [0])])
    present = _present([[0]], 4)
    one_step = select(model, stats, inputs, present, SelectionConfig(1.0, "ratio", max_steps=1))
    assert one_step.selected[0].tolist() == [True, False, False, True]
    assert len(one_step.traces[0]) == 1

    no_step = select(model, stats, inputs, present, SelectionConfig(1.0, "ratio", max_steps=0))
    assert no_step.selected[0].tolist() == [True, False, False, False]
    assert no_step.traces == [[]]


def test_result_to_dict_names_modalities():
    model, stats, inputs = _scripted(
        4, [{(0,): 0.2, (0, 1): 0.1, (0, 2): 0.6, (0, 3): 0.4, (0, 2, 3): 0.7}]
    )
    result = select(model, stats, inputs, _present([[0]], 4), SCRIPTED)
    (sample,) = json.loads(json.dumps(result.to_dict(model.card.modality_names)))

    assert sample["prediction"] == 0
    assert sample["observed"] == ["m0"]
    assert sample["recovered_used"] == ["m2", "m3"]
    assert sample["rejected"] == ["m1"]
    first = sample["trace"][0]
    assert [c["modality"] for c in first["candidates"]] == ["m1", "m2", "m3"]
    assert first["accepted"] == "m2"
    assert first["rejected"] == ["m1"]
    assert first["left_out"] == ["m3"]
    assert first["candidates"][1]["reward"] == pytest.approx(_q(0.6) - _q(0.2), abs=1e-7)


# ----------------------------------------------------------------------------- real backbone


@pytest.fixture(scope="module")
def backbone_and_stats():
    card = image_card(num_modalities=5, num_classes=4)
    model = small_backbone(card, "cosine", seed=11)
    stats = random_stats(model, 48, torch.Generator().manual_seed(11))
    return model, stats


def test_nothing_missing_equals_backbone(backbone_and_stats):
    model, stats = backbone_and_stats
    generator = torch.Generator().manual_seed(0)
    inputs = random_inputs(model.card, 6, generator)
    present = torch.ones(6, 5, dtype=torch.bool)
    present[3:, 4] = False  # rows 3 to 5 miss m4; rows 0 to 2 miss nothing

    result = select(model, stats, inputs, present)

    with torch.no_grad():
        logits, _ = model(inputs, present)
    assert torch.equal(result.logits[:3], logits[:3])
    assert torch.equal(result.selected[:3], present[:3])
    assert result.traces[:3] == [[], [], []]
    assert not result.recovered_used[:3].any()
    for row in range(3):
        with torch.no_grad():
            alone, _ = model({k: v[row : row + 1] for k, v in inputs.items()}, present[row])
        assert torch.allclose(result.logits[row], alone[0], atol=1e-6), row


def test_without_traces_same_result(backbone_and_stats):
    model, stats = backbone_and_stats
    generator = torch.Generator().manual_seed(1)
    inputs = random_inputs(model.card, 31, generator)
    present = all_subsets(5)
    with_traces = select(model, stats, inputs, present)
    without = select(model, stats, inputs, present, with_traces=False)
    assert without.traces is None
    for name in ("logits", "selected", "rejected", "recovered_used", "predictions"):
        assert torch.equal(getattr(with_traces, name), getattr(without, name)), name


def test_max_steps_zero_equals_discard(backbone_and_stats):
    model, stats = backbone_and_stats
    generator = torch.Generator().manual_seed(2)
    inputs = random_inputs(model.card, 31, generator)
    present = all_subsets(5)
    selected = select(model, stats, inputs, present, SelectionConfig(max_steps=0))
    discarded = discard_predict(model, inputs, present)
    assert torch.equal(selected.logits, discarded.logits)
    assert torch.equal(discarded.selected, present)
    assert not discarded.recovered_used.any()


def test_baselines_match_backbone(backbone_and_stats):
    model, _ = backbone_and_stats
    generator = torch.Generator().manual_seed(3)
    inputs = random_inputs(model.card, 31, generator)
    present = all_subsets(5)
    everything = torch.ones(31, 5, dtype=torch.bool)
    with torch.no_grad():
        observed_logits, _ = model(inputs, present)
        all_logits, _ = model(inputs, everything)

    discarded = discard_predict(model, inputs, present)
    imputed = impute_all_predict(model, inputs, present)
    assert torch.equal(discarded.logits, observed_logits)
    assert torch.equal(imputed.logits, all_logits)
    assert torch.equal(imputed.recovered_used, ~present)
    assert torch.equal(imputed.predictions, all_logits.argmax(dim=1))
    assert torch.allclose(imputed.probabilities.sum(dim=1), torch.ones(31))
    assert not impute_all_predict(model, inputs).recovered_used.any()


def test_training_mode_restored(backbone_and_stats):
    model, stats = backbone_and_stats
    inputs = random_inputs(model.card, 4, torch.Generator().manual_seed(4))
    present = torch.ones(4, 5, dtype=torch.bool)
    present[:, 0] = False
    model.train()
    try:
        select(model, stats, inputs, present)
        assert model.training
    finally:
        model.eval()


# ----------------------------------------------------------------------------- bad input


def _float_image_with_nan(row: int) -> torch.Tensor:
    image = torch.ones(3, 1, 4, 4)
    image[row, 0, 1, 2] = math.nan
    return image


def _valid_batch(model, rows: int = 3):
    inputs = random_inputs(model.card, rows, torch.Generator().manual_seed(5))
    present = torch.ones(rows, model.card.num_modalities, dtype=torch.bool)
    present[:, -1] = False
    return inputs, present


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda x: {k: v for k, v in x.items() if k != "m4"}, r"missing modalities \['m4'\]"),
        (lambda x: {**x, "m9": x["m0"]}, r"unknown modalities \['m9'\]"),
        (
            lambda x: {**x, "m0": torch.zeros(3, 1, 5, 5, dtype=torch.uint8)},
            r"modality 'm0' has shape \(3, 1, 5, 5\), expected \(batch, 1, 4, 4\)",
        ),
        (
            lambda x: {**x, "m1": x["m1"][:2]},
            r"modalities have different batch sizes",
        ),
        (
            lambda x: {**x, "m0": _float_image_with_nan(row=2)},
            r"modality 'm0' contains NaN or inf in rows \[2\]",
        ),
        (
            lambda x: {**x, "m2": x["m2"].to(torch.int32)},
            r"modality 'm2' is an image and needs uint8 or float values",
        ),
        (lambda x: list(x.values()), r"inputs must be a dict of tensors"),
    ],
)
def test_invalid_inputs_name_problem(backbone_and_stats, edit, message):
    model, stats = backbone_and_stats
    inputs, present = _valid_batch(model)
    with pytest.raises(ValueError, match=message):
        select(model, stats, edit(inputs), present)
    with pytest.raises(ValueError, match=message):
        discard_predict(model, edit(inputs), present)


def test_invalid_present_named(backbone_and_stats):
    model, stats = backbone_and_stats
    inputs, present = _valid_batch(model)
    with pytest.raises(ValueError, match=r"present must be a bool tensor.*got torch.int64"):
        select(model, stats, inputs, present.long())
    with pytest.raises(ValueError, match=r"present has shape \(3, 4\), expected .* \(3, 5\)"):
        select(model, stats, inputs, present[:, :4])
    present[1] = False
    with pytest.raises(ValueError, match=r"no observed modality in rows \[1\]"):
        select(model, stats, inputs, present)
    with pytest.raises(ValueError, match=r"no observed modality in rows \[1\]"):
        impute_all_predict(model, inputs, present)


def test_text_input_must_be_integer():
    card = mixed_card()
    model = small_backbone(card, "cosine", seed=0)
    inputs = random_inputs(card, 2, torch.Generator().manual_seed(0))
    inputs["text"] = inputs["text"].float()
    with pytest.raises(ValueError, match=r"modality 'text' is text and needs integer indices"):
        discard_predict(model, inputs, torch.ones(2, 3, dtype=torch.bool))


def test_missing_or_foreign_stats_rejected(backbone_and_stats):
    model, stats = backbone_and_stats
    inputs, present = _valid_batch(model)
    with pytest.raises(ValueError, match=r"no calibration statistics"):
        select(model, None, inputs, present)

    other = small_backbone(model.card, "cosine", seed=12)
    with pytest.raises(ValueError, match=r"backbone fingerprint differs"):
        select(other, stats, inputs, present)

    euclidean = small_backbone(model.card, "euclidean", seed=11)
    with pytest.raises(ValueError, match=r"metric differs: statistics have 'cosine'"):
        select(euclidean, stats, inputs, present)

    fewer_classes = small_backbone(image_card(num_modalities=5, num_classes=3), "cosine", 11)
    with pytest.raises(ValueError, match=r"num_classes differs: statistics have 4, backbone has 3"):
        select(fewer_classes, stats, inputs, present)


# ----------------------------------------------------------------------------- config


def test_config_defaults_per_metric():
    config = SelectionConfig()
    assert config.tau == 0.1
    assert config.calibration_form("cosine") == "log-ratio"
    assert config.calibration_form("euclidean") == "ratio"
    assert SelectionConfig(calibration="ratio").calibration_form("cosine") == "ratio"


def test_config_lists_every_problem():
    with pytest.raises(ValueError) as error:
        SelectionConfig(tau=0.0, calibration="log", max_steps=-1)
    message = str(error.value)
    assert "tau must be a finite number > 0, got 0.0" in message
    assert "calibration 'log' is not one of ['ratio', 'log-ratio']" in message
    assert "max_steps must be None or an integer >= 0, got -1" in message


def test_config_from_dict_rejects_unknown_key():
    assert SelectionConfig.from_dict({"tau": 0.5}).tau == 0.5
    with pytest.raises(ValueError, match=r"unknown selection config keys \['temperature'\]"):
        SelectionConfig.from_dict({"temperature": 0.5})
