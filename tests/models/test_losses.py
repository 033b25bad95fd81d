"""Prototype losses, the encode-once subset loss against re-encoding, and subset sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from model_cards import mdt_card, polymnist_card, random_batch
from torch.nn.parallel import DistributedDataParallel

from dymo_ray.models.backbone import BackboneConfig, FusionBackbone
from dymo_ray.models.losses import (
    prototype_loss,
    prototype_scores,
    sample_subsets,
    subset_loss,
    subset_loss_reencode,
)
from dymo_ray.subsets import all_subsets

# ---------------------------------------------------------------- prototype loss by hand
#
# h1 = (1, 0), h2 = (0, 1), P0 = (1, 0), P1 = (0.6, 0.8), labels (0, 1), t = 0.5.
# cosine: s(h1) = (1, 0.6), s(h2) = (0, 0.8).
# euclidean: ||h1 - P||^2 = (0, 0.8), ||h2 - P||^2 = (2, 0.4), so s(h1) = (0, -0.8) and
# s(h2) = (-2, -0.4).
# With two classes, -log softmax(s / t)[y] = log(1 + exp(-(s_y - s_other) / t)).

EMBEDDING = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
PROTOTYPES = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
LABELS = torch.tensor([0, 1])


def two_class_loss(margin: float, temperature: float) -> float:
    return math.log1p(math.exp(-margin / temperature))


def test_prototype_scores_cosine():
    scores = prototype_scores(EMBEDDING, PROTOTYPES, "cosine")

    torch.testing.assert_close(scores, torch.tensor([[1.0, 0.6], [0.0, 0.8]]))


def test_prototype_scores_euclidean():
    scores = prototype_scores(EMBEDDING, PROTOTYPES, "euclidean")

    torch.testing.assert_close(scores, torch.tensor([[0.0, -0.8], [-2.0, -0.4]]))


def test_prototype_loss_cosine_by_hand():
    # Margins of the true class: 1 - 0.6 = 0.4 and 0.8 - 0 = 0.8.
    expected = (two_class_loss(0.4, 0.5) + two_class_loss(0.8, 0.5)) / 2

    loss = prototype_loss(EMBEDDING, LABELS, PROTOTYPES, "cosine", 0.5)

    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.2775, abs=1e-4)


def test_prototype_loss_euclidean_by_hand():
    # Margins of the true class: 0 - (-0.8) = 0.8 and -0.4 - (-2) = 1.6.
    expected = (two_class_loss(0.8, 0.5) + two_class_loss(1.6, 0.5)) / 2

    loss = prototype_loss(EMBEDDING, LABELS, PROTOTYPES, "euclidean", 0.5)

    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.1119, abs=1e-4)


def test_prototype_loss_bad_temperature():
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        prototype_loss(EMBEDDING, LABELS, PROTOTYPES, "cosine", 0)


def test_prototype_scores_unknown_metric():
    with pytest.raises(ValueError, match=r"'l1' is not one of \['cosine', 'euclidean'\]"):
        prototype_scores(EMBEDDING, PROTOTYPES, "l1")


# ---------------------------------------------------------------- encode once vs re-encode


def build_model(card, metric: str, seed: int = 0) -> FusionBackbone:
    torch.manual_seed(seed)
    return FusionBackbone(card, BackboneConfig.for_card(card, metric=metric))


def class_prototypes(model: FusionBackbone, inputs, labels, generator) -> torch.Tensor:
    """Prototypes as training builds them: class means of h over a few random subsets."""
    subsets = sample_subsets(model.num_modalities, 3, generator)
    with torch.no_grad():
        _, embeddings = model(inputs, subsets=subsets)
    flat = embeddings.reshape(-1, embeddings.shape[-1])
    repeated = labels.repeat(subsets.shape[0])
    sums = torch.zeros(model.card.num_classes, flat.shape[1]).index_add_(0, repeated, flat)
    counts = torch.bincount(repeated, minlength=model.card.num_classes).clamp(min=1)
    return sums / counts.unsqueeze(1)


def loss_and_gradients(loss_fn, model, *args, **kwargs):
    model.zero_grad()
    output = loss_fn(model, *args, **kwargs)
    output.loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters()}
    return output, gradients


@pytest.mark.parametrize("num_subsets_drawn", [1, 2, 5])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("card_name", ["polymnist", "mdt"])
@pytest.mark.parametrize("token_dropping", [False, True])
def test_encode_once_matches_reencode(
    card_name, metric, num_subsets_drawn, token_dropping, generator
):
    """Loss, parts and every gradient of encode-once equal re-encoding per subset.

    With token_dropping=False the reference also runs the fusion on all tokens with masked
    keys, so this checks both exact savings of encode-once training at the same time.
    """
    card = polymnist_card() if card_name == "polymnist" else mdt_card()
    model = build_model(card, metric)
    inputs = random_batch(card, 8, generator)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    prototypes = class_prototypes(model, inputs, labels, generator)
    subsets = sample_subsets(card.num_modalities, num_subsets_drawn, generator)
    args = (inputs, labels, subsets, prototypes)
    settings = {"aux_weight": 0.7, "temperature": 0.1, "aux_enabled": True}

    fast, fast_gradients = loss_and_gradients(subset_loss, model, *args, **settings)
    slow, slow_gradients = loss_and_gradients(
        subset_loss_reencode, model, *args, **settings, token_dropping=token_dropping
    )

    assert fast.aux.item() > 0.01  # the prototypes are non-trivial
    torch.testing.assert_close(fast.loss, slow.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.ce, slow.ce, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.aux, slow.aux, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.embeddings, slow.embeddings, atol=1e-5, rtol=0)
    for name in slow_gradients:
        torch.testing.assert_close(
            fast_gradients[name], slow_gradients[name], atol=1e-5, rtol=0, msg=name
        )


def test_subset_loss_parts_by_definition(generator):
    """loss = mean over subsets of CE + aux_weight * mean over subsets of prototype loss."""
    card = mdt_card()
    model = build_model(card, "euclidean")
    inputs = random_batch(card, 4, generator)
    labels = torch.tensor([0, 1, 2, 3])
    # Small prototypes keep the euclidean scores, and so the loss, of order 1.
    prototypes = 0.1 * torch.randn(10, model.config.projection_dim, generator=generator)
    subsets = all_subsets(3)[[0, 4, 6]]

    output = subset_loss(model, inputs, labels, subsets, prototypes, 0.5, 0.1, True)

    with torch.no_grad():
        ce_terms, aux_terms = [], []
        for subset in subsets:
            logits, embedding = model(inputs, subset=subset)
            ce_terms.append(torch.nn.functional.cross_entropy(logits, labels))
            aux_terms.append(prototype_loss(embedding, labels, prototypes, "euclidean", 0.1))
    expected_ce = torch.stack(ce_terms).mean()
    expected_aux = torch.stack(aux_terms).mean()

    torch.testing.assert_close(output.ce, expected_ce, atol=1e-6, rtol=0)
    torch.testing.assert_close(output.aux, expected_aux, atol=1e-6, rtol=0)
    expected_loss = expected_ce + 0.5 * expected_aux
    torch.testing.assert_close(output.loss.detach(), expected_loss, atol=1e-6, rtol=0)
    assert output.embeddings.shape == (3, 4, model.config.projection_dim)
    assert not output.embeddings.requires_grad


def test_subset_loss_aux_disabled(generator):
    """Before the aux start epoch the prototype loss is reported but not added."""
    card = mdt_card()
    model = build_model(card, "cosine")
    inputs = random_batch(card, 4, generator)
    labels = torch.tensor([0, 1, 2, 3])
    prototypes = torch.randn(10, model.config.projection_dim, generator=generator)

    output = subset_loss(model, inputs, labels, all_subsets(3)[:2], prototypes, 1.0, 0.1, False)

    torch.testing.assert_close(output.loss.detach(), output.ce, atol=0, rtol=0)
    assert output.aux is not None
    assert output.aux.item() > 0


def test_subset_loss_without_prototypes(generator):
    """Epoch 0 has no prototypes; the projection head still gets a (zero) gradient."""
    card = mdt_card()
    model = build_model(card, "cosine")
    inputs = random_batch(card, 4, generator)
    labels = torch.tensor([0, 1, 2, 3])

    output = subset_loss(model, inputs, labels, all_subsets(3)[:2], None, 1.0, 0.1, False)
    output.loss.backward()

    assert output.aux is None
    torch.testing.assert_close(output.loss.detach(), output.ce, atol=0, rtol=0)
    assert torch.equal(model.projection.weight.grad, torch.zeros_like(model.projection.weight))


def test_subset_loss_aux_needs_prototypes(generator):
    card = mdt_card()
    model = build_model(card, "cosine")
    inputs = random_batch(card, 2, generator)

    with pytest.raises(ValueError, match="aux_enabled needs prototypes"):
        subset_loss(model, inputs, torch.tensor([0, 1]), all_subsets(3)[:1], None, 1.0, 0.1, True)


def test_subset_loss_label_shape_checked(generator):
    card = mdt_card()
    model = build_model(card, "cosine")
    inputs = random_batch(card, 2, generator)

    with pytest.raises(ValueError, match=r"labels must have shape \(2,\), got \(3,\)"):
        subset_loss(
            model, inputs, torch.tensor([0, 1, 2]), all_subsets(3)[:1], None, 1.0, 0.1, False
        )


def test_subset_loss_under_ddp(tmp_path, generator):
    """A DDP-wrapped model trains through subset_loss, and gradients equal the plain model's.

    With A = 1 most encoders feed no kept token. DDP without find_unused_parameters raises on
    the second step unless every parameter received a gradient (checked with torch 2.14).
    """
    card = mdt_card()
    inputs = random_batch(card, 4, generator)
    labels = torch.tensor([0, 1, 2, 3])
    subset = all_subsets(3)[:1]
    plain = build_model(card, "cosine")
    _, plain_gradients = loss_and_gradients(
        subset_loss, plain, inputs, labels, subset, None, 1.0, 0.1, False
    )

    # A file store keeps the single-process group off the network.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(build_model(card, "cosine"))
        for _ in range(2):
            _, ddp_gradients = loss_and_gradients(
                subset_loss, wrapped, inputs, labels, subset, None, 1.0, 0.1, False
            )
    finally:
        dist.destroy_process_group()

    for name, gradient in plain_gradients.items():
        torch.testing.assert_close(ddp_gradients[f"module.{name}"], gradient, msg=name)


# ---------------------------------------------------------------- sample_subsets


def test_sample_subsets_distinct_non_empty(generator):
    subsets = sample_subsets(5, 31, generator)

    assert subsets.shape == (31, 5)
    assert subsets.dtype == torch.bool
    assert bool(subsets.any(dim=1).all())
    assert len({tuple(row.tolist()) for row in subsets}) == 31


def test_sample_subsets_reproducible():
    first = sample_subsets(5, 5, torch.Generator().manual_seed(7))
    second = sample_subsets(5, 5, torch.Generator().manual_seed(7))

    assert torch.equal(first, second)


def test_sample_subsets_covers_all(generator):
    """Uniform draws of one subset reach every one of the 2^M - 1 subsets."""
    seen = {tuple(sample_subsets(3, 1, generator)[0].tolist()) for _ in range(200)}

    assert len(seen) == 7


@pytest.mark.parametrize("count", [0, 32])
def test_sample_subsets_count_out_of_range(count):
    with pytest.raises(ValueError, match=r"valid range: 1\.\.31"):
        sample_subsets(5, count)
