"""Saving and loading recovery models as plain files."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from recovery_helpers import TINY, mixed_card, random_batch, random_present

from dymo_ray.data.spec import CardError, DatasetCard, ModalitySpec
from dymo_ray.recovery import build_recovery, load_recovery, save_recovery


@pytest.mark.parametrize("model_name", sorted(TINY))
def test_round_trip_same_recovery(model_name, tmp_path):
    card = mixed_card()
    recovery = build_recovery(model_name, card, init_seed=3, **TINY[model_name])
    save_recovery(recovery, tmp_path / "model")

    loaded = load_recovery(tmp_path / "model", card=card, map_location="cpu")

    assert loaded.name == model_name
    assert loaded.config_dict() == recovery.config_dict()
    inputs = random_batch(card, 6, seed=1)
    present = random_present(6, 3, seed=2)
    expected = recovery.recover(inputs, present, seed=7)
    actual = loaded.recover(inputs, present, seed=7)
    for name in card.modality_names:
        assert torch.equal(expected[name], actual[name]), name


def test_saved_folder_holds_plain_files(tmp_path):
    recovery = build_recovery("mopoe", mixed_card(), **TINY["mopoe"])
    folder = save_recovery(recovery, tmp_path / "model")
    assert sorted(path.name for path in folder.iterdir()) == [
        "card.json",
        "recovery.json",
        "weights.pt",
    ]
    header = json.loads((folder / "recovery.json").read_text())
    assert header["name"] == "mopoe"
    assert header["config"]["latent_dim"] == 8
    # weights_only loading rejects anything but tensors and plain containers.
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert all(value.device.type == "cpu" for value in state.values())


def test_baseline_round_trip(tmp_path):
    card = mixed_card()
    save_recovery(build_recovery("noise", card), tmp_path / "noise")
    loaded = load_recovery(tmp_path / "noise")
    assert loaded.name == "noise"
    assert loaded.card.to_dict() == card.to_dict()


def test_load_without_card_uses_saved(tmp_path):
    card = mixed_card()
    save_recovery(build_recovery("mopoe", card, **TINY["mopoe"]), tmp_path / "model")
    assert load_recovery(tmp_path / "model").card.to_dict() == card.to_dict()


def test_card_with_other_names_rejected(tmp_path):
    card = mixed_card()
    save_recovery(build_recovery("mopoe", card, **TINY["mopoe"]), tmp_path / "model")
    other = mixed_card()
    other.modalities[1] = dataclasses.replace(other.modalities[1], name="svhn")
    with pytest.raises(CardError, match="modality names differ"):
        load_recovery(tmp_path / "model", card=other)


def test_card_with_other_shape_rejected(tmp_path):
    card = mixed_card()
    save_recovery(build_recovery("mopoe", card, **TINY["mopoe"]), tmp_path / "model")
    other = DatasetCard(
        name="mixed",
        modalities=[
            card.modalities[0],
            ModalitySpec("digits", "image", (1, 16, 16), "uint8", max_value=16),
            card.modalities[2],
        ],
        class_names=card.class_names,
    )
    with pytest.raises(CardError, match=r"modality 'digits' differs.*\(1, 16, 16\)"):
        load_recovery(tmp_path / "model", card=other)


def test_missing_folder_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="recovery.json not found"):
        load_recovery(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "recovery.json is not readable JSON"),
        ("[]", "must contain a JSON object with 'name' and 'config'"),
    ],
)
def test_unreadable_header_rejected(tmp_path, text, message):
    save_recovery(build_recovery("mopoe", mixed_card(), **TINY["mopoe"]), tmp_path / "model")
    (tmp_path / "model" / "recovery.json").write_text(text)

    with pytest.raises(ValueError, match=message):
        load_recovery(tmp_path / "model")


def test_corrupt_weights_rejected(tmp_path):
    save_recovery(build_recovery("mopoe", mixed_card(), **TINY["mopoe"]), tmp_path / "model")
    (tmp_path / "model" / "weights.pt").write_bytes(b"not a torch file")

    with pytest.raises(ValueError, match="weights.pt cannot be loaded into mopoe"):
        load_recovery(tmp_path / "model")
