"""Driver of a Ray Tune sweep: checks, the MLflow parent run, `Tuner.fit`, the winner.

The driver resolves every path and checks every setting before Ray starts a trial. It
creates the parent run and writes the sweep's settings beside Tune's state, so `--resume`
needs only the name. After the trials it picks the best one, writes its config as YAML for
`jobs/train.py --config`, plots the sweep, and registers the best trial's bundle (weights +
calibration statistics) with the alias `tuned`. `jobs/tune.py` is the front end.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dymo_ray.bundle import ModelBundle
from dymo_ray.config import ConfigError, TrainConfig, build_config, config_to_dict, save_yaml_config
from dymo_ray.data.io import load_card
from dymo_ray.models.backbone import BackboneConfig, FusionBackbone
from dymo_ray.paths import run_dir
from dymo_ray.tracking import MlflowRunLogger, _client, ensure_experiment, register_artifact
from dymo_ray.train.backbone_job import backbone_config_for, load_job_card, resolve_config
from dymo_ray.train.common import format_duration, read_checkpoint_state
from dymo_ray.tune.report import (
    UNFINISHED,
    TrialSummary,
    plot_sweep,
    summarize_result,
    trials_table,
)
from dymo_ray.tune.settings import (
    OBJECTIVE_KEYS,
    SweepConfig,
    check_against_card,
    subsets_range_for,
)
from dymo_ray.tune.space import (
    build_param_space,
    build_scheduler,
    build_searcher,
    resolve_concurrency,
)
from dymo_ray.tune.trial import PARENT_TAG, TRIAL_TAG, run_trial, trial_train_config

logger = logging.getLogger(__name__)

SETTINGS_FILE = "sweep.json"
BEST_CONFIG_FILE = "best_config.yaml"
PLOT_FILE = "sweep_plot.png"
SETTINGS_VERSION = 1
VERSION_TAG = "dymo.tune.registered_version"
TRIAL_DIR_PREFIX = "trial_"


class SweepError(RuntimeError):
    """A sweep finished but no trial produced a usable objective value."""


@dataclass
class SweepOutcome:
    """Outputs of a sweep. The best-trial fields are None when it was interrupted."""

    name: str
    path: Path
    parent_run_id: str
    objective: str
    trials: list[TrialSummary]
    interrupted: bool
    tune_tau: bool = False
    best: TrialSummary | None = None
    best_config: TrainConfig | None = None
    best_config_path: Path | None = None
    plot_path: Path | None = None
    model_uri: str | None = None
    alias_uri: str | None = None
    version: str | None = None
    seconds: float = 0.0

    def table(self) -> str:
        """Return the trials as a text table, best objective first."""
        return trials_table(self.trials, self.objective, self.tune_tau)


def sweep_root() -> Path:
    """Return the folder of every sweep's Tune state: `<run folder>/tune`."""
    return run_dir() / "tune"


