"""The model work of the serving deployments, with no Ray in it.

The deployments call these functions from `asyncio.to_thread`, and the tests call them
directly to compute the offline prediction that a served prediction must equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dymo_ray.data.spec import DatasetCard
from dymo_ray.recovery import Recovery
from dymo_ray.selection import (
    CalibrationStats,
    SelectionConfig,
    SelectionResult,
    discard_predict,
    select,
)
from dymo_ray.serve.decode import DecodedSample

STRATEGIES = ("dymo", "discard")


def _stack(samples: Sequence[DecodedSample], card: DatasetCard) -> tuple[dict, torch.Tensor]:
    inputs = {
        name: torch.from_numpy(np.stack([sample.inputs[name] for sample in samples]))
        for name in card.modality_names
    }
    present = torch.from_numpy(np.stack([sample.present for sample in samples]))
    return inputs, present


def _unstack(batch: dict[str, torch.Tensor], row: int) -> dict[str, np.ndarray]:
    return {name: tensor[row].cpu().numpy() for name, tensor in batch.items()}


def recover_samples(
    recovery: Recovery,
    samples: Sequence[DecodedSample],
    batching: str = "per_request",
    default_seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Generate the missing modalities of each sample.

    Args:
        recovery: The recovery model.
        samples: Samples with at least one missing modality each.
        batching: "per_request": one `recover` call per sample, under the sample's seed (or
            `default_seed`), so a sample's output depends on that sample alone.
            "per_observed_set": one `recover` call for the whole list under `default_seed`;
            `Recovery.recover` then runs one generation per distinct observed set.
        default_seed: Seed of samples that carry none, and of the shared call.

    Returns:
        Per sample, its completed inputs (observed values unchanged).
    """
    if not samples:
        return []
    card = recovery.card
    if batching == "per_observed_set":
        inputs, present = _stack(samples, card)
        completed = recovery.recover(inputs, present, seed=default_seed)
        return [_unstack(completed, row) for row in range(len(samples))]
    if batching != "per_request":
        raise ValueError(
            f"unknown recovery batching {batching!r}; valid: ['per_request', 'per_observed_set']"
        )
    outputs = []
    for sample in samples:
        inputs, present = _stack([sample], card)
        seed = default_seed if sample.seed is None else sample.seed
        outputs.append(_unstack(recovery.recover(inputs, present, seed=seed), 0))
    return outputs


def _non_finite_to_none(value: Any) -> Any:
    # JSON has no infinity or NaN, and Starlette's encoder rejects them.
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _non_finite_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_non_finite_to_none(item) for item in value]
    return value


def _result_rows(result: SelectionResult, names: list[str]) -> list[dict[str, Any]]:
    rows = result.to_dict(names)
    for row in rows:
        row["trace"] = _non_finite_to_none(row["trace"] or [])
    return rows


def predict_samples(
    model: nn.Module,
    stats: CalibrationStats | None,
    samples: Sequence[DecodedSample],
    strategies: Sequence[str],
    config: SelectionConfig,
) -> list[dict[str, Any]]:
    """Predict each sample with DyMo selection or with its observed modalities only.

    Samples of each strategy run as one batch.

    Args:
        model: The backbone.
        stats: Its calibration statistics (needed when any strategy is "dymo").
        samples: Samples in storage form. For "dymo", missing modalities hold recovered
            values; for "discard", they may hold anything finite.
        strategies: Per sample, "dymo" or "discard".
        config: Selection settings.

    Returns:
        Per sample, `SelectionResult.to_dict` fields: prediction, probabilities, observed,
        recovered_used, rejected and trace (a list of steps, non-finite numbers as None).

    Raises:
        ValueError: a strategy is unknown, or the inputs do not fit the backbone.
    """
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; valid: {list(STRATEGIES)}")
    names = model.card.modality_names
    outputs: list[dict[str, Any] | None] = [None] * len(samples)
    for strategy in STRATEGIES:
        rows = [row for row, chosen in enumerate(strategies) if chosen == strategy]
        if not rows:
            continue
        inputs, present = _stack([samples[row] for row in rows], model.card)
        if strategy == "dymo":
            result = select(model, stats, inputs, present, config, with_traces=True)
        else:
            result = discard_predict(model, inputs, present)
        for row, output in zip(rows, _result_rows(result, names)):
            outputs[row] = output
    assert all(output is not None for output in outputs), "a sample got no prediction"
    return outputs  # type: ignore[return-value]


def pick_device(setting: str, gpu_ids: Sequence[Any] = ()) -> torch.device:
    """Return the torch device for a `device` setting.

    Args:
        setting: "cpu", "cuda", or "auto": CUDA when `gpu_ids` (the GPUs Ray assigned to
            this replica) is non-empty and CUDA is available, else the CPU.
        gpu_ids: `ray.get_gpu_ids()` of the replica.

    Raises:
        ValueError: "cuda" was requested and CUDA is unavailable.
    """
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "device 'cuda' was requested but CUDA is not available in this replica; "
                "give the deployment num_gpus in ray_actor_options or set device: cpu"
            )
        return torch.device("cuda")
    if gpu_ids and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
