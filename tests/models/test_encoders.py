"""Encoders per modality kind: token counts, shapes, input scaling and presence masks."""

from __future__ import annotations

import pytest
import torch
from model_cards import mdt_card, polymnist_card, random_batch

from dymo_ray.data.spec import MOPOE_ALPHABET, DatasetCard, ModalitySpec
from dymo_ray.models.backbone import FusionBackbone
from dymo_ray.models.encoders import build_encoder

WIDTH = 16


def image_spec(shape: tuple[int, int, int], max_value: float = 255.0) -> ModalitySpec:
    return ModalitySpec("img", "image", shape, "uint8", max_value=max_value)


# Token counts derived by hand. A stride-2 stage maps a side s to ceil(s / 2), and stages stop
# before a side would drop below 2. The 2x2 pool runs only on a grid of at least 4x4.
@pytest.mark.parametrize(
    ("shape", "grid", "tokens"),
    [
        ((3, 28, 28), (2, 2), 4),  # 28 -> 14 -> 7 -> 4, pool -> 2
        ((1, 28, 28), (2, 2), 4),
        ((1, 8, 8), (2, 2), 4),  # 8 -> 4 -> 2, a third stage would give 1, no pool
        ((1, 3, 3), (2, 2), 4),  # 3 -> 2, one stage only
        ((1, 1, 5), (1, 5), 5),  # a side of 1 allows no stage: the pixels are the tokens
        ((3, 64, 64), (4, 4), 16),  # 64 -> 32 -> 16 -> 8, pool -> 4
    ],
)
def test_image_encoder_token_grid(shape, grid, tokens, generator):
    encoder = build_encoder(image_spec(shape), WIDTH)
    images = torch.randint(0, 256, (2, *shape), generator=generator, dtype=torch.uint8)

    out = encoder(images)

    assert encoder.grid_size == grid
    assert encoder.num_tokens == tokens
    assert out.shape == (2, tokens, WIDTH)


def test_image_encoder_polymnist_layers():
    encoder = build_encoder(image_spec((3, 28, 28)), 128)
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]

    assert [c.out_channels for c in convs] == [32, 64, 128, 128]
    assert [c.stride for c in convs] == [(2, 2)] * 3 + [(1, 1)]
    assert sum(p.numel() for p in encoder.parameters()) == 109_760


def test_image_encoder_float_matches_uint8(generator):
    """Recovered images arrive as float in [0, max_value] and must encode like stored ones."""
    encoder = build_encoder(image_spec((1, 8, 8), max_value=16.0), WIDTH)
    images = torch.randint(0, 17, (3, 1, 8, 8), generator=generator, dtype=torch.uint8)

    torch.testing.assert_close(encoder(images.float()), encoder(images), atol=0, rtol=0)


def test_image_encoder_scales_by_max_value(generator):
    """A 0..16 image (UCI digits) is scaled by 1/16, not by 1/255."""
    encoder = build_encoder(image_spec((1, 8, 8), max_value=16.0), WIDTH)
    images = torch.randint(0, 17, (3, 1, 8, 8), generator=generator, dtype=torch.uint8)

    expected = encoder.net(images.float() / 16.0).flatten(2).transpose(1, 2)

    torch.testing.assert_close(encoder(images), expected)


@pytest.mark.parametrize(("length", "tokens"), [(8, 2), (4, 2), (3, 1), (1, 1)])
def test_text_encoder_token_count(length, tokens, generator):
    spec = ModalitySpec("text", "text", (length,), "int64", alphabet=MOPOE_ALPHABET)
    encoder = build_encoder(spec, WIDTH)
    chars = torch.randint(0, len(MOPOE_ALPHABET), (5, length), generator=generator)

    out = encoder(chars)

    assert encoder.num_tokens == tokens
    assert out.shape == (5, tokens, WIDTH)


def test_text_encoder_index_out_of_range():
    spec = ModalitySpec("caption", "text", (8,), "int64", alphabet="abc")
    encoder = build_encoder(spec, WIDTH)

    with pytest.raises(ValueError, match=r"'caption'.*\[0, 3\)"):
        encoder(torch.full((2, 8), 3))


