"""Settings of a Ray Tune sweep over the backbone's training knobs, validated at load.

A sweep samples the prototype-loss temperature t and the number A of subsets simulated per
batch (`subsets_per_batch`), and optionally the selection temperature tau. Everything else
about the trained model comes from a `TrainConfig`, shared by every trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dymo_ray.config import ConfigError, _nearest
from dymo_ray.data.protocols import parse_protocol
from dymo_ray.data.spec import DatasetCard
from dymo_ray.subsets import num_subsets

OBJECTIVES = ("val_acc", "val_dymo")
SCHEDULERS = ("asha", "fifo")
SEARCHERS = ("random", "optuna")

# The Tune result key that ranks trials, per objective. `best_val_acc` is the backbone's
# best validation accuracy over all subsets so far (the bundle keeps those weights);
# `val_dymo` is reported once, after the last epoch.
OBJECTIVE_KEYS = {"val_acc": "best_val_acc", "val_dymo": "val_dymo"}

# `--smoke`: 4 trials on the TrainConfig smoke preset (1,024 training rows, 2 epochs).
SMOKE_SWEEP_OVERRIDES: dict[str, Any] = {"num_samples": 4}


@dataclass
class SweepConfig:
    """Settings of `jobs/tune.py`: the search space, the scheduler, the objective, resources.

    Attributes:
        name: Sweep name; the sweep is stored under `<run folder>/tune/<name>`. None makes a
            unique name from the dataset and the time.
        num_samples: Number of trials.
        max_concurrent: Trials running at once. None runs as many as the cluster's CPUs fit.
        cpus_per_trial: CPUs reserved per trial (fractions allowed).
        scheduler: "asha" (stop weak trials early on validation accuracy) or "fifo".
        search: "random" or "optuna" (TPE; needs the `tune` extra).
        search_seed: Seed of the searcher, so a sweep samples the same trials again.
        objective: "val_acc" (backbone accuracy over all subsets) or "val_dymo" (DyMo's
            accuracy on the validation split under `protocol`, after the last epoch).
        temperature_range: [low, high] of the log-uniform prototype-loss temperature.
        subsets_range: [low, high] of the integer `subsets_per_batch`, inclusive. None is
            1..2^M - 1 for M modalities.
        tune_tau: Also sample the selection temperature tau (objective "val_dymo" only).
        tau_range: [low, high] of the log-uniform tau.
        tau: Selection temperature when tau is not sampled.
        protocol: Missingness protocol of the "val_dymo" objective, e.g. "random:0.6".
        protocol_seed: Seed of the protocol's masks.
        recovery: Recovery model of "val_dymo": a `models:/` URI, or the baseline "zeros"
            or "noise". None is `models:/dymo-recovery-<dataset>@latest`.
        grace_period: ASHA's minimum number of epochs before a trial can be stopped.
        reduction_factor: ASHA keeps 1 / reduction_factor of the trials at each rung.
        registered_model: Registry name of the best trial's bundle.
        alias: Registry alias set on the best trial's bundle.
    """

    name: str | None = None
    num_samples: int = 8
    max_concurrent: int | None = None
    cpus_per_trial: float = 1.0
    scheduler: str = "asha"
    search: str = "random"
    search_seed: int = 0
    objective: str = "val_acc"
    temperature_range: list[float] = field(default_factory=lambda: [0.02, 1.0])
    subsets_range: list[int] | None = None
    tune_tau: bool = False
    tau_range: list[float] = field(default_factory=lambda: [0.02, 1.0])
    tau: float = 0.1
    protocol: str = "random:0.6"
    protocol_seed: int = 0
    recovery: str | None = None
    grace_period: int = 1
    reduction_factor: float = 2.0
    registered_model: str = "dymo-backbone"
    alias: str = "tuned"

    def problems(self) -> list[str]:
        """List what is wrong without the dataset card (empty when valid)."""
        found = []
        for name, value, choices in (
            ("objective", self.objective, OBJECTIVES),
            ("scheduler", self.scheduler, SCHEDULERS),
            ("search", self.search, SEARCHERS),
        ):
            if value not in choices:
                found.append(
                    f"{name} {value!r} is unknown{_nearest(value, list(choices))}; "
                    f"valid choices: {list(choices)}"
                )

        found += _log_range_problems("temperature_range", self.temperature_range)
        found += _log_range_problems("tau_range", self.tau_range)
        if self.subsets_range is not None:
            found += _int_range_problems("subsets_range", self.subsets_range)
        if self.tune_tau and self.objective != "val_dymo":
            found.append(
                "tune_tau samples the selection temperature, which only changes the "
                f"val_dymo objective; the objective is {self.objective!r}: set objective to "
                "val_dymo or drop tune_tau"
            )

        if not (math.isfinite(self.tau) and self.tau > 0):
            found.append(f"tau must be a finite number > 0, got {self.tau}")
        if self.num_samples < 1:
            found.append(f"num_samples must be >= 1, got {self.num_samples}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            found.append(f"max_concurrent must be >= 1, got {self.max_concurrent}")
        if not self.cpus_per_trial > 0:
            found.append(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if self.grace_period < 1:
            found.append(f"grace_period must be >= 1 epoch, got {self.grace_period}")
        if not self.reduction_factor > 1:
            found.append(f"reduction_factor must be > 1, got {self.reduction_factor}")
        for name in ("search_seed", "protocol_seed"):
            if getattr(self, name) < 0:
                found.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            found.append(f"name {self.name!r} must be a non-empty folder name without '/'")
        return found


def _log_range_problems(name: str, bounds: list[float]) -> list[str]:
    if len(bounds) != 2:
        return [f"{name} must be [low, high], got {bounds}"]
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)):
        return [f"{name} {bounds} must be finite"]
    if low <= 0:
        return [f"{name} {bounds} is sampled log-uniformly, so low must be > 0, got {low}"]
    if low >= high:
        return [f"{name} {bounds} is empty or inverted: low must be < high"]
    return []


def _int_range_problems(name: str, bounds: list[int]) -> list[str]:
    if len(bounds) != 2:
        return [f"{name} must be [low, high], got {bounds}"]
    low, high = bounds
    if low > high:
        return [f"{name} {bounds} is empty or inverted: low must be <= high"]
    return []


def subsets_range_for(sweep: SweepConfig, card: DatasetCard) -> tuple[int, int]:
    """Return the inclusive `subsets_per_batch` range of the sweep on this card.

    Raises:
        ConfigError: the range leaves 1..2^M - 1, naming the modalities and the valid range.
    """
    limit = num_subsets(card.num_modalities)
    if sweep.subsets_range is None:
        return 1, limit
    low, high = sweep.subsets_range
    if low < 1 or high > limit:
        raise ConfigError(
            f"subsets_range {[low, high]} is invalid for {card.num_modalities} modalities "
            f"({card.modality_names}); valid range: 1..{limit}"
        )
    return low, high


def check_against_card(sweep: SweepConfig, card: DatasetCard) -> None:
    """Check the settings that depend on the dataset: the subset range and the protocol.

    Raises:
        ConfigError: listing every problem found.
    """
    found = []
    try:
        subsets_range_for(sweep, card)
    except ConfigError as error:
        found.append(str(error))
    if sweep.objective == "val_dymo":
        try:
            parse_protocol(sweep.protocol, card.modality_names)
        except ValueError as error:
            found.append(f"protocol: {error}")
    if found:
        raise ConfigError("invalid SweepConfig:\n  - " + "\n  - ".join(found))
