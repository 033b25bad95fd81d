"""Driver of the backbone training job: Ray Train fit, calibration statistics, registry.

The driver resolves every path, creates the MLflow run, runs the `TorchTrainer`, then
computes the calibration statistics on the training split with the best weights, saves the
bundle, logs it and registers it. `jobs/train.py` is the command-line front end.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dymo_ray.bundle import ModelBundle
from dymo_ray.config import ConfigError, TrainConfig, config_to_dict
from dymo_ray.data.io import load_card, load_split
from dymo_ray.data.spec import DatasetCard
from dymo_ray.models.backbone import BackboneConfig, FusionBackbone
from dymo_ray.paths import data_dir as default_data_dir
from dymo_ray.selection.calibration import compute_calibration_stats
from dymo_ray.subsets import num_subsets
from dymo_ray.train.backbone_loop import batches, train_backbone
from dymo_ray.train.common import (
    check_cluster_fits,
    fit_torch_trainer,
    format_duration,
    limited_rows,
)

logger = logging.getLogger(__name__)

# Epochs that fit the 20-minute budget of `jobs/train.py` on 2 CPU cores, with room for a
# busy machine. On an idle one a PolyMNIST epoch (14,000 rows, A = 5) takes about 15 s and the
# whole default command about 8 minutes (docs/BENCHMARKS.md). The authors ran 100 epochs on
# 60k PolyMNIST rows on a GPU.
DEFAULT_EPOCHS = {"polymnist": 30, "mdt": 10}


@dataclass
class TrainingOutcome:
    """Outputs and scores of a finished training job."""

    config: TrainConfig
    run_id: str
    model_uri: str
    version: str
    bundle_dir: Path
    best_val_acc: float
    best_epoch: int
    epochs_run: int
    seconds: float
    resumed_at: list[int]


def resolve_config(cfg: TrainConfig, card: DatasetCard) -> TrainConfig:
    """Fill the dataset-dependent defaults and check them against the card.

    Raises:
        ConfigError: `subsets_per_batch` is outside 1..2^M - 1.
    """
    subsets_per_batch = cfg.subsets_per_batch
    if subsets_per_batch is None:
        # The authors simulate 5 subsets per batch on PolyMNIST (5 modalities), 2 elsewhere.
        subsets_per_batch = 5 if card.num_modalities >= 5 else 2
    limit = num_subsets(card.num_modalities)
    if not 1 <= subsets_per_batch <= limit:
        raise ConfigError(
            f"subsets_per_batch={subsets_per_batch} is invalid for {card.num_modalities} "
            f"modalities ({card.modality_names}); valid range: 1..{limit}"
        )
    epochs = cfg.epochs or DEFAULT_EPOCHS.get(card.name, 10)
    return replace(cfg, subsets_per_batch=subsets_per_batch, epochs=epochs)


def backbone_config_for(cfg: TrainConfig, card: DatasetCard) -> BackboneConfig:
    """Return the card's default backbone shape with the config's overrides applied."""
    overrides: dict[str, Any] = {"metric": cfg.metric}
    for name in ("width", "heads", "blocks", "projection_dim"):
        value = getattr(cfg, name)
        if value is not None:
            overrides[name] = value
    try:
        return BackboneConfig.for_card(card, **overrides)
    except ValueError as error:
        raise ConfigError(str(error)) from error


def resolve_data_dir(cfg: TrainConfig) -> Path:
    """Return the absolute dataset folder, building the offline dataset if it is missing."""
    if cfg.data_dir:
        folder = Path(cfg.data_dir).expanduser().resolve()
        load_card(folder)  # raises CardError naming the folder when it is not a dataset
        return folder
    from dymo_ray.data.builders import ensure_dataset

    return Path(ensure_dataset(cfg.dataset, default_data_dir(cfg.dataset), seed=0)).resolve()


def load_job_card(cfg: Any) -> tuple[Path, DatasetCard]:
    """Resolve a job's dataset folder (building the offline dataset if missing) and load its card.

    Returns:
        The absolute dataset folder and its card.

    Raises:
        CardError: the folder contains no valid dataset card.
        ConfigError: the card names another dataset than `cfg.dataset`.
    """
    data_dir = resolve_data_dir(cfg)
    card = load_card(data_dir)
    if card.name != cfg.dataset:
        raise ConfigError(
            f"data_dir {data_dir} contains dataset {card.name!r} but dataset={cfg.dataset!r}; "
            "set dataset to match"
        )
    return data_dir, card


def run_training(
    cfg: TrainConfig,
    storage_path: str | Path | None = None,
    fault_injection: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
) -> TrainingOutcome:
    """Train, calibrate, log and register one backbone bundle; Ray must be initialised.

    Args:
        cfg: The training config (unresolved defaults allowed).
        storage_path: Ray Train storage folder; default `<run folder>/ray_results`.
        fault_injection: Test hook passed to the worker loop.
        tracking_uri: MLflow store; default `dymo_ray.tracking.tracking_uri()`.

    Returns:
        The run id, the registered model URI and version, the bundle folder and the scores.

    Raises:
        ConfigError, CardError: invalid settings or data.
        ClusterTooSmallError: the cluster cannot place the workers.
        ray.train.TrainingFailedError: the workers failed more than `max_failures` times.
        RuntimeError: the training run ended without reporting a checkpoint.
    """
    from dymo_ray import tracking

    started = time.perf_counter()
    data_dir, card = load_job_card(cfg)
    cfg = replace(resolve_config(cfg, card), data_dir=str(data_dir))
    # Check the files against the card here, so that a mismatch fails before any worker
    # starts, with the file and the column named (CardError).
    for split in ("train", "val"):
        load_split(data_dir, split, limit=1)
    backbone_config = backbone_config_for(cfg, card)
    check_cluster_fits(cfg.num_workers, cfg.cpus_per_worker, cfg.use_gpu, cfg.gpus_per_worker)

    uri = tracking_uri or tracking.tracking_uri()
    run_name = cfg.run_name or f"backbone-{card.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = tracking.MlflowRunLogger.start(cfg.experiment, run_name, uri=uri, tags={"stage": "backbone"})
    try:
        run.log_params({**config_to_dict(cfg), "backbone": backbone_config.to_dict()})
        run.log_dict(card.to_dict(), "dataset_card.json")
        logger.info("training %s on %s with %d worker(s); MLflow run %s",
                    card.name, data_dir, cfg.num_workers, run.run_id)

        loop_config = {
            "train": config_to_dict(cfg),
            "data_dir": str(data_dir),
            "backbone": backbone_config.to_dict(),
            "tracking_uri": uri,
            "run_id": run.run_id,
            "fault_injection": fault_injection,
        }
        state = fit_torch_trainer(train_backbone, loop_config, cfg, run_name, storage_path)

        # ------------------------------------------------ calibration statistics
        model = FusionBackbone(card, backbone_config)
        model.load_state_dict(state["best_model"])
        model.eval()
        logger.info("computing calibration statistics on the training split (best epoch %d)",
                    state["best_epoch"])
        train_rows = limited_rows(data_dir, "train", cfg.train_limit, cfg.seed)
        train_data = load_split(data_dir, "train", rows=train_rows)
        # One process is enough here. The pass encodes each row once and fuses it under every
        # subset, which took 21 s for 14,000 PolyMNIST rows and 31 subsets on 2 idle cores.
        with torch.inference_mode():
            stats = compute_calibration_stats(
                model, batches(train_data, 512, generator=None), card.num_classes
            )

        bundle = ModelBundle(model=model, card=card, stats=stats, train_config=config_to_dict(cfg))
        bundle_dir = Path(tempfile.mkdtemp(prefix="dymo_ray_bundle_")) / "bundle"
        bundle.save(bundle_dir)
        run.log_artifact(bundle_dir, "bundle")
        version = tracking.register_artifact(
            run.run_id, "bundle", cfg.registered_model, cfg.alias, uri=uri,
            tags={"dataset": card.name},
        )
        run.log_metrics({"val/best_acc": state["best_acc"], "best_epoch": state["best_epoch"]})
        run.set_tags({"registered_version": version})
        run.end("FINISHED")
    except BaseException:
        run.end("FAILED")
        raise
    seconds = time.perf_counter() - started
    model_uri = f"models:/{cfg.registered_model}/{version}"
    logger.info("registered %s (best val acc %.4f at epoch %d) in %s",
                model_uri, state["best_acc"], state["best_epoch"], format_duration(seconds))
    return TrainingOutcome(
        config=cfg,
        run_id=run.run_id,
        model_uri=model_uri,
        version=version,
        bundle_dir=bundle_dir,
        best_val_acc=float(state["best_acc"]),
        best_epoch=int(state["best_epoch"]),
        epochs_run=int(state["epoch"]) + 1,
        seconds=seconds,
        resumed_at=list(state.get("resumed_at", [])),
    )
