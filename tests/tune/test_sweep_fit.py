"""Ray Tune sweeps on a real local Ray (2 CPUs) with a temporary SQLite MLflow store."""

from __future__ import annotations

import csv
import importlib.util
import os
import signal
from pathlib import Path

import pytest
from ray import tune

from dymo_ray.config import ConfigError, TrainConfig, build_config
from dymo_ray.paths import project_root
from dymo_ray.train.common import ClusterTooSmallError
from dymo_ray.tune.driver import resume_sweep, run_sweep
from dymo_ray.tune.settings import SweepConfig

pytestmark = [pytest.mark.slow]

# A small backbone keeps a 2-epoch trial on the tiny dataset to about 15 s on 2 loaded cores.
TINY_MODEL = {"width": 32, "heads": 2, "projection_dim": 16, "batch_size": 64}


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_job", project_root() / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_config(data_dir: Path, **overrides) -> TrainConfig:
    values = {"data_dir": str(data_dir), "epochs": 2, "aux_start_epoch": 1, **TINY_MODEL, **overrides}
    return build_config(TrainConfig, values)


def sweep_config(**values) -> SweepConfig:
    return build_config(SweepConfig, values)


def child_runs(client, parent_run_id: str) -> list:
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )


class InterruptAfterTrials(tune.Callback):
    """Send SIGUSR1 to the driver once `count` trials completed, as Ctrl-C would.

    Tune handles SIGUSR1 like SIGINT: it saves the experiment state and returns. A marker
    file makes it fire once, also in the copy that `Tuner.restore` unpickles.
    """

    def __init__(self, count: int, marker: Path) -> None:
        self.count = count
        self.marker = marker
        self.completed = 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.completed += 1
        if self.completed >= self.count and not self.marker.exists():
            self.marker.write_text(f"interrupted after trial {trial.trial_id}\n")
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.timeout(420)
def test_smoke_sweep_end_to_end(ray_local, mlflow_store, tiny_polymnist, capsys):
    from mlflow.tracking import MlflowClient

    from dymo_ray.bundle import load_bundle

    job = load_job("tune")
    code = job.main([
        "--smoke", "--name", "smoke", "--data-dir", str(tiny_polymnist),
        *[arg for key, value in TINY_MODEL.items() for arg in ("--set", f"{key}={value}")],
    ])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "temperature" in output
    assert "best config YAML:" in output
    assert "plot:" in output
    assert "registered: models:/dymo-backbone/1" in output

    client = MlflowClient(mlflow_store)
    home = Path(os.environ["DYMO_RAY_HOME"])
    parent = client.search_runs(
        [client.get_experiment_by_name("dymo").experiment_id],
        filter_string="tags.`dymo.tune.sweep` = 'smoke'",
    )
    assert len(parent) == 1
    parent = parent[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.num_samples"] == "4"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "best_config.yaml" in artifacts
    assert "sweep_plot.png" in artifacts
    assert "trials.json" in artifacts
    plot = home / "tune" / "smoke" / "sweep_plot.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(plot) in output

    children = child_runs(client, parent.info.run_id)
    assert len(children) == 4
    assert {child.info.status for child in children} == {"FINISHED"}
    for child in children:
        assert "temperature" in child.data.params
        assert "subsets_per_batch" in child.data.params
        assert 0.02 <= float(child.data.params["temperature"]) <= 1.0
        assert 1 <= int(child.data.params["subsets_per_batch"]) <= 31
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/acc")]
        assert steps and steps == sorted(set(steps))

    bundle = load_bundle("models:/dymo-backbone@tuned", tracking_uri=mlflow_store)
    assert bundle.stats is not None
    assert bundle.card.name == "polymnist"
    best_run_id = parent.data.tags["dymo.tune.best_run_id"]
    best = client.get_run(best_run_id)
    assert bundle.train_config["temperature"] == pytest.approx(float(best.data.params["temperature"]))

    # The best config loads through the same code path as `jobs/train.py --config`.
    best_yaml = home / "tune" / "smoke" / "best_config.yaml"
    train_job = load_job("train")
    loaded = train_job.build_train_config(train_job.parse_args(["--config", str(best_yaml)]))
    assert loaded.temperature == pytest.approx(float(best.data.params["temperature"]))
    assert loaded.subsets_per_batch == int(best.data.params["subsets_per_batch"])
    assert loaded.width == 32
    assert loaded.data_dir == str(tiny_polymnist)


@pytest.mark.timeout(300)
def test_sweep_nests_under_active_run_val_dymo(ray_local, mlflow_store, tiny_polymnist, tmp_path):
    """An active run becomes the sweep's parent, and val_dymo uses the registered recovery."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from dymo_ray.data.io import load_card
    from dymo_ray.recovery import build_recovery, save_recovery
    from dymo_ray.tracking import MlflowRunLogger, ensure_experiment, register_artifact

    pytest.importorskip("optuna")
    client = MlflowClient(mlflow_store)
    recovery_run = MlflowRunLogger.start("recovery", "noise", uri=mlflow_store)
    folder = save_recovery(build_recovery("noise", load_card(tiny_polymnist)), tmp_path / "noise")
    recovery_run.log_artifact(folder, "recovery")
    register_artifact(recovery_run.run_id, "recovery", "dymo-recovery-polymnist", "latest", uri=mlflow_store)
    recovery_run.end()

    # The fluent API reads the store from MLFLOW_TRACKING_URI, set by `mlflow_store`. The
    # nested sweep logs into the outer run's experiment, so that experiment gets an artifact
    # folder in the temporary store (MLflow's default experiment would write to ./mlruns).
    outer_experiment = ensure_experiment("outer", mlflow_store)
    with mlflow.start_run(run_name="outer", experiment_id=outer_experiment) as outer:
        outcome = run_sweep(
            sweep_config(name="dymo", num_samples=2, scheduler="fifo", search="optuna",
                         objective="val_dymo", tune_tau=True, subsets_range=[2, 3]),
            train_config(tiny_polymnist, epochs=1),
        )
    assert not outcome.interrupted
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["mlflow.parentRunId"] == outer.info.run_id
    assert parent.info.experiment_id == outer.info.experiment_id
    children = child_runs(client, outcome.parent_run_id)
    assert len(children) == 2
    for trial in outcome.trials:
        assert trial.status == "finished"
        assert 0.0 <= trial.val_dymo <= 1.0
        assert 2 <= trial.subsets_per_batch <= 3
        assert 0.02 <= trial.tau <= 1.0
    assert outcome.best.objective == max(t.val_dymo for t in outcome.trials)
    for child in children:
        assert "val/random:0.6/dymo/acc" in child.data.metrics
        assert "tau" in child.data.params
    registered = client.get_model_version_by_alias("dymo-backbone", "tuned")
    assert registered.run_id == outcome.best.run_id


@pytest.mark.timeout(420)
def test_interrupted_sweep_resumes_to_completion(ray_local, mlflow_store, tiny_polymnist, tmp_path):
    from mlflow.tracking import MlflowClient

    marker = tmp_path / "interrupted"
    first = run_sweep(
        sweep_config(name="resumable", num_samples=4, max_concurrent=2, scheduler="fifo"),
        train_config(tiny_polymnist),
        callbacks=[InterruptAfterTrials(1, marker)],
    )
    assert marker.exists()
    assert first.interrupted
    assert first.best is None
    finished_before = {t.trial_id for t in first.trials if t.status == "finished"}
    assert 1 <= len(finished_before) < 4
    client = MlflowClient(mlflow_store)
    assert client.get_run(first.parent_run_id).info.status == "KILLED"
    rows_before = {trial_id: progress_epochs(first.path, trial_id) for trial_id in finished_before}

    second = resume_sweep("resumable")
    assert not second.interrupted
    assert second.parent_run_id == first.parent_run_id
    assert len(second.trials) == 4
    assert {t.trial_id for t in second.trials} >= {t.trial_id for t in first.trials}
    assert {t.status for t in second.trials} == {"finished"}
    for trial in second.trials:
        # Each epoch of every trial ran and was reported once, across both runs.
        assert progress_epochs(second.path, trial.trial_id) == [1, 2]
    for trial_id, epochs in rows_before.items():
        assert progress_epochs(second.path, trial_id) == epochs
    children = child_runs(client, first.parent_run_id)
    assert len(children) == 4
    assert {child.info.status for child in children} == {"FINISHED"}
    assert client.get_run(first.parent_run_id).info.status == "FINISHED"
    assert second.version == "1"


def progress_epochs(sweep_path: Path, trial_id: str) -> list[int]:
    with open(sweep_path / f"trial_{trial_id}" / "progress.csv") as handle:
        return [int(float(row["epoch"])) for row in csv.DictReader(handle)]


@pytest.mark.timeout(120)
def test_too_many_concurrent_trials_fail_fast(ray_local, mlflow_store, tiny_polymnist):
    with pytest.raises(ClusterTooSmallError, match=r"max_concurrent=3 x cpus_per_trial=1 needs 3 CPUs.*has 2"):
        run_sweep(sweep_config(max_concurrent=3), train_config(tiny_polymnist))


@pytest.mark.timeout(120)
def test_trial_larger_than_cluster_fails_fast(ray_local, mlflow_store, tiny_polymnist):
    with pytest.raises(ClusterTooSmallError, match=r"cpus_per_trial=4 is more than the 2 CPUs"):
        run_sweep(sweep_config(cpus_per_trial=4), train_config(tiny_polymnist))


@pytest.mark.timeout(120)
def test_existing_sweep_name_needs_resume(ray_local, mlflow_store, tiny_polymnist):
    (Path(os.environ["DYMO_RAY_HOME"]) / "tune" / "taken").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already exists; pass --resume"):
        run_sweep(sweep_config(name="taken"), train_config(tiny_polymnist))


@pytest.mark.timeout(120)
def test_missing_recovery_model_rejected(ray_local, mlflow_store, tiny_polymnist):
    with pytest.raises(ConfigError, match=r"recovery model models:/dymo-recovery-polymnist@latest is not in"):
        run_sweep(sweep_config(objective="val_dymo"), train_config(tiny_polymnist))


def test_resume_unknown_sweep_rejected(mlflow_store):
    with pytest.raises(ConfigError, match="no sweep 'absent' to resume"):
        resume_sweep("absent")
