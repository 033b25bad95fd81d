"""Ray Train and Ray Tune glue shared by the backbone and recovery worker loops.

The loops run in one of two Ray sessions, named by `session`: "train" (a Ray Train worker,
the default) or "tune" (a Ray Tune function trial, one process per trial). Inside a Tune
function `ray.train.report`, `get_checkpoint` and `get_context` raise, so the Tune session
uses `ray.tune.report` and `ray.tune.get_checkpoint` instead.

Checkpoints are a folder holding one `state.pt` (plain tensors and Python values, loaded with
`map_location="cpu"`), so a checkpoint written on a GPU worker loads on a CPU-only machine.

Both loops also share the seeded row limits and shards of this module, and its fault hook
that the failure-recovery tests use.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
SESSIONS = ("train", "tune", "local")


class ClusterTooSmallError(RuntimeError):
    """The Ray cluster cannot place the requested workers; raised instead of hanging."""


def check_cluster_fits(
    num_workers: int, cpus_per_worker: float, use_gpu: bool, gpus_per_worker: float = 1.0
) -> None:
    """Raise if the connected Ray cluster lacks the CPUs or GPUs for `num_workers` workers.

    Ray waits forever for resources it does not have, so the job checks before starting.

    Raises:
        ClusterTooSmallError: the request exceeds the cluster's total resources, with the
            numbers and the flags to change.
    """
    import ray

    if num_workers == 0:
        return
    resources = ray.cluster_resources()
    cpus = resources.get("CPU", 0.0)
    gpus = resources.get("GPU", 0.0)
    # The trainer's controller actor takes no CPU in Ray Train V2, so workers get them all.
    needed_cpus = num_workers * cpus_per_worker
    if needed_cpus > cpus + 1e-9:
        raise ClusterTooSmallError(
            f"num_workers={num_workers} x cpus_per_worker={cpus_per_worker} needs "
            f"{needed_cpus:g} CPUs but the Ray cluster has {cpus:g}; lower --num-workers "
            f"(at most {int(cpus // cpus_per_worker)} here) or cpus_per_worker"
        )
    if use_gpu:
        needed_gpus = num_workers * gpus_per_worker
        if needed_gpus > gpus + 1e-9:
            raise ClusterTooSmallError(
                f"use_gpu with num_workers={num_workers} x gpus_per_worker={gpus_per_worker} "
                f"needs {needed_gpus:g} GPUs but the Ray cluster has {gpus:g}; set "
                "use_gpu=false or lower num_workers"
            )


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to `$RAY_ADDRESS` (e.g. under `ray job submit`) or start a local Ray.

    A local instance starts its dashboard on 127.0.0.1 only (port 8265, or the next free
    one). Ray Train watches its controller through the dashboard's state API: without it,
    the watcher logs "Failed to query Ray Train Controller actor state" about once a second
    for the whole run.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        logger.info("connected to the Ray cluster at %s", os.environ["RAY_ADDRESS"])
    else:
        context = ray.init(
            num_cpus=num_cpus,
            # None starts the dashboard when its packages are installed and skips it
            # otherwise (ray.init's docstring), so training does not depend on it.
            include_dashboard=None,
            dashboard_host="127.0.0.1",
            log_to_driver=True,
        )
        if context.dashboard_url:
            dashboard = f"dashboard at http://{context.dashboard_url}"
        else:
            dashboard = "no dashboard (Ray could not start it)"
        logger.info(
            "started a local Ray with %s CPUs, %s", ray.cluster_resources().get("CPU"), dashboard
        )


@dataclass
class WorkerContext:
    """Rank and world size of the current worker (0 and 1 outside Ray Train)."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _session_api(session: str) -> Any:
    """Return the module (`ray.train` or `ray.tune`) whose `report`, `get_checkpoint` and
    `Checkpoint` work in `session`.
    """
    if session == "train":
        import ray.train

        return ray.train
    if session == "tune":
        import ray.tune

        return ray.tune
    raise ValueError(f"unknown Ray session {session!r}; valid sessions: {list(SESSIONS)}")


