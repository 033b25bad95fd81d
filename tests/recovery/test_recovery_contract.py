"""The `Recovery.recover` contract, checked on a trained tiny MoPoE and the baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recovery_helpers import TINY, mixed_card, random_batch, random_present

from dymo_ray.recovery import build_recovery
from dymo_ray.recovery.baselines import NoiseRecovery


def test_observed_rows_unchanged(trained_mopoe):
    card = trained_mopoe.card
    inputs = random_batch(card, 12, seed=1)
    present = random_present(12, card.num_modalities, seed=2)
    completed = trained_mopoe.recover(inputs, present, seed=0)
    for index, name in enumerate(card.modality_names):
        rows = present[:, index]
        assert completed[name].dtype == inputs[name].dtype, name
        assert torch.equal(completed[name][rows], inputs[name][rows]), name


def test_missing_slot_values_ignored(trained_mopoe):
    """MoPoE encodes every modality it is given, so a leak would show here first."""
    card = trained_mopoe.card
    inputs = random_batch(card, 12, seed=3)
    present = random_present(12, card.num_modalities, seed=4)
    with_zeros, with_noise = {}, {}
    noise = random_batch(card, 12, seed=99)
    for index, name in enumerate(card.modality_names):
        missing = ~present[:, index]
        with_zeros[name] = inputs[name].clone()
        with_zeros[name][missing] = 0
        with_noise[name] = inputs[name].clone()
        with_noise[name][missing] = noise[name][missing]
    # Out-of-alphabet indices in a missing text slot must not be read either.
    with_noise["text"][~present[:, 2]] = 10_000

    first = trained_mopoe.recover(with_zeros, present, seed=5)
    second = trained_mopoe.recover(with_noise, present, seed=5)
    for name in card.modality_names:
        observed = present[:, card.modality_names.index(name)]
        assert torch.equal(first[name][~observed], second[name][~observed]), name


def test_one_generation_call_per_observed_set(trained_mopoe, monkeypatch):
    card = trained_mopoe.card
    inputs = random_batch(card, 10, seed=6)
    present = torch.tensor(
        [[True, False, False], [False, True, True], [True, False, False], [True, True, True]]
        + [[False, True, True]] * 3
        + [[True, False, True]] * 3
    )
    calls = []
    original = trained_mopoe._generate

    def spy(observed, missing, batch_size):
        calls.append((sorted(observed), missing, batch_size))
        return original(observed, missing, batch_size)

    monkeypatch.setattr(trained_mopoe, "_generate", spy)
    trained_mopoe.recover(inputs, present, seed=0)
    assert sorted(calls) == sorted(
        [
            (["mnist"], ["digits", "text"], 2),
            (["digits", "text"], ["mnist"], 4),
            (["mnist", "text"], ["digits"], 3),
        ]
    )


def test_group_recovery_independent_of_batch(trained_mopoe):
    """A group's recovery must not depend on which other observed sets share the batch."""
    card = trained_mopoe.card
    inputs = random_batch(card, 12, seed=7)
    present = random_present(12, card.num_modalities, seed=8)
    mixed = trained_mopoe.recover(inputs, present, seed=11)
    first_set = present[0]
    rows = (present == first_set).all(dim=1)
    alone = trained_mopoe.recover(
        {name: values[rows] for name, values in inputs.items()}, present[rows], seed=11
    )
    for name in card.modality_names:
        assert torch.equal(mixed[name][rows], alone[name]), name


def test_seed_reproducible_and_rng_restored(trained_mopoe):
    card = trained_mopoe.card
    inputs = random_batch(card, 12, seed=9)
    present = random_present(12, card.num_modalities, seed=10)
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()

    first = trained_mopoe.recover(inputs, present, seed=3)
    second = trained_mopoe.recover(inputs, present, seed=3)

    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    for name in card.modality_names:
        assert torch.equal(first[name], second[name]), name


def test_other_seed_other_sample(trained_mopoe):
    card = trained_mopoe.card
    inputs = random_batch(card, 12, seed=9)
    present = torch.zeros((12, 3), dtype=torch.bool)
    present[:, 2] = True
    first = trained_mopoe.recover(inputs, present, seed=3)
    second = trained_mopoe.recover(inputs, present, seed=4)
    assert not torch.equal(first["mnist"], second["mnist"])


def test_posterior_mean_needs_no_seed():
    card = mixed_card()
    recovery = build_recovery("mopoe", card, use_posterior_mean=True, **TINY["mopoe"])
    inputs = random_batch(card, 6, seed=1)
    present = random_present(6, 3, seed=2)
    first = recovery.recover(inputs, present)
    second = recovery.recover(inputs, present)
    for name in card.modality_names:
        assert torch.equal(first[name], second[name]), name


def test_complete_batch_returned_as_copy(trained_mopoe):
    card = trained_mopoe.card
    inputs = random_batch(card, 4, seed=1)
    present = torch.ones((4, 3), dtype=torch.bool)
    completed = trained_mopoe.recover(inputs, present, seed=0)
    for name in card.modality_names:
        assert torch.equal(completed[name], inputs[name]), name
        assert completed[name].data_ptr() != inputs[name].data_ptr(), name


