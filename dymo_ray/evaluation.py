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
from dymo_ray.data.io import SplitData, load_card, load_split, seeded_rows
from dymo_ray.data.protocols import parse_protocol

logger = logging.getLogger(__name__)


def recovery_seed(seed: int, batch_index: int) -> int:
    """Return the recovery seed of one batch, so that every tool recovers a split alike."""
    return seed * 1_000_003 + batch_index


def sample_rows(total: int, limit: int | None, seed: int = 0) -> np.ndarray | None:
    """Return `limit` seeded random row indices out of `total` (sorted), or None for all.

    Raises:
        ValueError: `limit` is below 1.
    """
    return seeded_rows(total, limit, seed + 11)


def load_eval_split(bundle: ModelBundle, data_dir: str | Path, split: str, limit: int | None) -> SplitData:
    """Load `split` of `data_dir`, checking that its card matches the bundle's.

    Raises:
        ValueError: the card does not match the bundle's, the split is not in the card, or
            `limit` is below 1.
    """
    card = load_card(data_dir)
    problems = bundle.card.compatibility_problems(card)
    if problems:
        raise ValueError(
            f"dataset {data_dir} does not match the bundle's card: " + "; ".join(problems)
        )
    if split not in card.splits:
        raise ValueError(
            f"split {split!r} not found in dataset {data_dir}; valid splits: {list(card.splits)}"
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


STRATEGIES = ("discard", "impute_all", "dymo", "oracle")


def _macro_auc(labels: np.ndarray, probabilities: np.ndarray, num_classes: int) -> float | None:
    """Macro one-vs-rest AUC, or None when a class is absent from `labels`."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < num_classes:
        return None
    if num_classes == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro",
                               labels=list(range(num_classes))))


def evaluate_strategies(
    bundle: ModelBundle,
    recovery: Any,
    data: SplitData,
    protocols: Sequence[str],
    seed: int = 0,
    batch_size: int = 256,
    selection_config: Any = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score discard, impute-all, DyMo and oracle on one split under each protocol.

    For each protocol the present mask is drawn once with `seed`. Each batch is recovered
    once, seeded by `seed` and the batch index so that reruns match, and the same completed
    inputs feed impute-all and DyMo. The oracle uses every modality with its true values.

    Args:
        bundle: Backbone with calibration statistics.
        recovery: A `dymo_ray.recovery.Recovery` for the bundle's card.
        data: A complete split (every modality observed).
        protocols: Protocol strings, e.g. "random:0.6" or "drop:mnist+text".
        seed: Seed of the protocol masks and of the recovery.
        batch_size: Rows per batch.
        selection_config: `SelectionConfig` for DyMo (default settings when None).
        progress: Show a progress bar over batches on stderr.

    Returns:
        One row per (protocol, strategy): protocol, strategy, rows, accuracy, auc, and for
        DyMo the mean number of recovered modalities used and rejected per row.
    """
    from tqdm.auto import tqdm

    from dymo_ray.selection import discard_predict, impute_all_predict, select

    card = bundle.card
    problems = card.compatibility_problems(recovery.card)
    if problems:
        raise ValueError("the recovery model was built for another dataset card: " + "; ".join(problems))
    labels = data.labels.numpy()
    oracle = None
    rows: list[dict[str, Any]] = []
    batch_starts = list(range(0, len(data), batch_size))
    for text in protocols:
        protocol = parse_protocol(text, card.modality_names)
        present = protocol.apply(len(data), seed)
        probabilities = {name: [] for name in STRATEGIES if name != "oracle"}
        used_counts, rejected_counts = [], []
        for batch_index, start in enumerate(
            tqdm(batch_starts, desc=f"evaluate {text}", disable=not progress, leave=False)
        ):
            stop = start + batch_size
            inputs = {name: tensor[start:stop] for name, tensor in data.inputs.items()}
            batch_present = present[start:stop]
            completed = recovery.recover(
                inputs, batch_present, seed=recovery_seed(seed, batch_index)
            )
            probabilities["discard"].append(discard_predict(bundle.model, completed, batch_present).probabilities)
            probabilities["impute_all"].append(
                impute_all_predict(bundle.model, completed, batch_present).probabilities
            )
            result = select(bundle.model, bundle.stats, completed, batch_present,
                            selection_config, with_traces=False)
            probabilities["dymo"].append(result.probabilities)
            used_counts.append(result.recovered_used.sum(dim=1))
            rejected_counts.append(result.rejected.sum(dim=1))
        if oracle is None:
            oracle = torch.cat([
                impute_all_predict(bundle.model, {n: t[s:s + batch_size] for n, t in data.inputs.items()}).probabilities
                for s in batch_starts
            ])
        used = torch.cat(used_counts).double()
        rejected = torch.cat(rejected_counts).double()
        missing_per_row = (~present).sum(dim=1).double()
        stacked = {name: torch.cat(parts) for name, parts in probabilities.items()}
        stacked["oracle"] = oracle
        for strategy in STRATEGIES:
            probs = stacked[strategy].double().numpy()
            row = {
                "protocol": text,
                "strategy": strategy,
                "rows": len(data),
                "accuracy": float((probs.argmax(axis=1) == labels).mean()),
                "auc": _macro_auc(labels, probs, card.num_classes),
                "missing_per_row": float(missing_per_row.mean()),
            }
            if strategy == "dymo":
                row["used_per_row"] = float(used.mean())
                row["rejected_per_row"] = float(rejected.mean())
            rows.append(row)
    return rows


def pivot_accuracy(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return one row per protocol with one accuracy column per strategy (for printing)."""
    table: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = table.setdefault(row["protocol"], {"protocol": row["protocol"]})
        entry[row["strategy"]] = row["accuracy"]
        if row["strategy"] == "dymo":
            entry["dymo_used"] = row["used_per_row"]
            entry["dymo_rejected"] = row["rejected_per_row"]
            entry["missing"] = row["missing_per_row"]
    return list(table.values())


def compare_dymo(pivot_rows: Sequence[dict[str, Any]]) -> list[str]:
    """Summarise DyMo against discard and impute-all, in accuracy points per protocol.

    Args:
        pivot_rows: Output of `pivot_accuracy`, with "discard", "impute_all" and "dymo".

    Returns:
        Printable lines: the differences per protocol, then a line that names the protocols
        where discard beats DyMo, because there serving discard is the better choice.
    """
    lines = []
    for baseline, label in (("discard", "discard"), ("impute_all", "impute-all")):
        gaps = [
            f"{row['protocol']} {100 * (row['dymo'] - row[baseline]):+.2f}" for row in pivot_rows
        ]
        lines.append(f"DyMo minus {label}, accuracy points: " + ", ".join(gaps))
    below = [row["protocol"] for row in pivot_rows if row["dymo"] < row["discard"]]
    if below:
        lines.append(
            f"discard beats DyMo at {len(below)} of {len(pivot_rows)} protocols "
            f"({', '.join(below)}). If these match your data, serve /v1/classify (observed "
            "modalities only) rather than /v1/predict; docs/decisions.md explains why."
        )
    else:
        lines.append("DyMo is at or above discard at every protocol.")
    return lines


def plot_accuracy(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Plot accuracy per strategy against the protocol (missing rate for random:<eta>)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(dict.fromkeys(row["protocol"] for row in rows))
    numeric = all(p.startswith("random:") for p in protocols)
    positions = [float(p.split(":", 1)[1]) for p in protocols] if numeric else list(range(len(protocols)))
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for strategy in STRATEGIES:
        values = [next(r["accuracy"] for r in rows if r["protocol"] == p and r["strategy"] == strategy)
                  for p in protocols]
        axis.plot(positions, values, marker="o", label=strategy)
    axis.set_xticks(positions)
    axis.set_xticklabels([p.split(":", 1)[1] if numeric else p for p in protocols],
                         rotation=0 if numeric else 30, ha="center" if numeric else "right")
    axis.set_xlabel("missing rate eta (random:<eta>)" if numeric else "protocol")
    axis.set_ylabel("test accuracy")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write result rows as CSV with a header (columns in first-seen order)."""
    import csv

    columns = list(dict.fromkeys(key for row in rows for key in row))
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


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
