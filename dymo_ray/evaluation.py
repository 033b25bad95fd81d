"""Accuracy of a bundle on a test split under missingness protocols.

Protocols are applied to a complete split with a fixed seed; the masked values of a row are
seen by nothing but the oracle baseline.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from dymo_ray.bundle import ModelBundle, load_bundle
from dymo_ray.data.io import SplitData, load_split
from dymo_ray.data.protocols import parse_protocol

logger = logging.getLogger(__name__)


def sample_rows(total: int, limit: int | None, seed: int = 0) -> np.ndarray | None:
    """Return `limit` seeded random row indices out of `total` (sorted), or None for all."""
    if limit is None or limit >= total:
        return None
    return np.sort(np.random.default_rng(seed + 11).permutation(total)[:limit])


def load_eval_split(bundle: ModelBundle, data_dir: str | Path, split: str, limit: int | None) -> SplitData:
    """Load `split` of `data_dir`, checking that its card matches the bundle's."""
    from dymo_ray.data.io import load_card

    card = load_card(data_dir)
    problems = bundle.card.compatibility_problems(card)
    if problems:
        raise ValueError(
            f"dataset {data_dir} does not match the bundle's card: " + "; ".join(problems)
        )
    return load_split(data_dir, split, rows=sample_rows(card.splits[split], limit))


@torch.inference_mode()
def predict_on_subsets(
    bundle: ModelBundle, inputs: dict[str, torch.Tensor], subsets: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """Return class probabilities (N, C) of the backbone with one subset per row (N, M)."""
    model = bundle.model
    outputs = []
    count = subsets.shape[0]
    for start in range(0, count, batch_size):
        batch = {name: tensor[start:start + batch_size] for name, tensor in inputs.items()}
        logits, _ = model(batch, subsets[start:start + batch_size])
        outputs.append(torch.softmax(logits, dim=1))
    return torch.cat(outputs)


def evaluate_discard(
    bundle_location: str | Path | ModelBundle,
    protocols: Iterable[str],
    seed: int = 0,
    data_dir: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    run_id: str | None = None,
) -> list[dict[str, Any]]:
    """Return the accuracy of the discard strategy (S = observed set) per protocol.

    Args:
        bundle_location: A bundle, its folder or a models:/ URI.
        protocols: Protocol strings such as "complete" or "random:0.6".
        seed: Seed of the protocol masks.
        data_dir: Dataset folder; default: the run folder's dataset of the bundle's card.
        split: Split to evaluate.
        limit: Seeded random subset of rows, or None for all.
        run_id: MLflow run to log `eval/<protocol>/discard/acc` to.

    Returns:
        One dict per protocol with keys protocol, rows, accuracy.
    """
    from dymo_ray.paths import data_dir as default_data_dir

    bundle = bundle_location if isinstance(bundle_location, ModelBundle) else load_bundle(
        bundle_location, require_stats=False
    )
    folder = Path(data_dir) if data_dir else default_data_dir(bundle.card.name)
    data = load_eval_split(bundle, folder, split, limit)
    rows = []
    for text in protocols:
        protocol = parse_protocol(text, bundle.card.modality_names)
        present = protocol.apply(len(data), seed)
        probabilities = predict_on_subsets(bundle, data.inputs, present)
        accuracy = float((probabilities.argmax(dim=1) == data.labels).float().mean())
        rows.append({"protocol": text, "rows": len(data), "accuracy": accuracy})
    if run_id:
        from dymo_ray.tracking import MlflowRunLogger

        MlflowRunLogger(run_id).log_metrics(
            {f"eval/{row['protocol']}/discard/acc": row["accuracy"] for row in rows}
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Render rows as a fixed-width text table (floats with 4 decimals)."""

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    widths = [max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(cell(row.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
    return "\n".join(lines)
