"""Ray Train worker loop of the recovery models (MoPoE, MMVAE+, CMVAE), and its config.

Plain PyTorch except where marked `# Ray:`. The loop needs a Ray Train context, because
`ray.train.get_checkpoint` raises anywhere else.
"""

from __future__ import annotations

import difflib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dymo_ray.config import DATASETS, build_config, range_problems
from dymo_ray.data.io import SplitData, load_split
from dymo_ray.data.spec import DatasetCard
from dymo_ray.recovery import build_recovery, recovered_sample_grid, train_recovery_epoch, write_png
from dymo_ray.recovery.factory import GENERATIVE_RECOVERIES
from dymo_ray.train.common import (
    EpochTimer,
    all_reduce_sum,
    format_duration,
    in_ray_train,
    limited_rows,
    load_checkpoint_state,
    maybe_inject_fault,
    report_epoch,
    shard_rows,
    worker_context,
)
from dymo_ray.tracking import MlflowRunLogger, NullLogger, RunLogger

logger = logging.getLogger(__name__)

# Model options a config may override. None keeps the model's default, listed in
# `dymo_ray.recovery.multivae_adapter`.
MODEL_OPTION_KEYS = ("latent_dim", "style_dim", "hidden_dim", "beta", "num_clusters")


@dataclass
class RecoveryTrainConfig:
    """Settings of the recovery training job (`jobs/train_recovery.py`).

    `None` means "the default": the dataset's epoch count, the model's latent sizes, and the
    registered name `dymo-recovery-<dataset>`.
    """

    dataset: str = "polymnist"
    model: str = "mopoe"
    data_dir: str | None = None
    seed: int = 0
    # Optimisation. The authors trained MoPoE with Adam, learning rate 1e-3, batch 256.
    # `batch_size` is per worker, and None takes the dataset's DEFAULT_BATCH_SIZE from
    # recovery_job, which is small on PolyMNIST to get more steps per minute.
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float = 1e-3
    # Model options. None takes the model's default.
    latent_dim: int | None = None
    style_dim: int | None = None
    hidden_dim: int | None = None
    beta: float | None = None
    num_clusters: int | None = None
    # Data limits for quick runs (rows per split; None = all rows).
    train_limit: int | None = None
    test_limit: int | None = None
    # Coherence: unimodal classifiers trained on the training split, scored on the test split.
    classifier_epochs: int = 3
    classifier_train_limit: int | None = None
    coherence_max_subsets: int | None = None
    # Rows of the validation split drawn in the PNG grid of each epoch.
    grid_rows: int = 8
    # Ray Train.
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    max_failures: int = 1
    torch_threads: int | None = None
    # Tracking.
    experiment: str = "dymo"
    run_name: str | None = None
    registered_model: str | None = None
    alias: str = "latest"

    def problems(self) -> list[str]:
        """List invalid values (empty when valid)."""
        found = []
        if self.dataset not in DATASETS:
            found.append(
                f"dataset {self.dataset!r} is unknown{_suggest(self.dataset, DATASETS)}; "
                f"valid datasets: {list(DATASETS)}"
            )
        if self.model not in GENERATIVE_RECOVERIES:
            found.append(
                f"model {self.model!r} is unknown{_suggest(self.model, GENERATIVE_RECOVERIES)}; "
                f"valid models: {list(GENERATIVE_RECOVERIES)}"
            )
        found += range_problems(
            self,
            above_zero=("learning_rate", "cpus_per_worker", "gpus_per_worker"),
            at_least_one=("epochs", "batch_size", "train_limit", "test_limit",
                          "classifier_train_limit", "coherence_max_subsets", "torch_threads",
                          "latent_dim", "hidden_dim", "num_clusters"),
            at_least_zero=("seed", "classifier_epochs", "grid_rows", "max_failures"),
        )
        if self.num_workers < 0:
            found.append(f"num_workers must be >= 0 (0 runs in-process), got {self.num_workers}")
        return found

    def model_options(self) -> dict[str, Any]:
        """Return the model options that are set, for `build_recovery`."""
        return {key: getattr(self, key) for key in MODEL_OPTION_KEYS if getattr(self, key) is not None}

    def registered_name(self) -> str:
        """Return the registry name: `registered_model`, else `dymo-recovery-<dataset>`."""
        return self.registered_model or f"dymo-recovery-{self.dataset}"


def _suggest(name: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


SMOKE_OVERRIDES: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 128,
    "train_limit": 1024,
    "test_limit": 256,
    "classifier_epochs": 1,
    "classifier_train_limit": 1024,
    "coherence_max_subsets": 2,
}


def grid_present(num_rows: int, num_modalities: int) -> torch.Tensor:
    """Return a fixed `present` pattern (num_rows, M) for the sample grid.

    Rows 0..M-1 observe one modality each, rows M..2M-1 miss one modality each, and the
    pattern repeats, so every modality is both shown and recovered.
    """
    present = torch.zeros((num_rows, num_modalities), dtype=torch.bool)
    for row in range(num_rows):
        target = row % num_modalities
        if row // num_modalities % 2 == 0:
            present[row, target] = True
        else:
            present[row] = True
            present[row, target] = False
    return present


