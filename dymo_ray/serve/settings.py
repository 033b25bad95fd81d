"""Settings of the serving application, read from the `args` of a Serve config.

`build_app(args)` turns the `args` mapping of a Serve config YAML (or of `serve run
dymo_ray.serve.app:build_app key=value ...`) into `ServeSettings`, reporting every invalid
key or value in one message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dymo_ray.config import build_config, config_to_dict
from dymo_ray.selection.selector import SelectionConfig

DEFAULT_BUNDLE = "models:/dymo-backbone@latest"
RECOVERY_BATCHING_MODES = ("per_request", "per_observed_set")
DEVICES = ("auto", "cpu", "cuda")
FAULT_HEADER = "x-dymo-fault"
FAULT_KINDS = ("recovery-error", "recovery-timeout", "selector-error", "selector-timeout")


@dataclass
class ServeSettings:
    """Settings of the serving application.

    Attributes:
        bundle: Model bundle: `models:/<name>@<alias>`, `models:/<name>/<version>` or a
            local bundle folder. `build_app` pins an alias to its version, so every replica
            loads the same version.
        recovery: Recovery model: `models:/...` URI, a folder written by `save_recovery`, or
            the baselines "zeros" and "noise". None takes the bundle's recovery reference,
            else `models:/dymo-recovery-<dataset>@latest`.
        tracking_uri: MLflow store of the `models:/` URIs; None takes
            `dymo_ray.tracking.tracking_uri()` of the process that builds the app.
        tau: Selection temperature of the prototype confidence Q.
        calibration: Calibration form "ratio" or "log-ratio"; None takes the metric's
            default.
        max_steps: Maximum number of greedy selection steps per sample; None: no limit.
        recovery_seed: Seed of a request that sends none.
        recovery_batching: "per_request": each request is recovered by its own call under
            its seed, so the prediction depends on the request alone. "per_observed_set": one
            call per observed set of a batch under `recovery_seed`, faster for generative
            models, but a sampling model's output then depends on which requests share
            the batch.
        recovery_timeout_s: Time the ingress waits for the recovery deployment. After it,
            the response uses the observed modalities only and sets `degraded: true`.
        selector_timeout_s: Time the ingress waits for the selector before it responds with a 503.
        max_body_bytes: Largest accepted request body, in bytes (413 above it).
        max_batch_samples: Largest number of samples in one `/v1/predict_batch` request.
        recovery_max_batch_size: `@serve.batch` size of the recovery deployment.
        selector_max_batch_size: `@serve.batch` size of the selector deployment.
        batch_wait_timeout_s: Time a batch waits to fill before it runs, in seconds.
        device: "auto" (a GPU when Ray assigned one to the replica), "cpu" or "cuda".
        torch_threads: torch intra-op threads per model replica.
        replica_num_cpus: Logical CPUs reserved by each replica. A config YAML's
            `ray_actor_options` replaces this.
        max_replicas: Upper bound of the autoscaling of each model deployment. A config
            YAML's `autoscaling_config` replaces this.
        fault_injection: Honour the `X-Dymo-Fault` request header, which makes a
            deployment raise or stall on that request. For tests and failure drills only;
            with False a request that sends the header gets a 400.
    """

    bundle: str = DEFAULT_BUNDLE
    recovery: str | None = None
    tracking_uri: str | None = None
    tau: float = 0.1
    calibration: str | None = None
    max_steps: int | None = None
    recovery_seed: int = 0
    recovery_batching: str = "per_request"
    recovery_timeout_s: float = 10.0
    selector_timeout_s: float = 30.0
    max_body_bytes: int = 8 * 1024 * 1024
    max_batch_samples: int = 64
    recovery_max_batch_size: int = 16
    selector_max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.01
    device: str = "auto"
    torch_threads: int = 1
    replica_num_cpus: float = 0.25
    max_replicas: int = 2
    fault_injection: bool = False

    def problems(self) -> list[str]:
        """List what is wrong with these settings (empty when valid)."""
        problems = []
        positive_numbers = (
            "tau",
            "recovery_timeout_s",
            "selector_timeout_s",
            "replica_num_cpus",
        )
        for name in positive_numbers:
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                problems.append(f"{name} must be a finite number > 0, got {value!r}")

        if not math.isfinite(self.batch_wait_timeout_s) or self.batch_wait_timeout_s < 0:
            problems.append(
                f"batch_wait_timeout_s must be a finite number >= 0, got "
                f"{self.batch_wait_timeout_s!r}"
            )
        positive_integers = (
            "max_body_bytes",
            "max_batch_samples",
            "recovery_max_batch_size",
            "selector_max_batch_size",
            "torch_threads",
            "max_replicas",
        )
        for name in positive_integers:
            if getattr(self, name) < 1:
                problems.append(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")

        if self.recovery_seed < 0:
            problems.append(f"recovery_seed must be >= 0, got {self.recovery_seed}")
        if self.recovery_batching not in RECOVERY_BATCHING_MODES:
            problems.append(
                f"recovery_batching {self.recovery_batching!r} is not one of "
                f"{list(RECOVERY_BATCHING_MODES)}"
            )
        if self.device not in DEVICES:
            problems.append(f"device {self.device!r} is not one of {list(DEVICES)}")

        if not self.bundle:
            problems.append(f"bundle must be a models:/ URI or a folder, e.g. {DEFAULT_BUNDLE}")
        try:
            self.selection_config()
        except ValueError as error:
            problems.append(str(error))
        return problems

    def selection_config(self) -> SelectionConfig:
        """Return the selection settings (tau, calibration, max_steps)."""
        return SelectionConfig(
            tau=self.tau, calibration=self.calibration, max_steps=self.max_steps
        )

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


def load_settings(args: dict[str, Any] | None) -> ServeSettings:
    """Build `ServeSettings` from the `args` of a Serve config.

    Raises:
        dymo_ray.config.ConfigError: a key is unknown or a value is invalid; the message lists
            every problem and the nearest valid key.
    """
    return build_config(ServeSettings, dict(args or {}))
