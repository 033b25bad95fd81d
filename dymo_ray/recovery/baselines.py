"""Parameter-free recovery baselines: all-zero inputs and uniform noise.

They share the `Recovery` contract with the generative models, so tests and comparisons can
swap them in. Neither carries information about the observed modalities, which is what a
selector should learn to reject.
"""

from __future__ import annotations

import torch

from dymo_ray.data.spec import ModalitySpec
from dymo_ray.recovery.base import Recovery, storage_dtype


class ZerosRecovery(Recovery):
    """Fill every missing modality with zeros of its storage dtype.

    For a text modality this is character index 0 at every position.
    """

    name = "zeros"

    def _generate(
        self, observed: dict[str, torch.Tensor], missing: list[str], batch_size: int
    ) -> dict[str, torch.Tensor]:
        generated = {}
        for name in missing:
            spec = self.card.modality(name)
            generated[name] = torch.zeros(
                (batch_size, *spec.shape), dtype=storage_dtype(spec), device=self.device
            )
        return generated


class NoiseRecovery(Recovery):
    """Fill every missing modality with uniform noise over its valid values.

    Images get integers drawn uniformly from [min_value, max_value], text gets indices drawn
    uniformly from the alphabet, and tabular vectors get floats drawn uniformly from
    [min_value, max_value).
    """

    name = "noise"

    def _generate(
        self, observed: dict[str, torch.Tensor], missing: list[str], batch_size: int
    ) -> dict[str, torch.Tensor]:
        return {
            name: uniform_noise(self.card.modality(name), batch_size, self.device)
            for name in missing
        }


def uniform_noise(spec: ModalitySpec, batch_size: int, device: torch.device) -> torch.Tensor:
    """Draw (batch_size, *spec.shape) uniform values of a modality with the global torch RNG."""
    shape = (batch_size, *spec.shape)
    if spec.kind == "text":
        return torch.randint(0, spec.vocab_size, shape, dtype=torch.int64, device=device)
    if spec.dtype == "float32":
        low, high = float(spec.min_value), float(spec.max_value)
        return torch.rand(shape, device=device) * (high - low) + low
    # Integer storage (uint8 images): both ends of the range are valid values.
    low, high = int(spec.min_value), int(spec.max_value)
    return torch.randint(low, high + 1, shape, dtype=storage_dtype(spec), device=device)
