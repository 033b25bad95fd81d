"""Per-trial summaries of a finished sweep: the printed table and the PNG plot."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dymo_ray.evaluation import format_table

UNFINISHED = "unfinished"


@dataclass
class TrialSummary:
    """One trial of a sweep: its sampled values, scores and outcome.

    Attributes:
        trial_id: Tune's trial id.
        temperature: Sampled prototype-loss temperature t.
        subsets_per_batch: Sampled number A of subsets per batch.
        tau: Selection temperature (sampled, or the sweep's fixed value).
        epochs_run: Epochs the trial completed.
        best_val_acc: Best backbone validation accuracy over all subsets (NaN if none).
        val_dymo: DyMo validation accuracy (NaN unless the objective is val_dymo and the
            trial ran to the end).
        val_discard: Discard's validation accuracy under the same protocol (NaN likewise).
        status: "finished", "stopped by asha", "error", or "unfinished" (interrupted).
        objective: The value that ranks trials (NaN when the trial has none).
        run_id: The trial's MLflow child run, or None if it never started.
    """

    trial_id: str
    temperature: float
    subsets_per_batch: int
    tau: float
    epochs_run: int
    best_val_acc: float
    val_dymo: float
    val_discard: float
    status: str
    objective: float
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(metrics: dict[str, Any], key: str) -> float:
    value = metrics.get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


def summarize_result(
    result: Any,
    trial_id: str,
    tune_status: str,
    objective_key: str,
    scheduler: str,
    fixed_tau: float,
    epochs: int,
    stopped_by_patience: bool,
) -> TrialSummary:
    """Summarize one Tune `Result` of a trial whose Tune status is `tune_status`.

    A TERMINATED trial finished when it ran every epoch, reported val_dymo (which comes
    after the last epoch) or was stopped by the loop's own patience rule. Otherwise the
    scheduler stopped it. Tune's `done` flag cannot tell these apart: in Ray 2.60 it is
    true on the last result of a trial that ASHA stopped and false on a trial that returned.
    PENDING, PAUSED and RUNNING trials are unfinished.
    """
    metrics = dict(result.metrics or {})
    config = dict(result.config or {})
    epochs_run = int(metrics.get("epoch", 0) or 0)
    reported_dymo = math.isfinite(_number(metrics, "val_dymo"))
    if result.error is not None or tune_status == "ERROR":
        status = "error"
    elif tune_status != "TERMINATED":
        status = UNFINISHED
    elif epochs_run >= epochs or reported_dymo or stopped_by_patience:
        status = "finished"
    else:
        status = f"stopped by {scheduler}"
    return TrialSummary(
        trial_id=trial_id,
        temperature=float(config.get("temperature", math.nan)),
        subsets_per_batch=int(config.get("subsets_per_batch", 0)),
        tau=float(config.get("tau", fixed_tau)),
        epochs_run=epochs_run,
        best_val_acc=_number(metrics, "best_val_acc"),
        val_dymo=_number(metrics, "val_dymo"),
        val_discard=_number(metrics, "val_discard"),
        status=status,
        objective=_number(metrics, objective_key),
    )


def trials_table(trials: list[TrialSummary], objective: str, tune_tau: bool) -> str:
    """Render the trials, best objective first, as a fixed-width text table."""
    ordered = sorted(trials, key=lambda t: -t.objective if math.isfinite(t.objective) else math.inf)
    columns = ["trial", "temperature", "subsets", "epochs", "val acc"]
    if tune_tau:
        columns.insert(3, "tau")
    if objective == "val_dymo":
        columns += ["val dymo", "val discard"]
    columns.append("status")
    rows = []
    for trial in ordered:
        rows.append({
            "trial": trial.trial_id,
            "temperature": f"{trial.temperature:.4g}",
            "subsets": trial.subsets_per_batch,
            "tau": f"{trial.tau:.4g}",
            "epochs": trial.epochs_run,
            "val acc": _cell(trial.best_val_acc),
            "val dymo": _cell(trial.val_dymo),
            "val discard": _cell(trial.val_discard),
            "status": trial.status,
        })
    return format_table(rows, columns)


def _cell(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "-"


def plot_sweep(trials: list[TrialSummary], path: str | Path, title: str) -> Path:
    """Write a PNG of validation accuracy against temperature, coloured by subsets per batch.

    The x axis is logarithmic like the temperature's search space. Filled markers are trials
    that ran every epoch, hollow ones were stopped early, and the y value is the trial's
    best backbone validation accuracy over all subsets. With the val_dymo objective a
    second panel shows DyMo's validation accuracy.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    path = Path(path)
    scored = [t for t in trials if math.isfinite(t.best_val_acc) and math.isfinite(t.temperature)]
    with_dymo = [t for t in scored if math.isfinite(t.val_dymo)]
    panels = [("best val acc (backbone, all subsets)", "best_val_acc", scored)]
    if with_dymo:
        panels.append(("val acc of DyMo", "val_dymo", with_dymo))

    figure = Figure(figsize=(6.0 * len(panels), 4.2), layout="constrained")
    FigureCanvasAgg(figure)  # Agg renders to a file without a display
    # One colour band per distinct A, in increasing order, so the colour bar reads as a
    # legend of integers. Colours are looked up by the position of A in that order.
    subsets = sorted({t.subsets_per_batch for t in trials}) or [1]
    position = {value: index for index, value in enumerate(subsets)}
    colour_map = colormaps["viridis"].resampled(max(len(subsets), 2))
    norm = BoundaryNorm([index - 0.5 for index in range(len(subsets) + 1)], colour_map.N)
    for index, (label, key, points) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        legend = []
        for finished in (True, False):
            chosen = [t for t in points if (t.status == "finished") == finished]
            if not chosen:
                continue
            colours = colour_map(norm([position[t.subsets_per_batch] for t in chosen]))
            axes.scatter(
                [t.temperature for t in chosen],
                [getattr(t, key) for t in chosen],
                facecolors=colours if finished else "none",
                edgecolors=colours,
                s=60,
                linewidths=1.5,
            )
            # Grey stand-ins, because the markers themselves take the colour of A.
            legend.append(Line2D(
                [], [], linestyle="none", marker="o", markersize=7, color="grey",
                markerfacecolor="grey" if finished else "none",
                label="ran every epoch" if finished else "stopped early",
            ))
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("prototype-loss temperature t (log scale)")
        axes.set_ylabel(label)
        axes.grid(True, which="both", alpha=0.3)
        if legend:
            axes.legend(handles=legend, loc="best", fontsize="small")
    colorbar = figure.colorbar(
        ScalarMappable(norm=norm, cmap=colour_map), ax=figure.axes, ticks=range(len(subsets))
    )
    colorbar.set_ticklabels([str(value) for value in subsets])
    colorbar.set_label("subsets per batch A")
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    return path