def test_model_mode_restored_after_recover(trained_mopoe):
    card = trained_mopoe.card
    trained_mopoe.model.train()
    trained_mopoe.recover(random_batch(card, 4, 0), random_present(4, 3, 0), seed=0)
    assert trained_mopoe.model.training


def test_zeros_baseline_fills_zeros(card):
    recovery = build_recovery("zeros", card)
    inputs = random_batch(card, 8, seed=1)
    present = random_present(8, 3, seed=2)
    completed = recovery.recover(inputs, present)
    for index, name in enumerate(card.modality_names):
        missing = ~present[:, index]
        assert torch.equal(completed[name][missing], torch.zeros_like(inputs[name][missing]))


def test_noise_baseline_within_valid_range(card):
    recovery = build_recovery("noise", card)
    inputs = random_batch(card, 64, seed=1)
    present = torch.zeros((64, 3), dtype=torch.bool)
    present[:, 0] = True
    completed = recovery.recover(inputs, present, seed=0)
    assert completed["digits"].dtype == torch.uint8
    assert int(completed["digits"].max()) <= 16
    assert int(completed["text"].min()) >= 0
    assert int(completed["text"].max()) < len(card.modality("text").alphabet)
    # 64 x 8 uniform draws over 71 characters: more than 30 distinct values in practice.
    assert len(torch.unique(completed["text"])) > 30


def test_noise_baseline_tabular_range():
    from dymo_ray.data.spec import DatasetCard, ModalitySpec

    card = DatasetCard(
        name="tab",
        modalities=[
            ModalitySpec("a", "tabular", (5,), "float32", min_value=-2.0, max_value=3.0),
            ModalitySpec("b", "tabular", (3,), "float32", min_value=0.0, max_value=1.0),
        ],
        class_names=["no", "yes"],
    )
    recovery = NoiseRecovery(card)
    inputs = {"a": torch.zeros(50, 5), "b": torch.zeros(50, 3)}
    present = torch.tensor([[False, True]] * 50)
    values = recovery.recover(inputs, present, seed=1)["a"]
    assert values.dtype == torch.float32
    assert float(values.min()) >= -2.0
    assert float(values.max()) < 3.0


# ----- errors ---------------------------------------------------------------------------


def test_row_with_nothing_observed_rejected(card):
    recovery = build_recovery("zeros", card)
    present = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match=r"rows \[1\] of present have no observed modality"):
        recovery.recover(random_batch(card, 2, 0), present)


def test_wrong_modality_names_rejected(card):
    recovery = build_recovery("zeros", card)
    inputs = random_batch(card, 2, 0)
    inputs["svhn"] = inputs.pop("digits")
    with pytest.raises(ValueError, match="do not match dataset 'mixed'"):
        recovery.recover(inputs, torch.ones((2, 3), dtype=torch.bool))


def test_wrong_shape_rejected(card):
    recovery = build_recovery("zeros", card)
    inputs = random_batch(card, 2, 0)
    inputs["digits"] = torch.zeros((2, 1, 28, 28), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"'digits' has shape \(2, 1, 28, 28\), expected"):
        recovery.recover(inputs, torch.ones((2, 3), dtype=torch.bool))


def test_wrong_dtype_rejected(card):
    recovery = build_recovery("zeros", card)
    inputs = random_batch(card, 2, 0)
    inputs["mnist"] = inputs["mnist"].float()
    with pytest.raises(TypeError, match="storage dtype torch.uint8"):
        recovery.recover(inputs, torch.ones((2, 3), dtype=torch.bool))


def test_present_shape_rejected(card):
    recovery = build_recovery("zeros", card)
    with pytest.raises(ValueError, match=r"present must have shape \(B, 3\)"):
        recovery.recover(random_batch(card, 2, 0), torch.ones((2, 2), dtype=torch.bool))


def test_present_dtype_rejected(card):
    recovery = build_recovery("zeros", card)
    with pytest.raises(TypeError, match="present must be a bool tensor"):
        recovery.recover(random_batch(card, 2, 0), torch.ones((2, 3)))


def test_observed_text_outside_alphabet_rejected(card):
    recovery = build_recovery("zeros", card)
    inputs = random_batch(card, 2, 0)
    inputs["text"][0, 0] = 71
    with pytest.raises(ValueError, match=r"outside \[0, 71\)"):
        recovery.recover(inputs, torch.ones((2, 3), dtype=torch.bool))


def test_unknown_model_name_rejected(card):
    with pytest.raises(ValueError, match=r"valid names: .*did you mean 'mopoe'\?"):
        build_recovery("mopo", card)


def test_unknown_option_rejected(card):
    with pytest.raises(ValueError, match=r"unknown options \['num_clusters'\]"):
        build_recovery("mopoe", card, num_clusters=4)


def test_baseline_options_rejected(card):
    with pytest.raises(ValueError, match="takes no options"):
        build_recovery("zeros", card, latent_dim=4)


def test_invalid_option_value_rejected(card):
    with pytest.raises(ValueError, match="latent_dim must be >= 1"):
        build_recovery("mopoe", card, latent_dim=0)