def run_sweep(
    sweep: SweepConfig,
    train_cfg: TrainConfig,
    tracking_uri: str | None = None,
    callbacks: list[Any] | None = None,
) -> SweepOutcome:
    """Run a new sweep to completion or until interrupted. Ray must be initialised.

    Args:
        sweep: Search space, scheduler, searcher, objective and resources.
        train_cfg: Settings shared by every trial; `temperature` and `subsets_per_batch`
            are replaced by the sampled values.
        tracking_uri: MLflow store; default `dymo_ray.tracking.tracking_uri()`.
        callbacks: Extra Tune callbacks (e.g. a test's interruption hook).

    Returns:
        The outcome; `interrupted` is True when Tune stopped on SIGINT or SIGUSR1 before
        every trial ended, and `resume_sweep(outcome.name)` then continues it.

    Raises:
        ConfigError, CardError: invalid settings or data, or the sweep name already exists.
        ClusterTooSmallError: the trials cannot be placed on the cluster.
        SweepError: no trial reported the objective.
    """
    from ray import tune

    from dymo_ray import tracking

    started = time.perf_counter()
    if train_cfg.use_gpu:
        raise ConfigError(
            "use_gpu=true is not supported in a sweep: each trial trains in one process on "
            "the CPU; set use_gpu=false"
        )
    data_dir, card = load_job_card(train_cfg)
    cfg = replace(resolve_config(train_cfg, card), data_dir=str(data_dir))
    check_against_card(sweep, card)
    subsets_range = subsets_range_for(sweep, card)
    scheduler = build_scheduler(sweep, int(cfg.epochs))
    concurrency = resolve_concurrency(sweep)
    searcher = build_searcher(sweep, concurrency)
    uri = tracking_uri or tracking.tracking_uri()
    recovery = _resolve_recovery(sweep, card.name, uri) if sweep.objective == "val_dymo" else None

    name = sweep.name or f"sweep-{card.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = sweep_root() / name
    if path.exists():
        raise ConfigError(
            f"sweep folder {path} already exists; pass --resume to continue sweep {name!r} "
            "or choose another --name"
        )
    backbone = backbone_config_for(cfg, card)
    parent, experiment_id = _start_parent_run(cfg.experiment, name, uri)
    try:
        parent.log_params({
            **{f"sweep.{key}": value for key, value in config_to_dict(sweep).items()},
            "sweep.name": name,
            "sweep.max_concurrent_resolved": concurrency,
            "sweep.subsets_range_resolved": list(subsets_range),
            **{f"train.{key}": value for key, value in config_to_dict(cfg).items()},
            "backbone": backbone.to_dict(),
        })
        parent.log_dict(card.to_dict(), "dataset_card.json")
        settings = {
            "version": SETTINGS_VERSION,
            "name": name,
            "sweep": {**config_to_dict(sweep), "name": name},
            "train": config_to_dict(cfg),
            # The best config keeps the data folder only when the user chose one, so a
            # YAML made from the default location stays portable.
            "data_dir_given": str(data_dir) if train_cfg.data_dir else None,
            "data_dir": str(data_dir),
            "backbone": backbone.to_dict(),
            "tracking_uri": uri,
            "experiment_id": experiment_id,
            "parent_run_id": parent.run_id,
            "recovery": recovery,
            "max_concurrent": concurrency,
            "subsets_range": list(subsets_range),
            "epochs": int(cfg.epochs),
        }
        path.mkdir(parents=True)
        (path / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        logger.info(
            "sweep %s: %d trials (%d at once, %g CPU each), %s scheduler, %s search, objective "
            "%s; Tune state in %s; MLflow parent run %s",
            name, sweep.num_samples, concurrency, sweep.cpus_per_trial, sweep.scheduler,
            sweep.search, sweep.objective, path, parent.run_id,
        )
        tuner = tune.Tuner(
            _trainable(settings),
            param_space=build_param_space(sweep, subsets_range),
            tune_config=tune.TuneConfig(
                num_samples=sweep.num_samples,
                scheduler=scheduler,
                search_alg=searcher,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(sweep_root()),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                # A failed trial restarts from its last checkpoint.
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                callbacks=callbacks,
            ),
        )
    except BaseException:
        parent.end("FAILED")
        raise
    return _fit_and_finish(tuner, settings, parent, started)


def resume_sweep(name: str) -> SweepOutcome:
    """Resume an interrupted sweep from its Tune state and finish it. Ray must be initialised.

    Finished trials are kept, unfinished ones resume from their last checkpoint, errored
    ones are retried, and the sweep's own settings (saved at its start) are used.

    Raises:
        ConfigError: no sweep of that name exists under the run folder.
        ClusterTooSmallError: the saved concurrency does not fit the connected cluster.
        SweepError: no trial reported the objective.
    """
    from ray import tune

    started = time.perf_counter()
    path = sweep_root() / name
    settings_path = path / SETTINGS_FILE
    if not settings_path.exists():
        known = sorted(p.parent.name for p in sweep_root().glob(f"*/{SETTINGS_FILE}"))
        raise ConfigError(
            f"no sweep {name!r} to resume: {settings_path} not found; sweeps in "
            f"{sweep_root()}: {known or 'none'}"
        )
    settings = json.loads(settings_path.read_text())
    if settings.get("version") != SETTINGS_VERSION:
        raise ConfigError(
            f"{settings_path} has settings version {settings.get('version')!r}; this dymo_ray "
            f"resumes version {SETTINGS_VERSION}"
        )
    sweep = build_config(SweepConfig, settings["sweep"])
    resolve_concurrency(replace(sweep, max_concurrent=settings["max_concurrent"]))
    parent = MlflowRunLogger(settings["parent_run_id"], settings["tracking_uri"])
    _client(settings["tracking_uri"]).update_run(parent.run_id, status="RUNNING")
    logger.info("resuming sweep %s from %s (MLflow parent run %s)", name, path, parent.run_id)
    tuner = tune.Tuner.restore(str(path), trainable=_trainable(settings), resume_errored=True)
    return _fit_and_finish(tuner, settings, parent, started)


def _trainable(settings: dict[str, Any]) -> Any:
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(run_trial, settings=settings),
        {"cpu": settings["sweep"]["cpus_per_trial"]},
    )


