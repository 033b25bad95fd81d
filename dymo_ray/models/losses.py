"""Prototype scores and losses, and the incomplete-simulation subset loss.

Incomplete-simulation training runs each batch under A subsets drawn from the 2^M - 1
non-empty ones. The loss is the mean over subsets of the cross-entropy plus `aux_weight`
times the mean over subsets of the prototype loss: the cross-entropy of
softmax_c(s(h, P_c) / temperature), with class prototypes P from the previous epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dymo_ray.models.backbone import METRICS, FusionBackbone
from dymo_ray.subsets import all_subsets, num_subsets


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {list(METRICS)}")


def prototype_scores(
    embedding: torch.Tensor, prototypes: torch.Tensor, metric: str
) -> torch.Tensor:
    """Score embeddings against class prototypes.

    Args:
        embedding: h (B, D).
        prototypes: P (C, D). In cosine mode they are class means of unit vectors and are
            not renormalised.
        metric: "cosine": s = <h, P_c>. "euclidean": s = -||h - P_c||^2.

    Returns:
        Scores (B, C); higher means closer.

    Raises:
        ValueError: unknown metric.
    """
    _check_metric(metric)
    dot = embedding @ prototypes.T
    if metric == "cosine":
        return dot
    # ||h - p||^2 = ||h||^2 - 2 <h, p> + ||p||^2, without a (B, C, D) intermediate.
    squared_distance = (
        embedding.pow(2).sum(dim=-1, keepdim=True) - 2 * dot + prototypes.pow(2).sum(dim=-1)
    )
    return -squared_distance


def prototype_loss(
    embedding: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    metric: str,
    temperature: float,
) -> torch.Tensor:
    """Compute the cross-entropy of softmax_c(s(h, P_c) / temperature) against the labels.

    Args:
        embedding: h (B, D).
        labels: Class indices (B,).
        prototypes: P (C, D).
        metric: "cosine" or "euclidean", see `prototype_scores`.
        temperature: t > 0.

    Returns:
        Scalar mean over the batch.

    Raises:
        ValueError: unknown metric or temperature <= 0.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return F.cross_entropy(prototype_scores(embedding, prototypes, metric) / temperature, labels)


@dataclass
class SubsetLossOutput:
    """Result of one batch of incomplete-simulation training.

    Attributes:
        loss: Scalar to backpropagate.
        ce: Mean over subsets of the cross-entropy, detached.
        aux: Mean over subsets of the prototype loss, detached; None without prototypes.
            It is computed whenever prototypes are given, even when it is not in the loss.
        embeddings: h (A, B, D), detached, for the class sums of the next prototypes.
        logits: z (A, B, C), detached.
    """

    loss: torch.Tensor
    ce: torch.Tensor
    aux: torch.Tensor | None
    embeddings: torch.Tensor
    logits: torch.Tensor


def _unwrap(model: nn.Module) -> FusionBackbone:
    # DistributedDataParallel keeps the wrapped model in `.module`.
    return getattr(model, "module", model)


def _combine(
    logits: torch.Tensor,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor | None,
    aux_weight: float,
    temperature: float,
    aux_enabled: bool,
    metric: str,
) -> SubsetLossOutput:
    num_subsets_drawn, batch, num_classes = logits.shape
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
    if aux_enabled and prototypes is None:
        raise ValueError("aux_enabled needs prototypes; pass prototypes or aux_enabled=False")

    # Every subset runs on the same rows, so the mean over the A * B (subset, row) pairs is the
    # mean over subsets of the per-subset batch means.
    repeated_labels = labels.repeat(num_subsets_drawn)
    flat_embeddings = embeddings.reshape(num_subsets_drawn * batch, -1)
    ce = F.cross_entropy(logits.reshape(-1, num_classes), repeated_labels)

    aux = None
    if prototypes is not None:
        aux = prototype_loss(flat_embeddings, repeated_labels, prototypes, metric, temperature)
    if aux_enabled:
        loss = ce + aux_weight * aux
    elif aux is not None:
        # The zero term keeps the projection head in the graph, so DistributedDataParallel
        # receives a gradient (of zero) for every parameter in every step.
        loss = ce + 0.0 * aux
    else:
        loss = ce + 0.0 * flat_embeddings.sum()
    return SubsetLossOutput(
        loss=loss,
        ce=ce.detach(),
        aux=aux.detach() if aux is not None else None,
        embeddings=embeddings.detach(),
        logits=logits.detach(),
    )