def _batches(data: SplitData, batch_size: int, generator: torch.Generator, device: torch.device):
    order = torch.randperm(len(data), generator=generator)
    for start in range(0, len(data), batch_size):
        index = order[start:start + batch_size]
        yield {name: tensor[index].to(device) for name, tensor in data.inputs.items()}


def train_recovery(config: dict[str, Any]) -> None:
    """Ray Train worker entry point.

    Args:
        config: `train` (a RecoveryTrainConfig as a dict, epochs resolved), `data_dir`
            (absolute), `tracking_uri` and `run_id` (MLflow run to log to from rank 0, or
            None), and optionally `fault_injection` {"epoch": int, "marker": path, "rank": int}
            for the failure-recovery test.
    """
    cfg: RecoveryTrainConfig = build_config(RecoveryTrainConfig, config["train"])
    context = worker_context()  # Ray: rank and world size
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    # Weights come from `init_seed` (the same on every rank), while the latent samples of
    # the loss get a stream per rank.
    torch.manual_seed(cfg.seed * 1_000 + context.rank)
    tracker: RunLogger = NullLogger()
    if context.is_main and config.get("run_id"):
        tracker = MlflowRunLogger(config["run_id"], config.get("tracking_uri"))

    # ---------------------------------------------------------------- data
    data_dir = Path(config["data_dir"])
    train_rows = limited_rows(data_dir, "train", cfg.train_limit, cfg.seed)
    train_full = load_split(data_dir, "train", rows=train_rows)
    train = train_full.subset(shard_rows(len(train_full), context.rank, context.world_size, cfg.seed))
    card: DatasetCard = train.card
    grid_data = load_split(data_dir, "val", limit=cfg.grid_rows) if context.is_main else None

    # ---------------------------------------------------------------- model
    recovery = build_recovery(cfg.model, card, init_seed=cfg.seed, **cfg.model_options())
    model: torch.nn.Module = recovery.model
    if in_ray_train():
        import ray.train.torch

        # Ray: moves the model to the worker's device and wraps it in DDP with several
        # workers. Every parameter gets a gradient from a complete batch, so DDP needs no
        # unused-parameter search.
        model = ray.train.torch.prepare_model(recovery.model)
    device = recovery.device
    optimizer = torch.optim.Adam(recovery.model.parameters(), lr=cfg.learning_rate)

    # ---------------------------------------------------------------- resume
    start_epoch = 0
    resumed_at: list[int] = []
    state = load_checkpoint_state()  # Ray: latest checkpoint after a failure
    if state is not None:
        recovery.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        resumed_at = state.get("resumed_at", []) + [start_epoch]
        if context.is_main:
            logger.info("resumed from the checkpoint of epoch %d", start_epoch)

    total_epochs = int(cfg.epochs)
    timer = EpochTimer(total_epochs, start_epoch)
    for epoch in range(start_epoch, total_epochs):
        maybe_inject_fault(config.get("fault_injection"), epoch, context.rank)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 101 + context.rank)
        started = time.perf_counter()
        terms = train_recovery_epoch(
            recovery, _batches(train, cfg.batch_size, generator, device), optimizer, model=model
        )
        seconds = time.perf_counter() - started

        # Ray: sample-weighted means over workers. Every rank has the same term names.
        names = sorted(terms)
        totals = torch.tensor(
            [terms[name] * len(train) for name in names] + [float(len(train))],
            dtype=torch.float64,
        )
        all_reduce_sum(totals)
        samples = totals[-1].item()
        means = {name: totals[i].item() / samples for i, name in enumerate(names)}
        metrics = {f"train/{name}": value for name, value in means.items()}
        metrics["train/samples_per_s"] = samples / max(seconds, 1e-9)
        metrics["epoch"] = float(epoch + 1)

        if context.is_main:
            logger.info(
                "epoch %d/%d | loss %.2f | %.0f samples/s | elapsed %s | eta %s",
                epoch + 1, total_epochs, means["loss"], metrics["train/samples_per_s"],
                format_duration(timer.elapsed()), format_duration(timer.eta(epoch)),
            )
            tracker.log_metrics(metrics, step=epoch + 1)
            if grid_data is not None and len(grid_data):
                _log_grid(recovery, grid_data, epoch, cfg.seed, tracker)
        checkpoint_state = {
            "model": {k: v.detach().cpu() for k, v in recovery.model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "recovery": {"name": recovery.name, "config": recovery.config_dict()},
            "train_terms": means,
            "resumed_at": resumed_at,
        }
        report_epoch(  # Ray: barrier; rank 0 attaches the checkpoint
            {"epoch": epoch + 1, "loss": means["loss"]},
            checkpoint_state,
            context.is_main,
            keep_dir=config.get("local_checkpoint_dir"),
        )


def _log_grid(recovery, grid_data: SplitData, epoch: int, seed: int, tracker: RunLogger) -> None:
    present = grid_present(len(grid_data), recovery.card.num_modalities)
    inputs = {name: tensor.to(recovery.device) for name, tensor in grid_data.inputs.items()}
    grid = recovered_sample_grid(recovery, inputs, present.to(recovery.device), seed=seed)
    with tempfile.TemporaryDirectory(prefix="dymo_ray_grid_") as folder:
        path = write_png(grid, Path(folder) / f"recovered_epoch_{epoch + 1:03d}.png")
        tracker.log_artifact(path, "grids")