def _trial_dirname(trial: Any) -> str:
    return f"{TRIAL_DIR_PREFIX}{trial.trial_id}"


def _resolve_recovery(sweep: SweepConfig, dataset: str, uri: str) -> dict[str, str]:
    """Pin the recovery model of the val_dymo objective, so every trial uses one version.

    Raises:
        ConfigError: the registry has no such model, naming the job that registers one.
    """
    from dymo_ray import tracking
    from dymo_ray.tune.objective import RECOVERY_BASELINES

    reference = sweep.recovery or f"models:/dymo-recovery-{dataset}@latest"
    if reference in RECOVERY_BASELINES:
        return {"kind": "baseline", "name": reference}
    if not reference.startswith("models:/"):
        raise ConfigError(
            f"recovery {reference!r} is neither a models:/ URI nor a baseline; valid: "
            f"models:/<name>@<alias>, models:/<name>/<version>, {list(RECOVERY_BASELINES)}"
        )
    try:
        model_name, version = tracking.resolve_model_version(reference, uri)
    except ValueError as error:
        raise ConfigError(
            f"recovery model {reference} is not in the MLflow store {uri}: {error}. Register "
            "one with python jobs/train_recovery.py, or pass --recovery zeros or noise"
        ) from error
    return {"kind": "registry", "uri": f"models:/{model_name}/{version}", "requested": reference}


def _start_parent_run(experiment: str, name: str, uri: str) -> tuple[MlflowRunLogger, str]:
    """Create the sweep's parent run, nested under the caller's active MLflow run if any."""
    import mlflow

    experiment_id = ensure_experiment(experiment, uri)
    tags = {"stage": "tune", "dymo.tune.sweep": name}
    active = mlflow.active_run()
    if active is not None:
        if mlflow.get_tracking_uri() == uri:
            # Nested runs show under their parent only within one experiment.
            experiment_id = active.info.experiment_id
            tags[PARENT_TAG] = active.info.run_id
            logger.info("nesting the sweep's parent run under the active run %s", active.info.run_id)
        else:
            logger.warning(
                "MLflow run %s is active in another store (%s), so the sweep's parent run in %s "
                "is not nested under it", active.info.run_id, mlflow.get_tracking_uri(), uri,
            )
    run = _client(uri).create_run(experiment_id, run_name=name, tags=tags)
    return MlflowRunLogger(run.info.run_id, uri), experiment_id


def _child_runs(settings: dict[str, Any]) -> dict[str, Any]:
    """Return the sweep's child runs keyed by Tune trial id."""
    client = _client(settings["tracking_uri"])
    runs = client.search_runs(
        [settings["experiment_id"]],
        filter_string=f"tags.`{PARENT_TAG}` = '{settings['parent_run_id']}'",
        max_results=10_000,
    )
    return {run.data.tags[TRIAL_TAG]: run for run in runs if TRIAL_TAG in run.data.tags}


