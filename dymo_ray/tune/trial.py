"""The Tune trial: the backbone training loop of `jobs/train.py`, run in one process.

Each trial trains with its sampled temperature and `subsets_per_batch` by calling
`dymo_ray.train.backbone_loop.train_backbone` with `session="tune"`, so the loop reports and
checkpoints through `ray.tune`. The loop logs its per-epoch metrics to the trial's MLflow
child run. With the `val_dymo` objective the trial then scores its best weights with the
DyMo selector and reports that score once more.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from dymo_ray.config import TrainConfig, build_config, config_to_dict
from dymo_ray.data.io import load_card, load_split
from dymo_ray.models.backbone import BackboneConfig, FusionBackbone
from dymo_ray.selection import SelectionConfig
from dymo_ray.tracking import MlflowRunLogger, _client
from dymo_ray.train.backbone_loop import train_backbone
from dymo_ray.train.common import limited_rows

logger = logging.getLogger(__name__)

# Tag of a child run that names its Tune trial, so a resumed trial reopens its own run.
TRIAL_TAG = "dymo.tune.trial_id"
PARENT_TAG = "mlflow.parentRunId"


def trial_train_config(settings: dict[str, Any], sampled: dict[str, Any]) -> TrainConfig:
    """Return the TrainConfig of one trial: the sweep's config with the sampled values."""
    values = {
        **settings["train"],
        "temperature": float(sampled["temperature"]),
        "subsets_per_batch": int(sampled["subsets_per_batch"]),
        # A trial is one process on `cpus_per_trial` CPUs, with no Ray Train workers.
        "num_workers": 0,
        "cpus_per_worker": settings["sweep"]["cpus_per_trial"],
    }
    if values.get("torch_threads") is None:
        values["torch_threads"] = max(1, int(settings["sweep"]["cpus_per_trial"]))
    return build_config(TrainConfig, values)


def open_child_run(
    settings: dict[str, Any], trial_id: str, params: dict[str, Any]
) -> MlflowRunLogger:
    """Return the MLflow child run of a trial, created on its first start.

    A trial restarted after a failure or a `--resume` finds its run by the trial-id tag and
    logs on into it, so every trial has exactly one child run.
    """
    uri = settings["tracking_uri"]
    parent_run_id = settings["parent_run_id"]
    client = _client(uri)
    existing = client.search_runs(
        [settings["experiment_id"]],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
    )
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        logger.info("trial %s logs on into its MLflow run %s", trial_id, run_id)
        return MlflowRunLogger(run_id, uri)
    run = client.create_run(
        settings["experiment_id"],
        run_name=f"trial-{trial_id}",
        tags={PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id, "stage": "tune-trial"},
    )
    tracker = MlflowRunLogger(run.info.run_id, uri)
    tracker.log_params(params)
    return tracker


def run_trial(config: dict[str, Any], settings: dict[str, Any]) -> None:
    """Train one backbone with the sampled values, then report the objective (a Tune trainable).

    Args:
        config: The sampled values: `temperature`, `subsets_per_batch` and, when tau is
            tuned, `tau`.
        settings: The sweep settings written by the driver (see `dymo_ray.tune.driver`):
            the base TrainConfig, data folder, backbone shape, MLflow ids, objective.
    """
    import ray.tune

    # The trial process starts without logging handlers. With one, the loop's per-epoch
    # line reaches the driver's console through Ray's log forwarding.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_train_config(settings, config)
    tau = float(config.get("tau", settings["sweep"]["tau"]))
    params = {**config_to_dict(cfg), "tau": tau, "trial_id": trial_id, "backbone": settings["backbone"]}
    tracker = open_child_run(settings, trial_id, params)
    objective = settings["sweep"]["objective"]
    loop_config = {
        "train": config_to_dict(cfg),
        "data_dir": settings["data_dir"],
        "backbone": settings["backbone"],
        "tracking_uri": settings["tracking_uri"],
        "run_id": tracker.run_id,
        "session": "tune",
        # Optuna checks every result for its metric, and val_dymo exists only at the end.
        "report_defaults": {"val_dymo": math.nan} if objective == "val_dymo" else {},
    }
    try:
        final_state = train_backbone(loop_config)
        if objective == "val_dymo":
            _report_dymo_objective(settings, cfg, tau, final_state, tracker)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")


def _report_dymo_objective(
    settings: dict[str, Any],
    cfg: TrainConfig,
    tau: float,
    final_state: dict[str, Any] | None,
    tracker: MlflowRunLogger,
) -> None:
    import ray.tune

    from dymo_ray.tune.objective import (
        dymo_validation_accuracy,
        load_trial_recovery,
        training_calibration_stats,
    )

    if final_state is None:
        raise RuntimeError("the training loop ran no epoch, so there are no weights to score")
    card = load_card(settings["data_dir"])
    model = FusionBackbone(card, BackboneConfig.from_dict(settings["backbone"]))
    model.load_state_dict(final_state["best_model"])
    model.eval()
    stats = training_calibration_stats(model, settings["data_dir"], cfg.train_limit, cfg.seed)
    val_rows = limited_rows(settings["data_dir"], "val", cfg.val_limit, cfg.seed)
    val = load_split(settings["data_dir"], "val", rows=val_rows)
    recovery = load_trial_recovery(settings["recovery"], card, settings["tracking_uri"])
    sweep = settings["sweep"]
    with torch.inference_mode():
        scores = dymo_validation_accuracy(
            model, stats, val, sweep["protocol"], recovery, SelectionConfig(tau=tau),
            seed=sweep["protocol_seed"],
        )
    epoch = int(final_state["epoch"]) + 1
    logger.info(
        "trial DyMo objective: val acc %.4f under %s (discard %.4f) on %d rows",
        scores["val_dymo"], sweep["protocol"], scores["val_discard"], scores["rows"],
    )
    protocol_key = sweep["protocol"]
    tracker.log_metrics(
        {
            f"val/{protocol_key}/dymo/acc": scores["val_dymo"],
            f"val/{protocol_key}/discard/acc": scores["val_discard"],
            f"val/{protocol_key}/dymo/recovered_used": scores["val_recovered_used"],
        },
        step=epoch,
    )
    ray.tune.report({
        "epoch": epoch,
        "val_acc": float(final_state["best_acc"]),
        "best_val_acc": float(final_state["best_acc"]),
        "val_dymo": scores["val_dymo"],
        "val_discard": scores["val_discard"],
        "val_recovered_used": scores["val_recovered_used"],
    })
