"""Missingness protocols: masks, statistics, determinism and parse errors."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

from dymo_ray.paths import project_root
from dymo_ray.data.protocols import (
    default_protocols,
    expected_missing_fraction,
    parse_protocol,
)
from dymo_ray.data.spec import MOPOE_ALPHABET, DatasetCard, ModalitySpec

POLY = ["m0", "m1", "m2", "m3", "m4"]
MDT = ["mnist", "digits", "text"]


def _card(names: list[str]) -> DatasetCard:
    return DatasetCard(
        name="test",
        modalities=[
            ModalitySpec(name, "text", (8,), "int64", 0.0, 70.0, alphabet=MOPOE_ALPHABET)
            for name in names
        ],
        class_names=["0", "1"],
    )


# ---------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------


def test_complete_observes_everything():
    present = parse_protocol("complete", POLY).apply(7, seed=0)
    assert present.dtype == torch.bool
    assert tuple(present.shape) == (7, 5)
    assert bool(present.all())


def test_drop_hides_named_modalities():
    protocol = parse_protocol("drop:text+mnist", MDT)
    present = protocol.apply(4, seed=0)
    assert protocol.name == "drop:mnist+text"
    assert protocol.dropped == ("mnist", "text")
    assert present.tolist() == [[False, True, False]] * 4


def test_random_is_deterministic_per_seed():
    protocol = parse_protocol("random:0.5", POLY)
    first = protocol.apply(200, seed=11)
    again = parse_protocol("random:0.50", POLY).apply(200, seed=11)
    other_seed = protocol.apply(200, seed=12)
    other_eta = parse_protocol("random:0.4", POLY).apply(200, seed=11)
    assert torch.equal(first, again)
    assert not torch.equal(first, other_seed)
    assert not torch.equal(first, other_eta)


def test_random_mask_same_in_new_process():
    """The seed must not depend on Python's per-process string hash."""
    code = (
        "from dymo_ray.data.protocols import parse_protocol;"
        "m = parse_protocol('random:0.6', ['a','b','c','d','e']).apply(64, seed=3);"
        "print(''.join('1' if v else '0' for v in m.reshape(-1).tolist()))"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": hash_seed, "PATH": "/usr/bin:/bin"},
            cwd=project_root(),
            timeout=120,
        )
        outputs.add(result.stdout.strip())
    in_this_process = parse_protocol("random:0.6", ["a", "b", "c", "d", "e"]).apply(64, seed=3)
    outputs.add("".join("1" if v else "0" for v in in_this_process.reshape(-1).tolist()))
    assert len(outputs) == 1


def test_random_never_leaves_row_empty():
    present = parse_protocol("random:0.9", MDT).apply(5000, seed=1)
    assert bool(present.any(dim=1).all())


def test_random_eta_one_keeps_one_uniform_modality():
    present = parse_protocol("random:1", POLY).apply(10_000, seed=2)
    assert (present.sum(dim=1) == 1).all()
    share = present.float().mean(dim=0)
    # Put-back is uniform over the 5 modalities: each gets about 1/5 of the rows.
    assert torch.allclose(share, torch.full((5,), 0.2), atol=0.02)


def test_random_eta_zero_is_complete():
    present = parse_protocol("random:0", POLY).apply(100, seed=0)
    assert bool(present.all())


def test_apply_rejects_negative_arguments():
    protocol = parse_protocol("random:0.5", POLY)
    with pytest.raises(ValueError, match="num_rows"):
        protocol.apply(-1, seed=0)
    with pytest.raises(ValueError, match="seed"):
        protocol.apply(3, seed=-1)


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------


def test_expected_fraction_hand_values():
    # 0.6 - 0.6^5 / 5 = 0.6 - 0.07776 / 5
    assert expected_missing_fraction(0.6, 5) == pytest.approx(0.584448, abs=1e-12)
    # M = 2, eta = 0.5: missing counts 0, 1, 1 and 2 -> 1 each with probability 1/4,
    # so E = (0 + 1 + 1 + 1) / 4 = 0.75 modalities, a fraction of 0.375.
    assert expected_missing_fraction(0.5, 2) == pytest.approx(0.375, abs=1e-12)