def _fit_and_finish(
    tuner: Any, settings: dict[str, Any], parent: MlflowRunLogger, started: float
) -> SweepOutcome:
    from ray.tune import ExperimentAnalysis

    sweep = build_config(SweepConfig, settings["sweep"])
    objective_key = OBJECTIVE_KEYS[sweep.objective]
    try:
        grid = tuner.fit()
    except BaseException:
        parent.end("FAILED")
        raise

    # Tune's saved state has each trial's status: TERMINATED, ERROR, or PENDING / PAUSED
    # when the sweep was interrupted. A `Result` does not have it.
    path = sweep_root() / settings["name"]
    statuses = {trial.trial_id: trial.status for trial in ExperimentAnalysis(str(path)).trials}
    results = {}
    trials = []
    for result in grid:
        # `_trial_dirname` names each trial folder, also for trials that never reported.
        trial_id = Path(result.path).name.removeprefix(TRIAL_DIR_PREFIX)
        summary = summarize_result(
            result, trial_id, statuses.get(trial_id, "PENDING"), objective_key,
            sweep.scheduler, sweep.tau, settings["epochs"],
            _stopped_by_patience(result, settings["epochs"]),
        )
        results[summary.trial_id] = result
        trials.append(summary)
    children = _child_runs(settings)
    for trial in trials:
        child = children.get(trial.trial_id)
        trial.run_id = child.info.run_id if child is not None else None
    # After an interruption the in-memory trials count as TERMINATED, so the saved
    # statuses decide whether the sweep ended.
    ended = sum(trial.status != UNFINISHED for trial in trials)
    interrupted = ended < len(trials)
    _close_child_runs(settings, trials, children)
    outcome = SweepOutcome(
        name=settings["name"],
        path=path,
        parent_run_id=parent.run_id,
        objective=sweep.objective,
        trials=trials,
        interrupted=interrupted,
        tune_tau=sweep.tune_tau,
    )
    if interrupted:
        parent.set_tags({"dymo.tune.status": f"interrupted after {ended} of {len(trials)} trials"})
        parent.end("KILLED")
        outcome.seconds = time.perf_counter() - started
        logger.warning(
            "sweep %s was interrupted with %d of %d trials ended; resume it with "
            "python jobs/tune.py --resume --name %s", settings["name"], ended, len(trials),
            settings["name"],
        )
        return outcome

    try:
        _finish_best(outcome, settings, sweep, results, parent)
    except BaseException:
        parent.end("FAILED")
        raise
    parent.set_tags({"dymo.tune.status": "finished"})
    parent.end("FINISHED")
    outcome.seconds = time.perf_counter() - started
    logger.info("sweep %s finished in %s", settings["name"], format_duration(outcome.seconds))
    return outcome


def _stopped_by_patience(result: Any, epochs: int) -> bool:
    """Return whether a trial's last checkpoint records a stop by the patience rule."""
    epochs_run = int((result.metrics or {}).get("epoch", 0) or 0)
    if result.checkpoint is None or not 0 < epochs_run < epochs:
        return False
    return bool(read_checkpoint_state(result.checkpoint).get("stopped_early"))


def _close_child_runs(
    settings: dict[str, Any], trials: list[TrialSummary], children: dict[str, Any]
) -> None:
    # Tune ends a trial stopped by the scheduler before the trial's own code can close its
    # run, so the driver sets the final status of every ended trial's run. Runs of
    # unfinished trials of an interrupted sweep stay open until the sweep is resumed.
    client = _client(settings["tracking_uri"])
    for trial in trials:
        child = children.get(trial.trial_id)
        if child is None or trial.status == UNFINISHED:
            continue
        client.set_tag(child.info.run_id, "dymo.tune.status", trial.status)
        run_status = "FAILED" if trial.status == "error" else "FINISHED"
        if child.info.status != run_status:
            client.set_terminated(child.info.run_id, status=run_status)


