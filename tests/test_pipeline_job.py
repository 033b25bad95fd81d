"""The pipeline job: stage order, the arguments each stage gets, and stopping at a failure.

Each stage is a job with tests of its own (recovery and backbone training in
tests/integration, evaluation in test_evaluate_job.py), so here the three training and
evaluation stages are replaced by recorders. The dataset stage runs for real on copies of
the tiny datasets in a temporary run folder.
"""

from __future__ import annotations

import importlib
import shutil
import sys

import pytest

from dymo_ray.paths import project_root

STAGES = ("train_recovery", "train", "evaluate")


@pytest.fixture()
def pipeline(tmp_path, monkeypatch, tiny_polymnist, tiny_mdt):
    """Yield the pipeline module, the list of stage calls and the status each stage returns."""
    home = tmp_path / "runs"
    shutil.copytree(tiny_polymnist, home / "data" / "polymnist")
    shutil.copytree(tiny_mdt, home / "data" / "mdt")
    monkeypatch.setenv("DYMO_RAY_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    # The pipeline imports its stages as top-level modules from jobs/, as it does when run
    # as a script.
    monkeypatch.syspath_prepend(str(project_root() / "jobs"))
    calls: list[tuple[str, list[str]]] = []
    statuses = dict.fromkeys(STAGES, 0)
    for stage in STAGES:
        module = importlib.import_module(stage)

        def record(argv, stage=stage):
            calls.append((stage, list(argv)))
            return statuses[stage]

        monkeypatch.setattr(module, "main", record)
    yield importlib.import_module("pipeline"), calls, statuses
    # Generic names such as `train` and `evaluate` must not stay importable after this test.
    for name in (*STAGES, "pipeline"):
        sys.modules.pop(name, None)


@pytest.mark.timeout(120)
def test_pipeline_smoke_stage_arguments(pipeline, capsys):
    module, calls, _ = pipeline

    assert module.main(["--smoke"]) == 0

    assert calls == [
        ("train_recovery", ["--dataset", "polymnist", "--model", "mopoe", "--smoke"]),
        ("train", ["--dataset", "polymnist", "--smoke"]),
        ("evaluate", ["--dataset", "polymnist", "--limit", "512", "--no-progress"]),
    ]
    out = capsys.readouterr().out
    assert "== 1. datasets" in out
    assert "polymnist" in out
    assert "mdt" in out
    assert "browse the runs: mlflow ui --backend-store-uri sqlite:///" in out


@pytest.mark.timeout(120)
def test_pipeline_full_stage_arguments(pipeline):
    module, calls, _ = pipeline

    assert module.main([]) == 0

    assert calls == [
        ("train_recovery", ["--dataset", "polymnist", "--model", "mopoe"]),
        ("train", ["--dataset", "polymnist"]),
        ("evaluate", ["--dataset", "polymnist", "--no-progress"]),
    ]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("failing", STAGES)
def test_pipeline_stops_at_failed_stage(pipeline, failing):
    module, calls, statuses = pipeline
    statuses[failing] = 3

    assert module.main(["--smoke"]) == 3

    called = [stage for stage, _ in calls]
    assert called == list(STAGES[: STAGES.index(failing) + 1])
