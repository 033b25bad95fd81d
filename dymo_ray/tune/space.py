"""The Tune search space, scheduler and searcher of a sweep, and the cluster-size check."""

from __future__ import annotations

import logging
import math
from typing import Any

from dymo_ray.config import ConfigError
from dymo_ray.train.common import ClusterTooSmallError
from dymo_ray.tune.settings import OBJECTIVE_KEYS, SweepConfig

logger = logging.getLogger(__name__)

# Every epoch reports this metric, and ASHA compares trials on it at each rung.
SCHEDULER_METRIC = "val_acc"


def build_param_space(sweep: SweepConfig, subsets_range: tuple[int, int]) -> dict[str, Any]:
    """Return the Tune search space: temperature, subsets_per_batch and, optionally, tau."""
    from ray import tune

    low, high = subsets_range
    space: dict[str, Any] = {
        "temperature": tune.loguniform(*sweep.temperature_range),
        # `tune.randint` excludes its upper bound.
        "subsets_per_batch": tune.randint(low, high + 1),
    }
    if sweep.tune_tau:
        space["tau"] = tune.loguniform(*sweep.tau_range)
    return space


def build_scheduler(sweep: SweepConfig, epochs: int) -> Any:
    """Return the trial scheduler: ASHA on per-epoch validation accuracy, or FIFO.

    Raises:
        ConfigError: the ASHA grace period is longer than the epochs of a trial.
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if sweep.scheduler == "fifo":
        return FIFOScheduler()
    if sweep.grace_period > epochs:
        raise ConfigError(
            f"grace_period={sweep.grace_period} is longer than the {epochs} epochs of a trial; "
            f"set grace_period to at most {epochs} or raise epochs"
        )
    return ASHAScheduler(
        time_attr="epoch",
        metric=SCHEDULER_METRIC,
        mode="max",
        max_t=epochs,
        grace_period=sweep.grace_period,
        reduction_factor=sweep.reduction_factor,
        # ASHA would otherwise stop every trial at max_t, before the val_dymo objective is
        # computed and reported after the last epoch.
        stop_last_trials=False,
    )


def build_searcher(sweep: SweepConfig, max_concurrent: int) -> Any:
    """Return the search algorithm, running at most `max_concurrent` trials at once.

    "random" is Tune's seeded random search and "optuna" is Optuna's TPE. The limit is set
    here because Ray 2.60 ignores `TuneConfig.max_concurrent_trials` when the search
    algorithm is a `BasicVariantGenerator` (it logs a warning and runs as many trials as
    the resources fit).

    Raises:
        ConfigError: `search` is "optuna" and optuna is not installed, naming the extra.
    """
    if sweep.search == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=sweep.search_seed, max_concurrent=max_concurrent)
    try:
        import optuna  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            "search 'optuna' needs the optuna package: install the `tune` extra with "
            "pip install -c constraints.txt -e '.[tune]', or use search 'random'"
        ) from error
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(metric=OBJECTIVE_KEYS[sweep.objective], mode="max", seed=sweep.search_seed)
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)


def resolve_concurrency(sweep: SweepConfig) -> int:
    """Return how many trials run at once, checked against the connected Ray cluster.

    Ray waits forever for resources it does not have, so the sweep checks before it starts.

    Raises:
        ClusterTooSmallError: one trial, or `max_concurrent` trials, need more CPUs than the
            cluster has; the message gives the numbers and the flags to change.
    """
    import ray

    cpus = ray.cluster_resources().get("CPU", 0.0)
    fitting = math.floor(cpus / sweep.cpus_per_trial + 1e-9)
    if fitting < 1:
        raise ClusterTooSmallError(
            f"cpus_per_trial={sweep.cpus_per_trial:g} is more than the {cpus:g} CPUs of the "
            "Ray cluster; lower --cpus-per-trial"
        )
    if sweep.max_concurrent is None:
        return max(1, min(fitting, sweep.num_samples))
    needed = sweep.max_concurrent * sweep.cpus_per_trial
    if needed > cpus + 1e-9:
        raise ClusterTooSmallError(
            f"max_concurrent={sweep.max_concurrent} x cpus_per_trial={sweep.cpus_per_trial:g} "
            f"needs {needed:g} CPUs but the Ray cluster has {cpus:g}; lower --max-concurrent "
            f"(at most {fitting} here) or --cpus-per-trial"
        )
    return min(sweep.max_concurrent, sweep.num_samples)
