"""Checks on the batches the selector and the calibration statistics receive."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dymo_ray.data.spec import DatasetCard, ModalitySpec

# Maximum number of offending row indices an error message lists before "...".
_MAX_ROWS_SHOWN = 5


def _format_rows(rows: torch.Tensor) -> str:
    listed = ", ".join(str(row) for row in rows[:_MAX_ROWS_SHOWN].tolist())
    return f"[{listed}, ...]" if len(rows) > _MAX_ROWS_SHOWN else f"[{listed}]"


def _dtype_problem(spec: ModalitySpec, tensor: torch.Tensor) -> str | None:
    dtype = tensor.dtype
    if spec.kind == "text" and (dtype.is_floating_point or dtype == torch.bool):
        return f"modality {spec.name!r} is text and needs integer indices, got {dtype}"
    if spec.kind == "tabular" and not dtype.is_floating_point:
        return f"modality {spec.name!r} is tabular and needs a float tensor, got {dtype}"
    if spec.kind == "image" and not (dtype == torch.uint8 or dtype.is_floating_point):
        return f"modality {spec.name!r} is an image and needs uint8 or float values, got {dtype}"
    return None


def check_inputs(card: DatasetCard, inputs: Mapping[str, torch.Tensor]) -> int:
    """Check a batch against the dataset card and return its batch size.

    Args:
        card: Dataset card of the backbone.
        inputs: One tensor (B, *shape) per modality of the card, keyed by modality name.

    Returns:
        The batch size B.

    Raises:
        ValueError: modality names differ from the card, a shape or dtype does not match the
            card, batch sizes differ, or a float input contains NaN or inf. The message lists
            every problem found.
    """
    if not isinstance(inputs, Mapping):
        raise ValueError(
            f"inputs must be a dict of tensors keyed by modality name, got {type(inputs).__name__}"
        )
    problems = []
    names = card.modality_names
    missing = [name for name in names if name not in inputs]
    unexpected = sorted(str(name) for name in inputs if name not in names)
    if missing:
        problems.append(f"missing modalities {missing}")
    if unexpected:
        problems.append(f"unknown modalities {unexpected}")

    batch_sizes = {}
    for spec in card.modalities:
        tensor = inputs.get(spec.name)
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            problems.append(
                f"modality {spec.name!r} must be a torch.Tensor, got {type(tensor).__name__}"
            )
            continue
        if tensor.dim() != len(spec.shape) + 1 or tuple(tensor.shape[1:]) != spec.shape:
            problems.append(
                f"modality {spec.name!r} has shape {tuple(tensor.shape)}, "
                f"expected (batch, {', '.join(str(s) for s in spec.shape)})"
            )
            continue
        batch_sizes[spec.name] = tensor.shape[0]
        dtype_problem = _dtype_problem(spec, tensor)
        if dtype_problem is not None:
            problems.append(dtype_problem)
            continue
        if tensor.dtype.is_floating_point:
            bad_rows = (~torch.isfinite(tensor)).flatten(start_dim=1).any(dim=1)
            if bool(bad_rows.any()):
                rows = bad_rows.nonzero().flatten().cpu()
                problems.append(
                    f"modality {spec.name!r} contains NaN or inf in rows {_format_rows(rows)}"
                )

    if len(set(batch_sizes.values())) > 1:
        problems.append(f"modalities have different batch sizes {batch_sizes}")
    if problems:
        raise ValueError(
            "invalid inputs: " + "; ".join(problems) + f" (card modalities: {names})"
        )
    if not batch_sizes:
        raise ValueError(f"invalid inputs: no modality tensors (card modalities: {names})")
    return next(iter(batch_sizes.values()))


def check_present(present: torch.Tensor, batch_size: int, num_modalities: int) -> None:
    """Check a `present` mask (True = observed).

    Args:
        present: Bool tensor (B, M).
        batch_size: Expected B.
        num_modalities: Expected M.

    Raises:
        ValueError: `present` is not a bool tensor of shape (B, M), or a row observes nothing.
    """
    if not isinstance(present, torch.Tensor) or present.dtype != torch.bool:
        found = present.dtype if isinstance(present, torch.Tensor) else type(present).__name__
        raise ValueError(f"present must be a bool tensor (True = observed), got {found}")
    if tuple(present.shape) != (batch_size, num_modalities):
        raise ValueError(
            f"present has shape {tuple(present.shape)}, "
            f"expected (batch, modalities) = ({batch_size}, {num_modalities})"
        )
    empty_rows = (~present.any(dim=1)).nonzero().flatten().cpu()
    if len(empty_rows):
        raise ValueError(
            f"present has no observed modality in rows {_format_rows(empty_rows)}; "
            "every sample needs at least one observed modality"
        )
