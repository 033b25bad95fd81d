"""The `val_dymo` objective: DyMo's accuracy on the validation split of a trained trial.

The trial's best weights get calibration statistics from the trial's training rows, a
missingness protocol masks the validation rows, the recovery model fills the masked
modalities, and the batched selector predicts. The masked true values are never passed to
the recovery model, the selector or the discard baseline.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from dymo_ray.data.io import SplitData, load_split
from dymo_ray.data.protocols import parse_protocol
from dymo_ray.data.spec import DatasetCard
from dymo_ray.models.backbone import FusionBackbone
from dymo_ray.recovery import Recovery
from dymo_ray.selection import (
    CalibrationStats,
    SelectionConfig,
    compute_calibration_stats,
    discard_predict,
    select,
)
from dymo_ray.train.backbone_loop import batches
from dymo_ray.train.common import limited_rows

logger = logging.getLogger(__name__)

RECOVERY_BASELINES = ("zeros", "noise")


def training_calibration_stats(
    model: FusionBackbone, data_dir: str | Path, train_limit: int | None, seed: int
) -> CalibrationStats:
    """Compute calibration statistics on the training rows a trial trained on.

    The rows are the training loop's seeded `train_limit` rows, or every row when
    `train_limit` is None. A trial is one process, so no rows are sharded away.
    """
    rows = limited_rows(Path(data_dir), "train", train_limit, seed)
    train = load_split(data_dir, "train", rows=rows)
    with torch.inference_mode():
        return compute_calibration_stats(
            model, batches(train, 512, generator=None), train.card.num_classes
        )


def load_trial_recovery(reference: dict[str, str], card: DatasetCard, tracking_uri: str) -> Recovery:
    """Build or load the recovery model a sweep resolved in its driver.

    Args:
        reference: {"kind": "baseline", "name": "zeros" | "noise"} or
            {"kind": "registry", "uri": "models:/<name>/<version>"}.
        card: The dataset card the recovery model must match.
        tracking_uri: MLflow store of the registry.
    """
    from dymo_ray.recovery import build_recovery, load_registered_recovery

    if reference["kind"] == "baseline":
        return build_recovery(reference["name"], card)
    return load_registered_recovery(reference["uri"], card=card, tracking_uri=tracking_uri)


@torch.no_grad()
def dymo_validation_accuracy(
    model: FusionBackbone,
    stats: CalibrationStats,
    data: SplitData,
    protocol: str,
    recovery: Recovery,
    selection: SelectionConfig,
    seed: int,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Return DyMo's and discard's accuracy on `data` with modalities masked by `protocol`.

    Args:
        model: The trained backbone.
        stats: Its calibration statistics.
        data: Labelled complete rows (the validation split).
        protocol: Missingness protocol, e.g. "random:0.6".
        recovery: Fills the masked modalities from the observed ones.
        selection: Selection settings (tau, calibration form).
        seed: Seed of the protocol's masks and of the recovery model's sampling.
        batch_size: Rows per recovery and selection call.

    Returns:
        {"val_dymo": accuracy, "val_discard": accuracy, "val_recovered_used": mean number of
        recovered modalities DyMo fused per row, "rows": N}.
    """
    names = model.card.modality_names
    present = parse_protocol(protocol, names).apply(len(data), seed)
    dymo_correct = discard_correct = 0
    recovered_used = 0
    for start in range(0, len(data), batch_size):
        observed = present[start:start + batch_size]
        # Masked slots are zeroed before recovery, so no true value of a missing modality
        # reaches the recovery model, the selector or the discard baseline.
        inputs = {
            name: _zero_missing(data.inputs[name][start:start + batch_size], observed[:, index])
            for index, name in enumerate(names)
        }
        labels = data.labels[start:start + batch_size]
        completed = recovery.recover(inputs, observed, seed=seed * 1_000_003 + start)
        chosen = select(model, stats, completed, observed, selection, with_traces=False)
        discard = discard_predict(model, completed, observed)
        dymo_correct += int((chosen.predictions == labels).sum())
        discard_correct += int((discard.predictions == labels).sum())
        recovered_used += int(chosen.recovered_used.sum())
    count = max(len(data), 1)
    return {
        "val_dymo": dymo_correct / count,
        "val_discard": discard_correct / count,
        "val_recovered_used": recovered_used / count,
        "rows": len(data),
    }


def _zero_missing(values: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    mask = observed.reshape(-1, *([1] * (values.dim() - 1)))
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype))
