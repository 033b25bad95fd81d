"""Cards, batches and tiny model settings shared by the recovery tests."""

from __future__ import annotations

import torch

from dymo_ray.data.spec import MOPOE_ALPHABET, DatasetCard, ModalitySpec
from dymo_ray.recovery.base import storage_dtype

# Small enough for a train step of every adapter to take well under a second on 2 cores.
TINY = {
    "mopoe": {"latent_dim": 8, "hidden_dim": 32},
    "mmvae_plus": {"latent_dim": 8, "style_dim": 4, "hidden_dim": 32},
    "cmvae": {"latent_dim": 8, "style_dim": 4, "hidden_dim": 32, "num_clusters": 5},
}


def mixed_card() -> DatasetCard:
    """Three kinds of modality: 1x28x28 image, 1x8x8 image (values 0..16), 8-char text."""
    return DatasetCard(
        name="mixed",
        modalities=[
            ModalitySpec("mnist", "image", (1, 28, 28), "uint8"),
            ModalitySpec("digits", "image", (1, 8, 8), "uint8", max_value=16),
            ModalitySpec("text", "text", (8,), "int64", alphabet=MOPOE_ALPHABET),
        ],
        class_names=[str(digit) for digit in range(10)],
    )


def poly_card() -> DatasetCard:
    """Five 3x28x28 colour images, the PolyMNIST layout."""
    return DatasetCard(
        name="poly",
        modalities=[ModalitySpec(f"m{i}", "image", (3, 28, 28), "uint8") for i in range(5)],
        class_names=[str(digit) for digit in range(10)],
    )


def random_batch(card: DatasetCard, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Draw a storage-form batch with every value inside its modality's valid range."""
    generator = torch.Generator().manual_seed(seed)
    batch = {}
    for spec in card.modalities:
        shape = (batch_size, *spec.shape)
        if spec.kind == "text":
            batch[spec.name] = torch.randint(0, spec.vocab_size, shape, generator=generator)
        elif spec.dtype == "float32":
            batch[spec.name] = torch.rand(shape, generator=generator)
        else:
            high = int(spec.max_value) + 1
            batch[spec.name] = torch.randint(
                0, high, shape, generator=generator, dtype=storage_dtype(spec)
            )
    return batch


def random_present(batch_size: int, num_modalities: int, seed: int) -> torch.Tensor:
    """Draw a `present` mask with at least one observed and one missing modality per row."""
    generator = torch.Generator().manual_seed(seed)
    present = torch.rand((batch_size, num_modalities), generator=generator) < 0.5
    for row in range(batch_size):
        if not present[row].any():
            present[row, row % num_modalities] = True
        if present[row].all():
            present[row, (row + 1) % num_modalities] = False
    return present