def subset_loss(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    subsets: torch.Tensor,
    prototypes: torch.Tensor | None,
    aux_weight: float,
    temperature: float,
    aux_enabled: bool,
) -> SubsetLossOutput:
    """Compute the incomplete-simulation loss of one batch, encoding it once.

    The encoders do not depend on the subset, so the model encodes the batch once and fuses
    the shared tokens under each subset: the same loss and gradients as re-encoding per
    subset (see `subset_loss_reencode`) with 1/A of the encoder work.

    The model is called as `model(inputs, subsets=subsets)`, a single call of its
    `forward`. That works for a FusionBackbone and for one wrapped in
    DistributedDataParallel, whose gradient synchronisation hooks only see `forward` calls.

    Args:
        model: A FusionBackbone, or a DistributedDataParallel wrapping one.
        inputs: Batch per modality name (B rows each), in storage dtype.
        labels: Class indices (B,).
        subsets: Bool (A, M), True = used; each subset is shared by the whole batch.
        prototypes: Class prototypes (C, D), or None before the first epoch has ended.
        aux_weight: Weight lambda of the prototype loss.
        temperature: Temperature t of the prototype loss.
        aux_enabled: Whether the prototype loss is added to the loss.

    Returns:
        The loss with its detached parts, logits and embeddings.

    Raises:
        ValueError: `aux_enabled` without prototypes, or bad shapes.
    """
    logits, embeddings = model(inputs, subsets=subsets)
    return _combine(
        logits, embeddings, labels, prototypes, aux_weight, temperature, aux_enabled,
        _unwrap(model).config.metric,
    )


def subset_loss_reencode(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    subsets: torch.Tensor,
    prototypes: torch.Tensor | None,
    aux_weight: float,
    temperature: float,
    aux_enabled: bool,
    token_dropping: bool = False,
) -> SubsetLossOutput:
    """Compute the same loss as `subset_loss` by re-encoding the batch for every subset.

    This is the slow reference for tests and benchmarks. It is not meant for DDP training.

    Args:
        model, inputs, labels, subsets, prototypes, aux_weight, temperature, aux_enabled:
            As for `subset_loss`.
        token_dropping: False (default) runs each subset as the authors' code does: encode,
            then the fusion transformer on all N + 1 tokens with masked keys. True runs
            `model(inputs, subset)`, which drops the tokens outside the subset.

    Returns:
        As for `subset_loss`.
    """
    backbone = _unwrap(model)
    results = []
    for subset in subsets:
        if token_dropping:
            results.append(model(inputs, subset=subset))
        else:
            results.append(backbone._fuse_full_masked(backbone.encode(inputs), subset))
    logits = torch.stack([logits for logits, _ in results])
    embeddings = torch.stack([embedding for _, embedding in results])
    return _combine(
        logits, embeddings, labels, prototypes, aux_weight, temperature, aux_enabled,
        backbone.config.metric,
    )


def sample_subsets(
    num_modalities: int, count: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw `count` distinct non-empty subsets uniformly without replacement.

    Args:
        num_modalities: M >= 1.
        count: A, between 1 and 2^M - 1.
        generator: Optional CPU random generator, for reproducible draws.

    Returns:
        Bool (count, M), rows of `all_subsets(M)` in random order.

    Raises:
        ValueError: `count` is outside 1..2^M - 1.
    """
    total = num_subsets(num_modalities)
    if not 1 <= count <= total:
        raise ValueError(
            f"cannot draw {count} distinct non-empty subsets of {num_modalities} modalities; "
            f"valid range: 1..{total}"
        )
    order = torch.randperm(total, generator=generator)[:count]
    return all_subsets(num_modalities)[order]
