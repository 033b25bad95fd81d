"""Fusion backbone: sizes, masking invariance, and token dropping against the masked path."""

from __future__ import annotations

import pytest
import torch
from model_cards import mdt_card, polymnist_card, random_batch

from dymo_ray.data.spec import DatasetCard
from dymo_ray.models.backbone import Attention, BackboneConfig, FusionBackbone
from dymo_ray.subsets import all_subsets

CARDS = {"polymnist": polymnist_card, "mdt": mdt_card}


def build_model(card: DatasetCard, metric: str = "cosine", seed: int = 0) -> FusionBackbone:
    torch.manual_seed(seed)
    return FusionBackbone(card, BackboneConfig.for_card(card, metric=metric)).eval()


def perturb_outside(
    card: DatasetCard,
    inputs: dict[str, torch.Tensor],
    subsets: torch.Tensor,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Redraw the input of every (row, modality) that is outside that row's subset."""
    fresh = random_batch(card, subsets.shape[0], generator)
    changed = {}
    for index, spec in enumerate(card.modalities):
        outside = ~subsets[:, index]
        changed[spec.name] = torch.where(
            outside.reshape(-1, *[1] * len(spec.shape)), fresh[spec.name], inputs[spec.name]
        )
    return changed


# ---------------------------------------------------------------- sizes


def test_polymnist_token_counts():
    model = build_model(polymnist_card())

    assert model.token_counts == [4, 4, 4, 4, 4]
    assert model.num_tokens == 20
    assert model.position_embedding.shape == (1, 21, 128)


def test_mdt_token_counts():
    model = build_model(mdt_card())

    # mnist 1x28x28: 4 tokens, digits 1x8x8: 4 tokens, text of 8 characters: 2 tokens.
    assert model.token_counts == [4, 4, 2]
    assert model.position_embedding.shape == (1, 11, 64)


def test_polymnist_parameter_count():
    """958,858 worked out by hand for the default PolyMNIST backbone.

    Per image encoder: convs 896 + 18,496 + 73,856, 1x1 conv 16,512 = 109,760; five of them
    548,800. Per-modality LayerNorms 5 * 256 = 1,280. Modality embedding 640, CLS 128,
    positions 21 * 128 = 2,688. Per block: 2 LayerNorms 512, qkv 49,152, out-proj 16,512,
    MLP 66,048 + 65,664 = 197,888; two blocks 395,776. Classifier 1,290, projection 8,256.
    """
    model = build_model(polymnist_card())

    assert model.num_parameters() == 958_858


def test_for_card_polymnist_defaults():
    config = BackboneConfig.for_card(polymnist_card())

    assert (config.width, config.heads, config.blocks, config.projection_dim) == (128, 4, 2, 64)


def test_for_card_smaller_defaults():
    config = BackboneConfig.for_card(mdt_card(), metric="euclidean")

    assert (config.width, config.heads, config.blocks, config.projection_dim) == (64, 2, 2, 32)
    assert config.metric == "euclidean"


def test_config_unknown_metric():
    with pytest.raises(ValueError, match=r"metric 'dot' is not one of \['cosine', 'euclidean'\]"):
        BackboneConfig(metric="dot")


def test_config_heads_must_divide_width():
    with pytest.raises(ValueError, match=r"heads \(3\) must divide width \(128\)"):
        BackboneConfig(heads=3)


def test_config_from_dict_unknown_key():
    with pytest.raises(ValueError, match=r"unknown backbone config keys \['depth'\]"):
        BackboneConfig.from_dict({"depth": 3})


def test_config_round_trip():
    config = BackboneConfig(width=32, heads=2, metric="euclidean")

    assert BackboneConfig.from_dict(config.to_dict()) == config


# ---------------------------------------------------------------- masking invariance


@pytest.mark.parametrize("card_name", sorted(CARDS))
def test_invariance_shared_subsets(card_name, generator):
    """Inputs of modalities outside a shared subset must not change logits or embedding."""
    card = CARDS[card_name]()
    model = build_model(card, metric="cosine" if card_name == "polymnist" else "euclidean")
    inputs = random_batch(card, 3, generator)

    with torch.no_grad():
        for subset in all_subsets(card.num_modalities):
            changed = perturb_outside(card, inputs, subset.expand(3, -1), generator)
            logits, embedding = model(inputs, subset=subset)
            logits_changed, embedding_changed = model(changed, subset=subset)

            torch.testing.assert_close(logits_changed, logits, atol=1e-6, rtol=0)
            torch.testing.assert_close(embedding_changed, embedding, atol=1e-6, rtol=0)


@pytest.mark.parametrize("card_name", sorted(CARDS))
def test_invariance_per_row_subsets(card_name, generator):
    """One row per subset, each row's unused modalities redrawn: no output may move."""
    card = CARDS[card_name]()
    model = build_model(card, metric="cosine" if card_name == "polymnist" else "euclidean")
    subsets = all_subsets(card.num_modalities)
    inputs = random_batch(card, subsets.shape[0], generator)
    changed = perturb_outside(card, inputs, subsets, generator)

    with torch.no_grad():
        logits, embedding = model(inputs, subset=subsets)
        logits_changed, embedding_changed = model(changed, subset=subsets)

    torch.testing.assert_close(logits_changed, logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(embedding_changed, embedding, atol=1e-6, rtol=0)


@pytest.mark.parametrize("card_name", sorted(CARDS))
def test_invariance_full_masked_path(card_name, generator):
    """The reference masked path hides the unused modalities too (zeroed tokens, -1e9 keys)."""
    card = CARDS[card_name]()
    model = build_model(card)
    subsets = all_subsets(card.num_modalities)
    inputs = random_batch(card, subsets.shape[0], generator)
    changed = perturb_outside(card, inputs, subsets, generator)

    with torch.no_grad():
        logits, embedding = model._fuse_full_masked(model.encode(inputs), subsets)
        logits_changed, embedding_changed = model._fuse_full_masked(model.encode(changed), subsets)

    torch.testing.assert_close(logits_changed, logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(embedding_changed, embedding, atol=1e-6, rtol=0)


def test_inputs_inside_subset_matter(generator):
    """Guards the invariance tests against a model whose output ignores its inputs."""
    card = mdt_card()
    model = build_model(card)
    inputs = random_batch(card, 3, generator)
    subset = torch.tensor([True, False, True])
    changed = perturb_outside(card, inputs, torch.tensor([[False, True, True]] * 3), generator)

    with torch.no_grad():
        logits, _ = model(inputs, subset=subset)
        logits_changed, _ = model(changed, subset=subset)

    assert (logits_changed - logits).abs().max() > 1e-4


# ---------------------------------------------------------------- token dropping


@pytest.mark.parametrize("card_name", sorted(CARDS))
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_token_dropping_matches_masked_shared(card_name, metric, generator):
    card = CARDS[card_name]()
    model = build_model(card, metric=metric)
    inputs = random_batch(card, 4, generator)

    with torch.no_grad():
        tokens = model.encode(inputs)
        for subset in all_subsets(card.num_modalities):
            logits, embedding = model.fuse(tokens, subset)
            logits_full, embedding_full = model._fuse_full_masked(tokens, subset)

            torch.testing.assert_close(logits, logits_full, atol=1e-5, rtol=0)
            torch.testing.assert_close(embedding, embedding_full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("card_name", sorted(CARDS))
def test_token_dropping_matches_masked_per_row(card_name, generator):
    """Rows are shuffled so that groups of equal token count are not contiguous."""
    card = CARDS[card_name]()
    model = build_model(card)
    subsets = all_subsets(card.num_modalities)
    shuffle = torch.randperm(2 * subsets.shape[0], generator=generator)
    subsets = torch.cat([subsets, subsets])[shuffle]
    inputs = random_batch(card, subsets.shape[0], generator)

    with torch.no_grad():
        tokens = model.encode(inputs)
        logits, embedding = model.fuse(tokens, subsets)
        logits_full, embedding_full = model._fuse_full_masked(tokens, subsets)

    torch.testing.assert_close(logits, logits_full, atol=1e-5, rtol=0)
    torch.testing.assert_close(embedding, embedding_full, atol=1e-5, rtol=0)


def test_per_row_equals_shared_when_rows_agree(generator):
    card = mdt_card()
    model = build_model(card)
    inputs = random_batch(card, 4, generator)
    subset = torch.tensor([False, True, True])

    with torch.no_grad():
        tokens = model.encode(inputs)
        logits_rows, _ = model.fuse(tokens, subset.expand(4, -1))
        logits_shared, _ = model.fuse(tokens, subset)

    torch.testing.assert_close(logits_rows, logits_shared, atol=1e-6, rtol=0)


def test_per_row_gradients_match_masked(generator):
    card = mdt_card()
    model = build_model(card, metric="euclidean").train()
    subsets = all_subsets(card.num_modalities)
    inputs = random_batch(card, subsets.shape[0], generator)

    def gradients(fuse) -> dict[str, torch.Tensor]:
        model.zero_grad()
        logits, embedding = fuse(model.encode(inputs), subsets)
        (logits.square().sum() + embedding.sum()).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    fast = gradients(model.fuse)
    full = gradients(model._fuse_full_masked)

    for name in full:
        torch.testing.assert_close(fast[name], full[name], atol=1e-5, rtol=0, msg=name)


# ---------------------------------------------------------------- outputs and errors


def test_cosine_embedding_unit_norm(generator):
    card = mdt_card()
    model = build_model(card, metric="cosine")
    inputs = random_batch(card, 4, generator)

    with torch.no_grad():
        _, embedding = model(inputs, subset=torch.tensor([True, True, False]))

    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(4))


def test_euclidean_embedding_raw(generator):
    card = mdt_card()
    model = build_model(card, metric="euclidean")
    inputs = random_batch(card, 4, generator)
    subset = torch.tensor([True, True, False])

    with torch.no_grad():
        _, embedding = model(inputs, subset=subset)
        cls_output = model._cls_output_shared(model.encode(inputs), subset)

    torch.testing.assert_close(embedding, model.projection(cls_output))


def test_forward_subsets_shapes(generator):
    card = polymnist_card()
    model = build_model(card)
    inputs = random_batch(card, 3, generator)
    subsets = all_subsets(5)[[0, 7, 30]]

    with torch.no_grad():
        logits, embeddings = model(inputs, subsets=subsets)
        logits_one, embedding_one = model(inputs, subset=subsets[1])

    assert logits.shape == (3, 3, 10)
    assert embeddings.shape == (3, 3, 64)
    torch.testing.assert_close(logits[1], logits_one)
    torch.testing.assert_close(embeddings[1], embedding_one)


def test_forward_needs_one_subset_argument(generator):
    card = mdt_card()
    model = build_model(card)
    inputs = random_batch(card, 2, generator)

    with pytest.raises(ValueError, match="exactly one of subset"):
        model(inputs)
    with pytest.raises(ValueError, match="exactly one of subset"):
        model(
            inputs,
            subset=torch.ones(3, dtype=torch.bool),
            subsets=torch.ones(1, 3, dtype=torch.bool),
        )


def test_fuse_empty_subset_rejected(generator):
    card = mdt_card()
    model = build_model(card)
    tokens = model.encode(random_batch(card, 2, generator))

    with pytest.raises(ValueError, match="subset row is empty"):
        model.fuse(tokens, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="subset row is empty"):
        model.fuse(tokens, torch.tensor([[True, False, False], [False, False, False]]))


def test_fuse_subset_shape_checked(generator):
    card = mdt_card()
    model = build_model(card)
    tokens = model.encode(random_batch(card, 2, generator))

    with pytest.raises(ValueError, match=r"shape \(3,\) or \(2, 3\), got \(4,\)"):
        model.fuse(tokens, torch.ones(4, dtype=torch.bool))


def test_fuse_subset_dtype_checked(generator):
    card = mdt_card()
    model = build_model(card)
    tokens = model.encode(random_batch(card, 2, generator))

    with pytest.raises(ValueError, match="bool tensor"):
        model.fuse(tokens, torch.ones(3))


def test_fuse_token_shape_checked():
    model = build_model(mdt_card())

    with pytest.raises(ValueError, match=r"tokens must have shape \(batch, 10, 64\)"):
        model.fuse(torch.zeros(2, 9, 64), torch.ones(3, dtype=torch.bool))


def test_forward_subsets_shape_checked(generator):
    card = mdt_card()
    model = build_model(card)
    inputs = random_batch(card, 2, generator)

    with pytest.raises(ValueError, match=r"subsets must have shape \(A, 3\) with A >= 1, got \(3,\)"):
        model(inputs, subsets=torch.ones(3, dtype=torch.bool))


def test_attention_first_queries_match_full(generator):
    attention = Attention(width=16, heads=4)
    x = torch.randn(3, 7, 16, generator=generator)
    full = attention(x)

    for queries in (1, 3, 7):
        assert torch.allclose(attention(x, queries=queries), full[:, :queries], atol=1e-6)


@pytest.mark.parametrize("queries", [0, -1, 8])
def test_attention_queries_out_of_range(queries):
    attention = Attention(width=16, heads=4)

    with pytest.raises(ValueError, match=rf"between 1 and the 7 positions of x, got {queries}"):
        attention(torch.zeros(2, 7, 16), queries=queries)
