"""Trial summaries, the trials table and the sweep plot, on hand-made Tune results."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from dymo_ray.tune.report import TrialSummary, plot_sweep, summarize_result, trials_table


def fake_result(epoch: int, error=None, **metrics) -> SimpleNamespace:
    return SimpleNamespace(
        metrics={"epoch": epoch, "best_val_acc": 0.5, **metrics},
        config={"temperature": 0.1, "subsets_per_batch": 5},
        error=error,
    )


def status_of(result, tune_status="TERMINATED", patience=False) -> str:
    summary = summarize_result(
        result, "t1", tune_status, "best_val_acc", "asha", 0.1, epochs=4,
        stopped_by_patience=patience,
    )
    return summary.status


def test_trial_that_ran_every_epoch_finished():
    assert status_of(fake_result(4, done=False)) == "finished"


def test_asha_stop_despite_done_flag():
    """Ray 2.60 marks the last result of an ASHA-stopped trial done=True."""
    assert status_of(fake_result(1, done=True)) == "stopped by asha"


def test_patience_stop_is_finished():
    assert status_of(fake_result(2), patience=True) == "finished"


def test_dymo_report_marks_finished():
    assert status_of(fake_result(2, val_dymo=0.7)) == "finished"


def test_errored_trial():
    assert status_of(fake_result(1, error=RuntimeError("boom")), tune_status="ERROR") == "error"


def test_pending_trial_unfinished():
    assert status_of(fake_result(1), tune_status="PENDING") == "unfinished"


def test_summary_values():
    summary = summarize_result(
        fake_result(4, val_dymo=0.75), "t1", "TERMINATED", "val_dymo", "fifo", 0.3, 4, False
    )
    assert summary.objective == 0.75
    assert summary.tau == 0.3
    assert summary.subsets_per_batch == 5
    assert math.isnan(summary.val_discard)


def trial(trial_id: str, objective: float, status: str = "finished") -> TrialSummary:
    return TrialSummary(trial_id, 0.1, 3, 0.1, 2, objective, math.nan, math.nan, status, objective)


def test_table_orders_best_first():
    table = trials_table([trial("low", 0.2), trial("high", 0.9), trial("none", math.nan)], "val_acc", False)
    lines = table.splitlines()
    assert lines[2].startswith("high")
    assert lines[3].startswith("low")
    assert lines[4].startswith("none")
    assert " - " in lines[4]


def test_plot_writes_png(tmp_path):
    trials = [trial("a", 0.4), trial("b", 0.5, status="stopped by asha")]
    path = plot_sweep(trials, tmp_path / "sweep.png", "test sweep")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("objective", ["val_acc", "val_dymo"])
def test_table_columns_per_objective(objective):
    header = trials_table([trial("a", 0.4)], objective, tune_tau=True).splitlines()[0]
    assert "tau" in header
    assert ("val dymo" in header) == (objective == "val_dymo")