def _finish_best(
    outcome: SweepOutcome,
    settings: dict[str, Any],
    sweep: SweepConfig,
    results: dict[str, Any],
    parent: MlflowRunLogger,
) -> None:
    """Pick the best trial, write and log its YAML config and the plot, register its bundle."""
    objective_key = OBJECTIVE_KEYS[sweep.objective]
    candidates = [t for t in outcome.trials if t.status != "error" and math.isfinite(t.objective)]
    if not candidates:
        raise SweepError(
            f"no trial of sweep {outcome.name} reported {objective_key}; see the trial errors "
            f"in {outcome.path}"
        )
    best = max(candidates, key=lambda t: t.objective)
    outcome.best = best

    # ------------------------------------------------ best config YAML
    base = build_config(TrainConfig, {**settings["train"], "data_dir": settings["data_dir_given"]})
    best_config = replace(
        base,
        temperature=best.temperature,
        subsets_per_batch=best.subsets_per_batch,
        run_name=None,
    )
    config_path = outcome.path / BEST_CONFIG_FILE
    header = (
        f"# Best trial {best.trial_id} of Tune sweep {outcome.name}: {objective_key} = "
        f"{best.objective:.4f}.\n"
        f"# Train it with: python jobs/train.py --config {config_path}\n"
        f"# Its selection temperature tau was {best.tau:g} (a selection setting, not a "
        "TrainConfig key)."
    )
    save_yaml_config(best_config, config_path, header=header)
    outcome.best_config = best_config
    outcome.best_config_path = config_path

    # ------------------------------------------------ plot and table
    plot_path = plot_sweep(
        outcome.trials, outcome.path / PLOT_FILE,
        title=f"{outcome.name}: {len(outcome.trials)} trials, objective {sweep.objective}",
    )
    outcome.plot_path = plot_path
    parent.log_artifact(config_path)
    parent.log_artifact(plot_path)
    parent.log_dict({"trials": [t.to_dict() for t in outcome.trials]}, "trials.json")
    parent.log_metrics({f"best/{objective_key}": best.objective})
    parent.set_tags({
        "dymo.tune.best_trial_id": best.trial_id,
        "dymo.tune.best_run_id": str(best.run_id),
        "dymo.tune.best_temperature": f"{best.temperature:.6g}",
        "dymo.tune.best_subsets_per_batch": str(best.subsets_per_batch),
        "dymo.tune.best_tau": f"{best.tau:.6g}",
    })

    # ------------------------------------------------ bundle of the best trial
    existing = _client(settings["tracking_uri"]).get_run(parent.run_id).data.tags.get(VERSION_TAG)
    if existing is not None:
        # A resumed sweep that had already finished keeps its registered version.
        outcome.version = existing
    else:
        outcome.version = _register_best_bundle(settings, sweep, best, results[best.trial_id])
        parent.set_tags({VERSION_TAG: outcome.version})
    outcome.model_uri = f"models:/{sweep.registered_model}/{outcome.version}"
    outcome.alias_uri = f"models:/{sweep.registered_model}@{sweep.alias}"


def _register_best_bundle(
    settings: dict[str, Any], sweep: SweepConfig, best: TrialSummary, result: Any
) -> str:
    """Compute the best trial's calibration statistics, log its bundle, register it."""
    from dymo_ray.tune.objective import training_calibration_stats

    if result.checkpoint is None:
        raise SweepError(f"best trial {best.trial_id} has no checkpoint to register")
    if best.run_id is None:
        raise SweepError(f"best trial {best.trial_id} has no MLflow child run")
    state = read_checkpoint_state(result.checkpoint)
    card = load_card(settings["data_dir"])
    model = FusionBackbone(card, BackboneConfig.from_dict(settings["backbone"]))
    model.load_state_dict(state["best_model"])
    model.eval()
    trial_cfg = trial_train_config(
        settings, {"temperature": best.temperature, "subsets_per_batch": best.subsets_per_batch}
    )
    logger.info(
        "computing calibration statistics of trial %s (best epoch %d)", best.trial_id,
        state["best_epoch"],
    )
    with torch.inference_mode():
        stats = training_calibration_stats(
            model, settings["data_dir"], trial_cfg.train_limit, trial_cfg.seed
        )
    recovery = settings.get("recovery") or {}
    bundle = ModelBundle(
        model=model,
        card=card,
        stats=stats,
        train_config=config_to_dict(trial_cfg),
        recovery_uri=recovery.get("uri"),
    )
    bundle_dir = bundle.save(Path(tempfile.mkdtemp(prefix="dymo_ray_bundle_")) / "bundle")
    uri = settings["tracking_uri"]
    MlflowRunLogger(best.run_id, uri).log_artifact(bundle_dir, "bundle")
    return register_artifact(
        best.run_id, "bundle", sweep.registered_model, sweep.alias, uri=uri,
        tags={"dataset": card.name, "tune_sweep": settings["name"], "tune_trial_id": best.trial_id},
    )
