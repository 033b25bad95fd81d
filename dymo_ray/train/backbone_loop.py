"""Ray Train worker loop of the backbone: incomplete-simulation training with prototypes.

Plain PyTorch except where marked `# Ray:`. The same loop runs as a Ray Tune function trial
(`session="tune"`) and in one process without Ray (`session="local"`); in both,
collectives are no-ops.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dymo_ray.config import TrainConfig, build_config
from dymo_ray.data.io import SplitData, load_split
from dymo_ray.models.backbone import BackboneConfig, FusionBackbone
from dymo_ray.models.losses import sample_subsets, subset_loss
from dymo_ray.subsets import all_subsets, subset_name
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


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochStats:
    """Metrics of one epoch, identical on every rank after the all-reduce."""

    epoch: int
    loss: float
    ce: float
    aux: float
    val_acc: float
    val_acc_per_subset: dict[str, float] = field(default_factory=dict)
    samples_per_second: float = 0.0

    def metrics(self) -> dict[str, float]:
        """Return the MLflow metric keys of this epoch."""
        out = {
            "epoch": float(self.epoch),
            "train/loss": self.loss,
            "train/ce": self.ce,
            "train/aux": self.aux,
            "train/samples_per_s": self.samples_per_second,
            "val/acc": self.val_acc,
        }
        out.update({f"val/acc/{name}": acc for name, acc in self.val_acc_per_subset.items()})
        return out


class PrototypeAccumulator:
    """Class sums and counts of embeddings over an epoch, reduced to prototypes on all ranks.

    Sums are float64 and full-size (C, D) on every rank, even when a shard lacks a class,
    because the all-reduce needs the same buffer shape everywhere.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        self.sums = torch.zeros(num_classes, dim, dtype=torch.float64)
        self.counts = torch.zeros(num_classes, dtype=torch.float64)

    def add(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Add embeddings (A, B, D) of A subsets of the same B rows with labels (B,)."""
        flat = embeddings.reshape(-1, embeddings.shape[-1]).detach().double().cpu()
        flat_labels = labels.repeat(embeddings.shape[0]).cpu()
        self.sums.index_add_(0, flat_labels, flat)
        self.counts += torch.bincount(flat_labels, minlength=len(self.counts)).double()

    def reduce(self, epoch: int) -> torch.Tensor:
        """Sum over workers and return the prototypes (C, D) as float32, same on every rank.

        Raises:
            ValueError: a class had no sample on any worker this epoch.
        """
        all_reduce_sum(self.sums)  # Ray: collective over the training workers
        all_reduce_sum(self.counts)
        missing = torch.nonzero(self.counts == 0).flatten().tolist()
        if missing:
            raise ValueError(
                f"classes {missing} had no training sample in epoch {epoch}; "
                "raise train_limit so that every class appears"
            )
        return (self.sums / self.counts.unsqueeze(1)).float()


def batches(data: SplitData, batch_size: int, generator: torch.Generator | None):
    """Yield (inputs, labels) batches, shuffled when a generator is given."""
    count = len(data)
    order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
    for start in range(0, count, batch_size):
        index = order[start:start + batch_size]
        yield {name: tensor[index] for name, tensor in data.inputs.items()}, data.labels[index]


@torch.no_grad()
def validate(model: FusionBackbone, data: SplitData, batch_size: int) -> tuple[float, dict[str, float]]:
    """Return accuracy over all non-empty subsets (pooled) and per subset, summed over ranks.

    Each batch is encoded once and fused under every subset. Every subset is scored on the
    same rows, so the pooled accuracy weights the subsets equally.
    """
    model.eval()
    subsets = all_subsets(model.num_modalities)
    correct = torch.zeros(len(subsets), dtype=torch.float64)
    total = torch.zeros(1, dtype=torch.float64)
    for inputs, labels in batches(data, batch_size, generator=None):
        tokens = model.encode(inputs)
        for index, subset in enumerate(subsets):
            logits, _ = model.fuse(tokens, subset)
            correct[index] += (logits.argmax(dim=1) == labels).sum()
        total += len(labels)
    all_reduce_sum(correct)  # Ray: sums over workers (no-op in one process)
    all_reduce_sum(total)
    per_subset = (correct / total.clamp(min=1)).tolist()
    names = [subset_name(s, model.card.modality_names) for s in subsets]
    model.train()
    return float(sum(per_subset) / len(per_subset)), dict(zip(names, per_subset))


def train_backbone(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train worker entry point, also run as a Ray Tune trial by `dymo_ray.tune`.

    Args:
        config: `train` (a TrainConfig as a dict, defaults already resolved), `data_dir`
            (absolute), `backbone` (BackboneConfig as a dict), `tracking_uri` and `run_id`
            (MLflow run to log to from rank 0, or None), and optionally:
            `session`: "train" (default, a Ray Train worker), "tune" (a Tune function
            trial: one process, reports and checkpoints through `ray.tune`) or "local"
            (one process without Ray: no reports, no checkpoints);
            `report_defaults`: metrics added to every epoch's report, e.g. {"val_dymo": nan}
            from a sweep whose searcher requires its metric in every result;
            `fault_injection` {"epoch": int, "marker": path} for the failure-recovery test;
            `local_checkpoint_dir`: where checkpoints are kept in Ray Train's local mode
            (`num_workers=0`), see `report_epoch`.

    Returns:
        In a Tune or local session, the state of the last epoch (weights, best weights,
        epoch, best val acc), or in Tune the resumed checkpoint's state when no epoch was
        left to run. None in a Ray Train session.
    """
    cfg: TrainConfig = build_config(TrainConfig, config["train"])
    session = config.get("session", "train")
    context = worker_context(session)  # Ray: rank and world size
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    tracker: RunLogger = NullLogger()
    if context.is_main and config.get("run_id"):
        tracker = MlflowRunLogger(config["run_id"], config.get("tracking_uri"))

    # ---------------------------------------------------------------- data
    data_dir = Path(config["data_dir"])
    train_full = load_split(data_dir, "train", rows=limited_rows(data_dir, "train", cfg.train_limit, cfg.seed))
    val_full = load_split(data_dir, "val", rows=limited_rows(data_dir, "val", cfg.val_limit, cfg.seed))
    train = train_full.subset(shard_rows(len(train_full), context.rank, context.world_size, cfg.seed))
    val = val_full.subset(shard_rows(len(val_full), context.rank, context.world_size, cfg.seed))
    card = train.card
    num_classes = card.num_classes

    # ---------------------------------------------------------------- model
    backbone_config = BackboneConfig.from_dict(config["backbone"])
    backbone = FusionBackbone(card, backbone_config)
    model: torch.nn.Module = backbone
    # A Tune trial is one process with no DDP, and `ray.train.get_context` raises there.
    if session == "train" and in_ray_train():
        import ray.train.torch

        # Ray: moves the model to the worker's device and wraps it in DDP when there are
        # several workers. Modalities absent from every subset of a batch get no gradient,
        # hence find_unused_parameters.
        ddp_options = {"find_unused_parameters": True} if context.world_size > 1 else None
        model = ray.train.torch.prepare_model(backbone, parallel_strategy_kwargs=ddp_options)
    device = next(backbone.parameters()).device
    optimizer = torch.optim.Adam(backbone.parameters(), lr=cfg.learning_rate)

    # ---------------------------------------------------------------- resume
    start_epoch = 0
    prototypes: torch.Tensor | None = None
    best_acc = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch = -1
    stale_epochs = 0
    resumed_at: list[int] = []  # epochs (1-based) a restarted worker group resumed from
    state = load_checkpoint_state(session)  # Ray: latest checkpoint after a failure or restore
    last_state = state
    if state is not None:
        backbone.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        prototypes = state["prototypes"].to(device) if state["prototypes"] is not None else None
        best_acc, best_epoch = state["best_acc"], state["best_epoch"]
        best_state, stale_epochs = state["best_model"], state["stale_epochs"]
        resumed_at = state.get("resumed_at", []) + [state["epoch"] + 1]
        if context.is_main:
            logger.info("resumed from the checkpoint of epoch %d", state["epoch"] + 1)

    total_epochs = int(cfg.epochs)
    timer = EpochTimer(total_epochs, start_epoch)
    subsets_per_batch = int(cfg.subsets_per_batch)
    model.train()
    for epoch in range(start_epoch, total_epochs):
        maybe_inject_fault(config.get("fault_injection"), epoch, context.rank)
        aux_enabled = prototypes is not None and epoch >= cfg.aux_start_epoch
        accumulator = PrototypeAccumulator(num_classes, backbone_config.projection_dim)
        loss_sum = torch.zeros(4, dtype=torch.float64)  # loss, ce, aux, steps
        # Same subset draws on every rank; the data order differs per rank.
        subset_generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        data_generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 101 + context.rank)
        epoch_started = time.perf_counter()
        samples = 0
        for step, (inputs, labels) in enumerate(batches(train, cfg.batch_size, data_generator)):
            inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
            labels = labels.to(device)
            subsets = sample_subsets(card.num_modalities, subsets_per_batch, subset_generator)
            out = subset_loss(
                model, inputs, labels, subsets.to(device), prototypes, cfg.aux_weight,
                cfg.temperature, aux_enabled,
            )
            if not torch.isfinite(out.loss):
                raise NonFiniteLossError(
                    f"training loss is {out.loss.item()} at epoch {epoch + 1} step {step + 1}; "
                    "lower learning_rate or check the inputs for NaN"
                )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()

            # Class sums over every (sample, subset) pair for the next epoch's prototypes.
            accumulator.add(out.embeddings, labels)
            aux_value = float(out.aux) if out.aux is not None else 0.0
            loss_sum += torch.tensor(
                [out.loss.item(), float(out.ce), aux_value, 1.0], dtype=torch.float64
            )
            samples += len(labels)

        # Ray: prototypes and losses are summed over workers, so all ranks get the same values.
        prototypes = accumulator.reduce(epoch + 1).to(device)
        all_reduce_sum(loss_sum)
        samples_total = all_reduce_sum(torch.tensor([float(samples)], dtype=torch.float64))
        epoch_seconds = time.perf_counter() - epoch_started

        val_acc, val_per_subset = validate(backbone, val, cfg.batch_size)
        steps = max(loss_sum[3].item(), 1.0)
        stats = EpochStats(
            epoch=epoch + 1,
            loss=loss_sum[0].item() / steps,
            ce=loss_sum[1].item() / steps,
            aux=loss_sum[2].item() / steps,
            val_acc=val_acc,
            val_acc_per_subset=val_per_subset,
            samples_per_second=samples_total.item() / max(epoch_seconds, 1e-9),
        )
        if val_acc > best_acc + cfg.min_delta or best_state is None:
            best_acc, best_epoch, stale_epochs = val_acc, epoch + 1, 0
            best_state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
        else:
            stale_epochs += 1
        stop_early = stale_epochs >= cfg.patience > 0

        if context.is_main:
            logger.info(
                "epoch %d/%d | loss %.4f | aux %.4f | val acc %.4f | %.0f samples/s | "
                "elapsed %s | eta %s",
                epoch + 1, total_epochs, stats.loss, stats.aux, stats.val_acc,
                stats.samples_per_second, format_duration(timer.elapsed()),
                format_duration(0 if stop_early else timer.eta(epoch)),
            )
            tracker.log_metrics({**stats.metrics(), "val/best_acc": best_acc}, step=epoch + 1)
        checkpoint_state = {
            "model": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "prototypes": prototypes.cpu(),
            "best_acc": best_acc,
            "best_epoch": best_epoch,
            "best_model": best_state,
            "stale_epochs": stale_epochs,
            "stopped_early": stop_early,
            "resumed_at": resumed_at,
        }
        last_state = checkpoint_state
        report_epoch(  # Ray: barrier; rank 0 attaches the checkpoint
            {
                **config.get("report_defaults", {}),
                "epoch": epoch + 1,
                "val_acc": val_acc,
                "best_val_acc": best_acc,
                "loss": stats.loss,
            },
            checkpoint_state,
            context.is_main,
            session,
            keep_dir=config.get("local_checkpoint_dir"),
        )
        if stop_early:
            if context.is_main:
                logger.info(
                    "early stop: no val acc gain above %g for %d epochs (best %.4f at epoch %d)",
                    cfg.min_delta, stale_epochs, best_acc, best_epoch,
                )
            break
    # Ray Train V2 fails a training function that returns tensors, so only a Tune trial and
    # a local run, which run the loop as a plain call, get the final state back.
    return last_state if session in ("tune", "local") else None

