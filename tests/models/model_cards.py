"""Cards and random batches shared by the model tests (no dataset files needed)."""

from __future__ import annotations

import torch

from dymo_ray.data.spec import MOPOE_ALPHABET, DatasetCard, ModalitySpec

CLASSES = [str(digit) for digit in range(10)]


def polymnist_card() -> DatasetCard:
    """Five 3x28x28 uint8 images, 10 classes: the PolyMNIST shapes."""
    modalities = [ModalitySpec(f"m{i}", "image", (3, 28, 28), "uint8") for i in range(5)]
    return DatasetCard("polymnist", modalities, CLASSES)


def mdt_card() -> DatasetCard:
    """MNIST 1x28x28, UCI digits 1x8x8 (values 0..16) and 8 characters of text."""
    modalities = [
        ModalitySpec("mnist", "image", (1, 28, 28), "uint8"),
        ModalitySpec("digits", "image", (1, 8, 8), "uint8", max_value=16.0),
        ModalitySpec("text", "text", (8,), "int64", alphabet=MOPOE_ALPHABET),
    ]
    return DatasetCard("mdt", modalities, CLASSES)


def random_batch(
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
