"""Every multivae adapter builds, trains a step and recovers on a mixed and a PolyMNIST card."""

from __future__ import annotations

import pytest
import torch
from recovery_helpers import TINY, mixed_card, poly_card, random_batch, random_present

from dymo_ray.data.spec import DatasetCard, ModalitySpec
from dymo_ray.recovery import build_recovery, train_recovery_epoch
from dymo_ray.recovery.architectures import RecoveryDecoder, RecoveryEncoder
from dymo_ray.recovery.multivae_adapter import likelihood_terms

CARDS = {"mixed": mixed_card, "poly": poly_card}


@pytest.mark.parametrize("card_name", sorted(CARDS))
@pytest.mark.parametrize("model_name", sorted(TINY))
def test_adapter_trains_and_recovers(model_name, card_name):
    card = CARDS[card_name]()
    recovery = build_recovery(model_name, card, **TINY[model_name])
    before = [p.detach().clone() for p in recovery.model.parameters()]
    optimizer = torch.optim.Adam(recovery.model.parameters(), lr=1e-3)

    terms = train_recovery_epoch(
        recovery, [random_batch(card, 6, seed) for seed in range(2)], optimizer
    )

    assert torch.isfinite(torch.tensor(terms["loss"]))
    changed = [not torch.equal(a, b) for a, b in zip(before, recovery.model.parameters())]
    assert any(changed)

    present = random_present(6, card.num_modalities, seed=3)
    completed = recovery.recover(random_batch(card, 6, seed=4), present, seed=0)
    for spec in card.modalities:
        values = completed[spec.name]
        assert values.shape == (6, *spec.shape), spec.name
        assert values.dtype == random_batch(card, 1, 0)[spec.name].dtype, spec.name
        assert int(values.min()) >= 0, spec.name
        upper = spec.vocab_size - 1 if spec.kind == "text" else spec.max_value
        assert int(values.max()) <= upper, spec.name


def test_mopoe_logs_terms_per_modality():
    card = mixed_card()
    recovery = build_recovery("mopoe", card, **TINY["mopoe"])
    _, terms = recovery.loss(random_batch(card, 4, seed=0))
    assert sorted(terms) == ["kl", "loss", "recon/digits", "recon/mnist", "recon/text"]


def test_text_likelihood_is_categorical():
    card = mixed_card()
    recovery = build_recovery("mopoe", card, **TINY["mopoe"])
    distributions = recovery.model.model_config.decoders_dist
    assert distributions == {"m0": "laplace", "m1": "laplace", "m2": "categorical"}


def test_rescale_factors_equalise_terms():
    """784 pixels, 64 pixels and 8 text positions: factors 1, 12.25 and 98."""
    card = mixed_card()
    assert [likelihood_terms(spec) for spec in card.modalities] == [784, 64, 8]
    recovery = build_recovery("mopoe", card, **TINY["mopoe"])
    assert recovery.model.rescale_factors == {"m0": 1.0, "m1": 12.25, "m2": 98.0}


def test_poly_rescale_factors_are_one():
    recovery = build_recovery("mopoe", poly_card(), **TINY["mopoe"])
    assert set(recovery.model.rescale_factors.values()) == {1.0}


def test_authors_settings_are_defaults():
    card = poly_card()
    mmvae = build_recovery("mmvae_plus", card).model.model_config
    assert (mmvae.latent_dim, mmvae.modalities_specific_dim, mmvae.beta, mmvae.K) == (
        32,
        32,
        2.5,
        1,
    )
    assert mmvae.decoder_dist_params["m0"] == {"scale": 0.75}
    cmvae = build_recovery("cmvae", card).model.model_config
    assert cmvae.number_of_clusters == 40
    assert cmvae.loss == "iwae_looser"


def test_same_init_seed_same_weights():
    card = mixed_card()
    first = build_recovery("cmvae", card, **TINY["cmvae"]).model.state_dict()
    second = build_recovery("cmvae", card, **TINY["cmvae"]).model.state_dict()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_mopoe_rejects_style_dim():
    with pytest.raises(ValueError, match="style_dim applies to mmvae_plus and cmvae"):
        build_recovery("mopoe", mixed_card(), style_dim=4)


def test_mmvae_plus_requires_style_dim():
    with pytest.raises(ValueError, match="needs a modality-specific latent"):
        build_recovery("mmvae_plus", mixed_card(), style_dim=0)


@pytest.mark.parametrize("shape", [(3, 28, 28), (1, 8, 8), (2, 30, 17), (1, 3, 5)])
def test_image_networks_round_trip_shape(shape):
    spec = ModalitySpec("x", "image", shape, "uint8")
    encoder = RecoveryEncoder(spec, latent_dim=6, style_dim=2, hidden_dim=16)
    decoder = RecoveryDecoder(spec, input_dim=8, hidden_dim=16)
    encoded = encoder(torch.rand(4, *shape))
    assert encoded.embedding.shape == (4, 6)
    assert encoded.style_log_covariance.shape == (4, 2)
    # multivae decodes (K, B, latent) samples after flattening; keep any leading dims.
    assert decoder(torch.rand(3, 4, 8)).reconstruction.shape == (3, 4, *shape)


def test_text_decoder_emits_logits_per_position():
    spec = mixed_card().modality("text")
    decoder = RecoveryDecoder(spec, input_dim=8, hidden_dim=16)
    assert decoder(torch.rand(5, 8)).reconstruction.shape == (5, 8, 71)


def test_tabular_card_trains_and_recovers():
    card = DatasetCard(
        name="tab",
        modalities=[
            ModalitySpec("a", "tabular", (5,), "float32", min_value=-1.0, max_value=1.0),
            ModalitySpec("b", "image", (1, 8, 8), "uint8"),
        ],
        class_names=["no", "yes"],
    )
    recovery = build_recovery("mopoe", card, **TINY["mopoe"])
    optimizer = torch.optim.Adam(recovery.model.parameters(), lr=1e-3)
    batch = {"a": torch.rand(4, 5) * 2 - 1, "b": torch.randint(0, 256, (4, 1, 8, 8)).byte()}
    train_recovery_epoch(recovery, [batch], optimizer)
    present = torch.tensor([[False, True]] * 4)
    values = recovery.recover(batch, present, seed=0)["a"]
    assert values.dtype == torch.float32
    assert float(values.min()) >= -1.0
    assert float(values.max()) <= 1.0