@pytest.mark.parametrize("eta, num_modalities", [(0.3, 3), (0.8, 4), (1.0, 5)])
def test_expected_fraction_matches_enumeration(eta, num_modalities):
    """Enumerate all 2^M outcomes, apply the put-back, and compare with the formula."""
    expected = 0.0
    for missing in itertools.product([False, True], repeat=num_modalities):
        count = sum(missing)
        probability = eta**count * (1 - eta) ** (num_modalities - count)
        after = num_modalities - 1 if count == num_modalities else count
        expected += probability * after / num_modalities
    assert expected_missing_fraction(eta, num_modalities) == pytest.approx(expected, abs=1e-12)


def test_random_missing_fraction_near_expected():
    protocol = parse_protocol("random:0.6", POLY)
    present = protocol.apply(10_000, seed=0)
    observed = 1.0 - present.float().mean().item()
    assert protocol.expected_missing_fraction() == pytest.approx(0.584448, abs=1e-9)
    assert abs(observed - 0.584448) < 0.02


def test_random_missing_fraction_per_modality():
    present = parse_protocol("random:0.8", POLY).apply(10_000, seed=4)
    missing = 1.0 - present.float().mean(dim=0)
    target = expected_missing_fraction(0.8, 5)
    assert torch.allclose(missing, torch.full((5,), target), atol=0.02)


def test_expected_fraction_other_kinds():
    assert parse_protocol("complete", MDT).expected_missing_fraction() == 0.0
    assert parse_protocol("drop:text", MDT).expected_missing_fraction() == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------
# Parse errors: the message lists the valid forms and the modality names
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, reason",
    [
        ("sometimes:0.5", "unknown kind 'sometimes'"),
        ("drop:svhn", r"unknown modalities \['svhn'\]"),
        ("drop:mnist+svhn", r"unknown modalities \['svhn'\]"),
        ("random:1.5", r"eta 1.5 is outside \[0, 1\]"),
        ("random:-0.1", r"eta -0.1 is outside \[0, 1\]"),
        ("random:nan", r"eta nan is outside \[0, 1\]"),
        ("random:abc", "eta 'abc' is not a number"),
        ("random:", "eta '' is not a number"),
        ("random", "eta '' is not a number"),
        ("drop:mnist+digits+text", "drops every modality"),
        ("drop:", "drop list is empty"),
        ("drop", "drop list is empty"),
        ("drop:mnist+", "drop list is empty or has an empty name"),
        ("drop:text+text", r"modalities \['text'\] are listed more than once"),
        ("complete:0.5", "'complete' takes no argument"),
        ("", "unknown kind ''"),
    ],
)
def test_parse_rejects_invalid(text, reason):
    with pytest.raises(ValueError, match=reason) as caught:
        parse_protocol(text, MDT)
    message = str(caught.value)
    assert "Valid forms: complete, random:<eta> with 0 <= eta <= 1, drop:<a>+<b>" in message
    assert "modality names: ['mnist', 'digits', 'text']" in message


def test_parse_canonical_names():
    assert parse_protocol(" random:0.60 ", POLY).name == "random:0.6"
    assert parse_protocol("random:1e-1", POLY).eta == pytest.approx(0.1)
    assert parse_protocol("drop: m3 + m1", POLY).name == "drop:m1+m3"


# ---------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------


def test_default_protocols_mdt_every_drop():
    protocols = default_protocols(_card(MDT))
    assert protocols == [
        "drop:mnist", "drop:digits", "drop:text",
        "drop:mnist+digits", "drop:mnist+text", "drop:digits+text",
    ]
    for text in protocols:
        present = parse_protocol(text, MDT).apply(3, seed=0)
        assert bool(present.any(dim=1).all()), text


def test_default_protocols_polymnist_random():
    protocols = default_protocols(_card(POLY))
    assert protocols == ["random:0.2", "random:0.4", "random:0.6", "random:0.8"]
    etas = [parse_protocol(text, POLY).eta for text in protocols]
    assert np.allclose(etas, [0.2, 0.4, 0.6, 0.8])
