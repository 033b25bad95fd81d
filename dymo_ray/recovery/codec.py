"""Conversion between the storage form of a modality and the form its networks consume.

Storage form, used by datasets, the backbone and `Recovery.recover`:
    image: uint8 (B, C, H, W) in [min_value, max_value].
    text: int64 (B, L) character indices.
    tabular: float32 (B, F).
Model form, used by the recovery networks and the unimodal classifiers:
    image: float32 (B, C, H, W) scaled to [0, 1].
    text: float32 one-hot (B, L, V).
    tabular: float32 (B, F) scaled to [0, 1] by the spec's range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dymo_ray.data.spec import ModalitySpec
from dymo_ray.recovery.base import storage_dtype


def model_shape(spec: ModalitySpec) -> tuple[int, ...]:
    """Return the per-sample shape of a modality in model form."""
    if spec.kind == "text":
        return (spec.shape[0], spec.vocab_size)
    return tuple(spec.shape)


def _value_span(spec: ModalitySpec) -> float:
    span = float(spec.max_value) - float(spec.min_value)
    return span if span > 0 else 1.0


def to_model_form(spec: ModalitySpec, values: torch.Tensor) -> torch.Tensor:
    """Convert a storage-form batch of one modality to model form (float32).

    Args:
        spec: The modality.
        values: (B, *spec.shape) in the storage dtype.

    Returns:
        (B, *model_shape(spec)) float32.
    """
    if spec.kind == "text":
        return F.one_hot(values.long(), spec.vocab_size).float()
    scaled = (values.float() - float(spec.min_value)) / _value_span(spec)
    if spec.kind == "tabular":
        # NOTE: a non-finite tabular feature (one way to mark an unobserved feature) becomes
        # 0 here, the low end of the range, and the recovery models read it as a value.
        scaled = torch.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0)
    return scaled


def from_model_form(spec: ModalitySpec, output: torch.Tensor) -> torch.Tensor:
    """Convert a decoder output of one modality back to storage form.

    Args:
        spec: The modality.
        output: For text, logits or probabilities (B, L, V); otherwise the likelihood's
            location (B, *spec.shape) on the [0, 1] scale, possibly outside it.

    Returns:
        (B, *spec.shape) in the storage dtype: argmax indices for text; values clamped to
        [min_value, max_value] otherwise, rounded to integers for integer storage.
    """
    if spec.kind == "text":
        return output.argmax(dim=-1).to(torch.int64)
    values = output.float().clamp(0.0, 1.0) * _value_span(spec) + float(spec.min_value)
    dtype = storage_dtype(spec)
    if dtype.is_floating_point:
        return values.to(dtype)
    return values.round().to(dtype)