def worker_context(session: str = "train") -> WorkerContext:
    """Return this worker's rank and world size from Ray Train, or (0, 1) when not in it.

    A Tune trial (`session="tune"`) is a single process without a process group, so it is
    rank 0 of 1.
    """
    if session in ("tune", "local"):
        return WorkerContext(0, 1)
    if session not in SESSIONS:
        raise ValueError(f"unknown Ray session {session!r}; valid sessions: {list(SESSIONS)}")
    import ray.train

    try:
        context = ray.train.get_context()
        return WorkerContext(context.get_world_rank(), context.get_world_size())
    except (RuntimeError, AttributeError, ValueError):
        return WorkerContext(0, 1)


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` in place over all workers (a no-op in a single process) and return it."""
    if distributed():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def load_checkpoint_state(session: str = "train") -> dict[str, Any] | None:
    """Return the state stored in the latest checkpoint of `session`, or None on a fresh start.

    In a Tune trial this is the checkpoint the trial resumes from after a restore. A
    `"local"` session (one process, no Ray) has no checkpoints.
    """
    if session == "local":
        return None
    checkpoint = _session_api(session).get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)


def report_epoch(
    metrics: dict[str, float],
    state: dict[str, Any] | None,
    is_main: bool,
    session: str = "train",
    keep_dir: str | Path | None = None,
) -> None:
    """Report one epoch's metrics on every rank, with a checkpoint from rank 0.

    `ray.train.report` is a barrier: every rank must call it the same number of times. With
    `session="tune"` the report goes to `ray.tune.report` (one rank); `session="local"`
    reports nothing.

    Args:
        metrics: The epoch's metrics; "epoch" names the checkpoint folder under `keep_dir`.
        state: The checkpoint state (rank 0), or None to report metrics only.
        is_main: True on rank 0.
        session: "train", "tune" or "local".
        keep_dir: Folder in which each checkpoint is written and kept. Ray Train's local
            mode (`num_workers=0`) keeps a reference to the reported folder instead of
            copying it to storage, so a temporary folder would be gone when the driver
            reads the result. With None, the checkpoint goes through a temporary folder.
    """
    if session == "local":
        return
    api = _session_api(session)
    if not is_main or state is None:
        api.report(metrics, checkpoint=None)
        return
    if keep_dir is not None:
        folder = Path(keep_dir) / f"epoch_{int(metrics.get('epoch', 0)):04d}"
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(state, folder / STATE_FILE)
        api.report(metrics, checkpoint=api.Checkpoint.from_directory(str(folder)))
        return
    with tempfile.TemporaryDirectory(prefix="dymo_ray_ckpt_") as folder:
        torch.save(state, Path(folder) / STATE_FILE)
        api.report(metrics, checkpoint=api.Checkpoint.from_directory(folder))


def local_checkpoint_dir(storage: str | Path, run_name: str, num_workers: int) -> str | None:
    """Return where checkpoints are kept in Ray Train's local mode, or None with workers.

    With `num_workers=0` Ray Train runs the loop in the driver and keeps a reference to each
    reported checkpoint folder without copying it, so the loop writes them under
    `<storage>/<run_name>/local_checkpoints/` (see `report_epoch`).
    """
    if num_workers != 0:
        return None
    return str(Path(storage) / run_name / "local_checkpoints")


def fit_torch_trainer(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    cfg: Any,
    run_name: str,
    storage_path: str | Path | None,
) -> dict[str, Any]:
    """Run a worker loop with Ray Train's `TorchTrainer` and return its last checkpoint state.

    Both training jobs use this. Ray must be initialised and the cluster checked with
    `check_cluster_fits`.

    Args:
        loop: The worker loop (`train_backbone` or `train_recovery`).
        loop_config: Its config. The key "local_checkpoint_dir" is added here.
        cfg: The job config: `num_workers`, `cpus_per_worker`, `use_gpu`,
            `gpus_per_worker` and `max_failures` are read.
        run_name: The MLflow run name. The Ray Train run gets it plus a random suffix,
            because a reused (storage folder, name) pair resumes the old run.
        storage_path: Ray Train storage folder; default `<run folder>/ray_results`.

    Returns:
        The `state.pt` of the final checkpoint, loaded on the CPU.

    Raises:
        ray.train.TrainingFailedError: the workers failed more than `max_failures` times.
        RuntimeError: the run ended without reporting a checkpoint.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from dymo_ray.paths import run_dir

    storage = Path(storage_path or run_dir() / "ray_results").resolve()
    resources = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = cfg.gpus_per_worker
    ray_run_name = f"{run_name}-{uuid.uuid4().hex[:8]}"
    trainer = TorchTrainer(
        loop,
        train_loop_config={
            **loop_config,
            "local_checkpoint_dir": local_checkpoint_dir(storage, ray_run_name, cfg.num_workers),
        },
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo", timeout_s=300),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=ray_run_name,
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(
            f"Ray Train run {ray_run_name} (MLflow run {loop_config.get('run_id')}) finished "
            f"without a checkpoint; its results folder is {storage / ray_run_name}"
        )
    return read_checkpoint_state(result.checkpoint)


def read_checkpoint_state(checkpoint: Any) -> dict[str, Any]:
    """Load the `state.pt` of a Ray Train or Tune `Checkpoint` (e.g. `Result.checkpoint`) on the CPU."""
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)


def format_duration(seconds: float) -> str:
    """Return a short human duration such as "1m05s" or "42s"."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class EpochTimer:
    """Elapsed time and an ETA from the mean epoch duration so far."""

    def __init__(self, total_epochs: int, start_epoch: int = 0) -> None:
        self.total_epochs = total_epochs
        self.start_epoch = start_epoch
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def eta(self, finished_epoch: int) -> float:
        done = finished_epoch + 1 - self.start_epoch
        remaining = self.total_epochs - finished_epoch - 1
        return self.elapsed() / max(done, 1) * max(remaining, 0)


def shard_rows(num_rows: int, rank: int, world_size: int, seed: int) -> np.ndarray:
    """Return this rank's rows of a seeded permutation, equal in count on every rank.

    Every rank must run the same number of steps (DDP's all-reduce is collective), so the
    shard size is floor(N / world_size) and up to world_size - 1 rows sit out each epoch.
    """
    order = np.random.default_rng(seed).permutation(num_rows)
    per_rank = num_rows // world_size
    return np.sort(order[rank * per_rank:(rank + 1) * per_rank])


def in_ray_train() -> bool:
    """Return True inside a Ray Train worker (where `ray.train.get_context` works)."""
    import ray.train

    try:
        ray.train.get_context().get_world_size()
        return True
    except (RuntimeError, AttributeError, ValueError):
        return False


def limited_rows(data_dir: Path, split: str, limit: int | None, seed: int) -> np.ndarray | None:
    """Return `limit` seeded random row indices of a split (classes stay mixed), or None.

    Raises:
        ValueError: `limit` is below 1.
    """
    if limit is None:
        return None
    from dymo_ray.data.io import seeded_rows
    from dymo_ray.data.spec import DatasetCard

    total = DatasetCard.load(data_dir).splits.get(split)
    if total is None:
        return None
    return seeded_rows(total, limit, seed + 7)


def maybe_inject_fault(fault: dict[str, Any] | None, epoch: int, rank: int) -> None:
    """Kill this worker once at `fault["epoch"]` if its rank is `fault["rank"]` (default 0).

    A test hook: the failure-recovery tests check that training then resumes from the last
    checkpoint. The marker file makes the kill happen once across restarts.
    """
    if not fault or epoch != fault["epoch"]:
        return
    marker = Path(fault["marker"])
    target_rank = fault.get("rank", 0)
    if rank == target_rank and not marker.exists():
        marker.write_text(f"killed at epoch {epoch + 1}\n")
        # Ray Train V2 registers a reported checkpoint only when its controller next polls
        # the workers. Crashing a few seconds into the epoch, as real failures do, lets the
        # previous epoch's checkpoint be registered first.
        time.sleep(5)
        logger.warning("fault injection: killing worker rank %d at epoch %d", rank, epoch + 1)
        os._exit(1)
