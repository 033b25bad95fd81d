"""Cards, random backbones and statistics, and a table-driven fake backbone for selection tests."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from dymo_ray.data.spec import MOPOE_ALPHABET, DatasetCard, ModalitySpec
from dymo_ray.models.backbone import BackboneConfig, FusionBackbone
from dymo_ray.selection.calibration import CalibrationStats, compute_calibration_stats
from dymo_ray.subsets import all_subsets, subset_index


def image_card(num_modalities: int = 5, num_classes: int = 4) -> DatasetCard:
    """Small 1x4x4 uint8 images (4 tokens each), so that thousands of passes stay cheap."""
    modalities = [
        ModalitySpec(f"m{i}", "image", (1, 4, 4), "uint8") for i in range(num_modalities)
    ]
    return DatasetCard("tiny_images", modalities, [f"c{i}" for i in range(num_classes)])


def mixed_card(num_classes: int = 3) -> DatasetCard:
    """One modality of each kind: a 1x6x6 image, 6 characters of text, 3 tabular features."""
    modalities = [
        ModalitySpec("image", "image", (1, 6, 6), "uint8"),
        ModalitySpec("text", "text", (6,), "int64", alphabet=MOPOE_ALPHABET),
        ModalitySpec("table", "tabular", (3,), "float32", min_value=-5.0, max_value=5.0),
    ]
    return DatasetCard("tiny_mixed", modalities, [f"c{i}" for i in range(num_classes)])


def random_inputs(
    card: DatasetCard, batch: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Draw a batch in storage dtype, within each modality's value range."""
    inputs = {}
    for spec in card.modalities:
        shape = (batch, *spec.shape)
        if spec.kind == "image":
            high = int(spec.max_value) + 1
            inputs[spec.name] = torch.randint(
                0, high, shape, generator=generator, dtype=torch.uint8
            )
        elif spec.kind == "text":
            inputs[spec.name] = torch.randint(0, spec.vocab_size, shape, generator=generator)
        else:
            inputs[spec.name] = torch.randn(shape, generator=generator)
    return inputs


def small_backbone(
    card: DatasetCard, metric: str, seed: int, weight_std: float = 0.3
) -> FusionBackbone:
    """A small random FusionBackbone in eval mode.

    The default initialisation (std 0.02) gives nearly the same output for every input and
    subset, so rewards would sit near 0. Redrawing the weights with a larger std makes the
    outputs depend on the inputs and the subset, so that selection decisions vary.
    """
    torch.manual_seed(seed)
    config = BackboneConfig(
        width=16, heads=2, blocks=1, projection_dim=8, mlp_ratio=2, metric=metric
    )
    model = FusionBackbone(card, config)
    generator = torch.Generator().manual_seed(seed + 10_000)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and "norm" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * weight_std)
        if metric == "euclidean":
            # Shorter embeddings keep -||h - P||^2 / tau moderate. Otherwise Q saturates near
            # 1, rewards shrink to rounding noise, and a decision could hinge on the float32
            # difference between a batched and a single-sample pass.
            model.projection.weight.mul_(0.3)
            model.projection.bias.mul_(0.3)
    return model.eval()


def random_stats(model: nn.Module, rows: int, generator: torch.Generator) -> CalibrationStats:
    """Calibration statistics of `model` on random inputs with balanced random labels."""
    card = model.card
    inputs = random_inputs(card, rows, generator)
    labels = torch.arange(rows) % card.num_classes
    labels = labels[torch.randperm(rows, generator=generator)]
    half = rows // 2
    batches = [
        ({k: v[:half] for k, v in inputs.items()}, labels[:half]),
        ({k: v[half:] for k, v in inputs.items()}, labels[half:]),
    ]
    return compute_calibration_stats(model, batches, card.num_classes)


def every_observed_set(num_modalities: int, rows_per_set: int) -> torch.Tensor:
    """`present` (rows_per_set * (2^M - 1), M): every non-empty observed set, repeated."""
    return all_subsets(num_modalities).repeat_interleave(rows_per_set, dim=0)


def scalar_card(num_modalities: int, num_classes: int) -> DatasetCard:
    """Card of the table backbone: one float feature per modality carries the row id."""
    modalities = [
        ModalitySpec(f"m{i}", "tabular", (1,), "float32", max_value=1e6)
        for i in range(num_modalities)
    ]
    return DatasetCard("table", modalities, [f"c{i}" for i in range(num_classes)])


def row_id_inputs(card: DatasetCard, rows: int) -> dict[str, torch.Tensor]:
    """Inputs of the table backbone: every modality contains the row index."""
    ids = torch.arange(rows, dtype=torch.float32)[:, None]
    return {name: ids.clone() for name in card.modality_names}


class TableBackbone(nn.Module):
    """Fake backbone with the FusionBackbone contract whose outputs are set per (row, subset).

    `encode` returns the row id (taken from the first modality) as a one-value token, and
    `fuse` looks logits and embeddings up by row id and `subset_index` of each row's subset.
    Tests build the tables by hand, so every Q, ICS and reward is known in advance.

    Args:
        card: A `scalar_card`.
        logits: Float (R, 2^M - 1, C), logits of row r under subset s.
        embeddings: Float (R, 2^M - 1, D), embeddings of row r under subset s.
        metric: "cosine" or "euclidean" (embeddings are used as given).
    """

    def __init__(
        self, card: DatasetCard, logits: torch.Tensor, embeddings: torch.Tensor, metric: str
    ) -> None:
        super().__init__()
        self.card = card
        self.config = SimpleNamespace(metric=metric, projection_dim=embeddings.shape[-1])
        self.register_buffer("logits_table", logits.float())
        self.register_buffer("embedding_table", embeddings.float())
        # Count encode calls and record the rows of every fuse call, so tests can count passes.
        self.encode_calls = 0
        self.fuse_calls: list[int] = []

    def encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        self.encode_calls += 1
        return inputs[self.card.modality_names[0]].reshape(-1, 1, 1).float()

    def fuse(self, tokens: torch.Tensor, subset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = tokens[:, 0, 0].long()
        subsets = subset.expand(len(rows), -1) if subset.dim() == 1 else subset
        ids = subset_index(subsets)
        self.fuse_calls.append(len(rows))
        return self.logits_table[rows, ids], self.embedding_table[rows, ids]

    def forward(self, inputs: dict[str, torch.Tensor], subset: torch.Tensor):
        return self.fuse(self.encode(inputs), subset)