def test_text_encoder_float_input_rejected():
    spec = ModalitySpec("caption", "text", (8,), "int64", alphabet="abc")
    encoder = build_encoder(spec, WIDTH)

    with pytest.raises(ValueError, match="'caption'.*integer"):
        encoder(torch.zeros(2, 8))


def test_tabular_encoder_token_per_feature():
    spec = ModalitySpec("labs", "tabular", (3,), "float32")
    encoder = build_encoder(spec, 2)
    with torch.no_grad():
        encoder.feature_weight.copy_(torch.tensor([[1.0, 2.0], [0.5, 0.0], [-1.0, 1.0]]))
        encoder.feature_bias.copy_(torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))
    values = torch.tensor([[2.0, 4.0, -3.0]])

    # token_f = value_f * weight_f + bias_f
    expected = torch.tensor([[[2.0, 5.0], [3.0, 1.0], [3.0, -3.0]]])

    assert encoder.num_tokens == 3
    torch.testing.assert_close(encoder(values), expected)


def test_tabular_encoder_absent_features_zeroed():
    """An absent feature stored as NaN must give a zero token and leave the others finite."""
    spec = ModalitySpec("labs", "tabular", (3,), "float32")
    encoder = build_encoder(spec, 4)
    values = torch.tensor([[1.0, float("nan"), 2.0], [float("nan"), 0.5, 3.0]])
    present = torch.tensor([[True, False, True], [False, True, True]])

    out = encoder(values, present)
    reference = encoder(torch.nan_to_num(values))

    assert torch.isfinite(out).all()
    assert torch.equal(out[~present], torch.zeros(2, 4))
    torch.testing.assert_close(out[present], reference[present], atol=0, rtol=0)


def test_tabular_encoder_presence_shape_checked():
    spec = ModalitySpec("labs", "tabular", (3,), "float32")
    encoder = build_encoder(spec, 4)

    with pytest.raises(ValueError, match="'labs'.*feature_present"):
        encoder(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool))


def test_build_encoder_bad_width():
    with pytest.raises(ValueError, match="width must be >= 1"):
        build_encoder(image_spec((1, 8, 8)), 0)


def test_encode_tabular_presence_through_backbone(generator):
    """Per-feature presence passed to encode reaches the tabular encoder."""
    card = DatasetCard(
        "tab",
        [
            ModalitySpec("img", "image", (1, 8, 8), "uint8"),
            ModalitySpec("labs", "tabular", (3,), "float32"),
        ],
        ["a", "b"],
    )
    model = FusionBackbone(card)
    inputs = random_batch(card, 2, generator)
    present = torch.tensor([[True, False, True], [True, True, True]])
    changed = {**inputs, "labs": inputs["labs"].clone()}
    changed["labs"][0, 1] = float("nan")

    tokens = model.encode(inputs, {"labs": present})
    tokens_changed = model.encode(changed, {"labs": present})

    assert tokens.shape == (2, 4 + 3, model.config.width)
    torch.testing.assert_close(tokens_changed, tokens, atol=0, rtol=0)


def test_encode_missing_modality_named(generator):
    card = mdt_card()
    model = FusionBackbone(card)
    inputs = random_batch(card, 2, generator)
    del inputs["digits"]

    with pytest.raises(ValueError, match="modality 'digits' is missing"):
        model.encode(inputs)


def test_encode_wrong_shape_named(generator):
    card = polymnist_card()
    model = FusionBackbone(card)
    inputs = random_batch(card, 2, generator)
    inputs["m3"] = inputs["m3"][:, :1]

    with pytest.raises(ValueError, match=r"'m3' has shape \(2, 1, 28, 28\).*\(batch, 3, 28, 28\)"):
        model.encode(inputs)


def test_encode_batch_size_mismatch_named(generator):
    card = mdt_card()
    model = FusionBackbone(card)
    inputs = random_batch(card, 2, generator)
    inputs["text"] = inputs["text"][:1]

    with pytest.raises(ValueError, match="'text' has batch size 1"):
        model.encode(inputs)
