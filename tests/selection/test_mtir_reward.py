"""Hand-computed values of Q, ICS, the calibration factor G and the MTIR reward."""

from __future__ import annotations

import math

import pytest
import torch

from dymo_ray.selection.reward import (
    calibration_factor,
    ics,
    mtir_reward,
    prototype_confidence,
    prototype_distance,
)


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- Q


def test_confidence_cosine_two_classes():
    # Scores <h, P> = (1, 0), divided by tau 0.1: (10, 0). Q = 1 / (1 + e^-10).
    h = _t([[1.0, 0.0]])
    overall = _t([[1.0, 0.0], [0.0, 1.0]])
    q = prototype_confidence(h, overall, "cosine", tau=0.1)
    assert q.dtype == torch.float64
    assert q.item() == pytest.approx(1.0 / (1.0 + math.exp(-10.0)), abs=1e-12)


def test_confidence_euclidean_uses_squared_distance():
    # Scores -||h - P||^2 = (-1, -4), divided by tau 0.5: (-2, -8). Q = 1 / (1 + e^-6).
    h = _t([[0.0, 0.0]])
    overall = _t([[1.0, 0.0], [0.0, 2.0]])
    q = prototype_confidence(h, overall, "euclidean", tau=0.5)
    assert q.item() == pytest.approx(1.0 / (1.0 + math.exp(-6.0)), abs=1e-12)


def test_confidence_uniform_is_one_over_classes():
    h = _t([[0.0, 0.0]])
    overall = _t([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert prototype_confidence(h, overall, "euclidean", tau=0.1).item() == pytest.approx(0.25)


def test_confidence_rows_are_independent():
    h = _t([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    overall = _t([[1.0, 0.0], [0.0, 1.0]])
    batched = prototype_confidence(h, overall, "cosine", tau=0.1)
    for row in range(3):
        single = prototype_confidence(h[row : row + 1], overall, "cosine", tau=0.1)
        assert batched[row].item() == pytest.approx(single.item(), abs=1e-15)


def test_confidence_unknown_metric_lists_choices():
    with pytest.raises(ValueError, match=r"unknown metric 'dot'.*cosine.*euclidean"):
        prototype_confidence(_t([[1.0]]), _t([[1.0]]), "dot", tau=0.1)


# ----------------------------------------------------------------------------- ICS


def test_ics_euclidean_one_sigma():
    # d = ||(3, 4)|| = 5, sigma = 5: ICS = 2 (1 - Phi(1)) = erfc(1 / sqrt 2) = 0.3173105...
    value = ics(_t([[3.0, 4.0]]), _t([[0.0, 0.0]]), _t([5.0]), "euclidean")
    assert value.item() == pytest.approx(0.31731050786291415, rel=1e-12)


def test_ics_cosine_two_sigma():
    # d = 1 - <(1, 0), (0.5, 0)> = 0.5, sigma = 0.25: ICS = 2 (1 - Phi(2)) = 0.0455002...
    value = ics(_t([[1.0, 0.0]]), _t([[0.5, 0.0]]), _t([0.25]), "cosine")
    assert value.item() == pytest.approx(0.04550026389635844, rel=1e-12)


def test_ics_at_prototype_is_one():
    value = ics(_t([[0.3, -0.2]]), _t([[0.3, -0.2]]), _t([0.1]), "euclidean")
    assert value.item() == 1.0


def test_cosine_distance_is_not_renormalised():
    # The prototype (0.5, 0) keeps its norm: d = 1 - 0.5, not 1 - 1.
    distance = prototype_distance(_t([[1.0, 0.0]]), _t([[0.5, 0.0]]), "cosine")
    assert distance.item() == pytest.approx(0.5)


def test_cosine_distance_rounding_clamped():
    """Guards against ICS > 1 when rounding puts <h, P> just above 1."""
    h = _t([[1.0, 0.0]])
    prototype = _t([[1.0 + 1e-7, 0.0]])
    assert prototype_distance(h, prototype, "cosine").item() == 0.0
    assert ics(h, prototype, _t([0.1]), "cosine").item() == 1.0


def test_ics_far_tail_stays_positive():
    """Guards against the float32 underflow of 2 (1 - Phi(x)), which is exactly 0 for x > ~5.4."""
    # d / sigma = 8: 2 (1 - Phi(8)) = 1.2441921e-15.
    value = ics(_t([[8.0, 0.0]]), _t([[0.0, 0.0]]), _t([1.0]), "euclidean")
    assert value.item() > 0.0
    assert value.item() == pytest.approx(1.244192114854348e-15, rel=1e-9)
    assert math.isfinite(math.log(value.item()))


def test_ics_float32_inputs_keep_far_tail():
    value = ics(
        torch.tensor([[0.0, 8.0]], dtype=torch.float32),
        torch.tensor([[0.0, 0.0]], dtype=torch.float32),
        torch.tensor([1.0], dtype=torch.float32),
        "euclidean",
    )
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(1.244192114854348e-15, rel=1e-6)


def test_naive_float32_tail_underflows():
    """Documents why ICS uses erfc: the naive form is exactly 0 at 5.5 sigma in float32."""
    normal = torch.distributions.Normal(0.0, 1.0)
    naive = 2.0 * (1.0 - normal.cdf(torch.tensor(5.5, dtype=torch.float32)))
    assert naive.item() == 0.0
    stable = ics(_t([[5.5]]), _t([[0.0]]), _t([1.0]), "euclidean")
    assert stable.item() == pytest.approx(3.797912e-08, rel=1e-5)


# ----------------------------------------------------------------------------- G

# (g, g_new, expected ratio G, expected log-ratio G)
CALIBRATION_CASES = [
    (0.5, 0.25, 0.5, 0.5),  # log 0.5 / log 0.25 = 0.5
    (0.1, 0.01, 0.1, 0.5),  # log 0.1 / log 0.01 = 0.5
    (0.5, 0.6, 1.0, 1.0),  # g_new > g: no penalty
    (0.4, 0.4, 1.0, 1.0),  # equal: no penalty
    (0.0, 0.0, 1.0, 1.0),  # both zero: no drop
    (1.0, 1.0, 1.0, 1.0),  # both one: no drop
    (0.0, 0.3, 1.0, 1.0),  # rise from zero
    (0.5, 0.0, 0.0, 0.0),  # drop to zero
    (1.0, 0.5, 0.5, 0.0),  # log-ratio: log 1 = 0 gives G = 0
]


@pytest.mark.parametrize("g, g_new, expected_ratio, expected_log_ratio", CALIBRATION_CASES)
def test_calibration_factor_both_forms(g, g_new, expected_ratio, expected_log_ratio):
    ratio = calibration_factor(_t([g]), _t([g_new]), "ratio")
    log_ratio = calibration_factor(_t([g]), _t([g_new]), "log-ratio")
    assert ratio.item() == pytest.approx(expected_ratio, abs=1e-12)
    assert log_ratio.item() == pytest.approx(expected_log_ratio, abs=1e-12)


def test_calibration_factor_batched_finite():
    g = _t([case[0] for case in CALIBRATION_CASES])
    g_new = _t([case[1] for case in CALIBRATION_CASES])
    for form, column in (("ratio", 2), ("log-ratio", 3)):
        factors = calibration_factor(g, g_new, form)
        expected = _t([case[column] for case in CALIBRATION_CASES])
        assert torch.isfinite(factors).all(), form
        assert torch.allclose(factors, expected, atol=1e-12), form
        # No -0.0 leaks out of log(1) / log(g_new).
        assert not torch.signbit(factors).any(), form


def test_calibration_factor_far_tail_log_ratio():
    # g = erfc-tail at 5 sigma, g_new at 8 sigma: both tiny but positive, G = log g / log g'.
    g = 2.0 * 2.866515718791939e-07
    g_new = 1.244192114854348e-15
    factor = calibration_factor(_t([g]), _t([g_new]), "log-ratio")
    assert factor.item() == pytest.approx(math.log(g) / math.log(g_new), rel=1e-12)
    assert 0.0 < factor.item() < 1.0


def test_calibration_unknown_form_lists_choices():
    with pytest.raises(ValueError, match=r"unknown calibration form 'log'.*'ratio', 'log-ratio'"):
        calibration_factor(_t([0.5]), _t([0.4]), "log")


# ----------------------------------------------------------------------------- reward


@pytest.mark.parametrize(
    "q_new, factor, q_base, expected",
    [
        (0.8, 1.0, 0.6, 0.2),  # more confident, no ICS drop: useful
        (0.6, 1.0, 0.6, 0.0),  # no gain: R = 0
        (0.5, 1.0, 0.6, -0.1),  # less confident: harmful
        (0.8, 0.5, 0.6, -0.2),  # more confident but much less typical: harmful
        (0.9, 0.75, 0.6, 0.075),  # the ICS drop is outweighed: still useful
        (0.9, 0.0, 0.6, -0.6),  # typicality collapsed: R = -Q(h_S)
    ],
)
def test_reward_sign_table(q_new, factor, q_base, expected):
    reward = mtir_reward(_t([q_new]), _t([factor]), _t([q_base]))
    assert reward.item() == pytest.approx(expected, abs=1e-12)
    assert (reward.item() > 0) == (expected > 0)
    assert (reward.item() < 0) == (expected < 0)
