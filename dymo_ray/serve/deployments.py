"""The three Serve deployments: Ingress (HTTP) -> Recovery -> Selector.

- `RecoveryDeployment` generates the missing modalities of a sample. Concurrent calls are
  batched with `@serve.batch`; see `ServeSettings.recovery_batching` for how a batch is
  split into generation calls.
- `SelectorDeployment` runs DyMo selection and the classifier (or the backbone on the
  observed modalities alone), batching concurrent calls into one `select` call.
- `Ingress` is the FastAPI app (`dymo_ray.serve.api`). It validates a request, calls
  recovery only when a modality is missing and awaits it under a timeout, then calls the
  selector under another timeout. A failed or late recovery gives a 200 response computed
  from the observed modalities, with `degraded: true`. A failed or late selector gives a 503.

Both model deployments load their model in the constructor, on the CPU unless a GPU was
assigned, and run torch work in `asyncio.to_thread` so the replica's event loop keeps
responding to health checks while a batch runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import ray
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from dymo_ray.bundle import load_bundle
from dymo_ray.data.spec import DatasetCard
from dymo_ray.recovery import load_recovery_model
from dymo_ray.serve.decode import DecodedSample
from dymo_ray.serve.inference import (
    pick_device,
    predict_samples,
    recover_samples,
)
from dymo_ray.serve.schemas import Prediction
from dymo_ray.serve.settings import ServeSettings

# A child of Serve's logger: replicas write it to the Serve log files, with the request id
# of the request being handled (Serve's logging filter adds it).
logger = logging.getLogger("ray.serve").getChild(__name__)


class ServiceUnavailable(Exception):
    """The selector failed or timed out. The API responds with a 503 and this message."""


def _batch_stats(sizes: Counter, started: float) -> dict[str, Any]:
    rows = sum(size * count for size, count in sizes.items())
    return {
        "replica": _replica_tag(),
        "uptime_s": round(time.monotonic() - started, 1),
        "batches": sum(sizes.values()),
        "rows": rows,
        "max_batch_size_seen": max(sizes, default=0),
        "batch_size_counts": {str(size): count for size, count in sorted(sizes.items())},
    }


def _replica_tag() -> str:
    try:
        return serve.get_replica_context().replica_tag
    except Exception:  # Outside a replica (unit use) there is no context.
        return "local"


def _injected_delay_s(settings: ServeSettings) -> float:
    # Long enough that the ingress gives up first, whichever timeout applies.
    return 2.0 * max(settings.recovery_timeout_s, settings.selector_timeout_s) + 1.0


@serve.deployment(name="Recovery", max_ongoing_requests=32)
class RecoveryDeployment:
    """Generate the missing modalities of samples, batching concurrent calls."""

    def __init__(self, settings: dict[str, Any], card: dict[str, Any]) -> None:
        self.settings = ServeSettings(**settings)
        torch.set_num_threads(self.settings.torch_threads)
        self.card = DatasetCard.from_dict(card)
        self.device = pick_device(self.settings.device, ray.get_gpu_ids())
        location = self.settings.recovery
        assert location is not None, "build_app resolves the recovery location"
        self.recovery = load_recovery_model(
            location, self.card, self.settings.tracking_uri, map_location=self.device
        )
        self._recover_batch.set_max_batch_size(self.settings.recovery_max_batch_size)
        self._recover_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        self.batch_sizes: Counter = Counter()
        self.started = time.monotonic()
        logger.info(
            "recovery replica %s started: model %r from %s on %s, batching %s, batch size %d",
            _replica_tag(),
            self.recovery.name,
            location,
            self.device,
            self.settings.recovery_batching,
            self.settings.recovery_max_batch_size,
        )

    async def recover(
        self, sample: DecodedSample, request_id: str, fault: str | None = None
    ) -> dict[str, Any]:
        """Return the sample's inputs with every missing modality generated.

        `fault` ("recovery-error" or "recovery-timeout") is set only when the service runs
        with `fault_injection: true`.
        """
        if fault == "recovery-error":
            raise RuntimeError(f"request {request_id}: injected recovery failure")
        if fault == "recovery-timeout":
            await asyncio.sleep(_injected_delay_s(self.settings))
        return await self._recover_batch(sample)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _recover_batch(self, samples: list[DecodedSample]) -> list[dict[str, Any]]:
        self.batch_sizes[len(samples)] += 1
        return await asyncio.to_thread(
            recover_samples,
            self.recovery,
            samples,
            self.settings.recovery_batching,
            self.settings.recovery_seed,
        )

    def stats(self) -> dict[str, Any]:
        """Return the batch sizes this replica has run, for `/v1/health`."""
        return {"model": self.recovery.name, **_batch_stats(self.batch_sizes, self.started)}

    def __del__(self) -> None:
        logger.info("recovery replica %s stopping", _replica_tag())


@serve.deployment(name="Selector", max_ongoing_requests=32)
class SelectorDeployment:
    """Run DyMo selection and the classifier on completed samples, batching calls."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ServeSettings(**settings)
        torch.set_num_threads(self.settings.torch_threads)
        self.bundle = load_bundle(self.settings.bundle, tracking_uri=self.settings.tracking_uri)
        self.device = pick_device(self.settings.device, ray.get_gpu_ids())
        self.bundle.model.to(self.device)
        self.config = self.settings.selection_config()
        self._predict_batch.set_max_batch_size(self.settings.selector_max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        self.batch_sizes: Counter = Counter()
        self.started = time.monotonic()
        logger.info(
            "selector replica %s started: bundle %s (version %s) on %s, tau %g, batch size %d",
            _replica_tag(),
            self.settings.bundle,
            self.bundle.version,
            self.device,
            self.config.tau,
            self.settings.selector_max_batch_size,
        )

    async def predict(
        self,
        sample: DecodedSample,
        strategy: str,
        request_id: str,
        fault: str | None = None,
    ) -> dict[str, Any]:
        """Predict one sample with strategy "dymo" or "discard" (see `predict_samples`).

        `fault` ("selector-error" or "selector-timeout") is set only when the service runs
        with `fault_injection: true`.
        """
        if fault == "selector-error":
            raise RuntimeError(f"request {request_id}: injected selector failure")
        if fault == "selector-timeout":
            await asyncio.sleep(_injected_delay_s(self.settings))
        return await self._predict_batch((sample, strategy))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _predict_batch(
        self, items: list[tuple[DecodedSample, str]]
    ) -> list[dict[str, Any]]:
        self.batch_sizes[len(items)] += 1
        samples = [sample for sample, _ in items]
        strategies = [strategy for _, strategy in items]
        return await asyncio.to_thread(
            predict_samples,
            self.bundle.model,
            self.bundle.stats,
            samples,
            strategies,
            self.config,
        )

    def stats(self) -> dict[str, Any]:
        """Return the batch sizes this replica has run, for `/v1/health` and the tests."""
        return {"device": str(self.device), **_batch_stats(self.batch_sizes, self.started)}

    def __del__(self) -> None:
        logger.info("selector replica %s stopping", _replica_tag())


async def _await_with_timeout(response: DeploymentResponse, timeout_s: float) -> Any:
    """Await a handle call; on timeout cancel it and raise `TimeoutError`."""
    try:
        return await asyncio.wait_for(_resolve(response), timeout_s)
    except TimeoutError:
        response.cancel()
        raise


async def _resolve(response: DeploymentResponse) -> Any:
    return await response


@serve.deployment(name="Ingress", max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    """The HTTP entry point; the FastAPI app itself is built by `dymo_ray.serve.api`."""

    def __init__(
        self,
        settings: dict[str, Any],
        served: dict[str, Any],
        recovery: DeploymentHandle,
        selector: DeploymentHandle,
    ) -> None:
        self.settings = ServeSettings(**settings)
        self.served = served
        self.card = DatasetCard.from_dict(served["card"])
        self.recovery = recovery
        self.selector = selector
        self.counts: Counter = Counter()
        self.started = time.monotonic()
        logger.info(
            "ingress replica %s started: model %s, recovery %s, recovery timeout %g s, "
            "selector timeout %g s",
            _replica_tag(),
            served["model_version"],
            served["recovery_version"],
            self.settings.recovery_timeout_s,
            self.settings.selector_timeout_s,
        )

    def __serve_build_asgi_app__(self):
        # Serve calls this after the constructor. Building the FastAPI app here lets the
        # request models and the body limit depend on the served card and the settings.
        from dymo_ray.serve.api import create_api

        return create_api(self)

    async def predict_sample(
        self,
        sample: DecodedSample,
        request_id: str,
        strategy: str = "dymo",
        fault: str | None = None,
    ) -> Prediction:
        """Predict one validated sample.

        Args:
            sample: The sample in storage form.
            request_id: Id used in logs and in the response.
            strategy: "dymo" (recovery, then selection) or "discard" (the observed
                modalities only, no recovery).
            fault: An injected fault, only with `fault_injection: true`.

        Raises:
            ServiceUnavailable: the selector raised or timed out.
        """
        degraded_reason = None
        completed = sample
        if strategy == "dymo" and sample.missing_any:
            try:
                recovered = await _await_with_timeout(
                    self.recovery.recover.remote(sample, request_id, fault),
                    self.settings.recovery_timeout_s,
                )
                completed = DecodedSample(recovered, sample.present, sample.seed)
            except TimeoutError:
                degraded_reason = (
                    f"recovery timed out after {self.settings.recovery_timeout_s:g} s"
                )
            except Exception as error:  # Any failure of the deployment degrades.
                degraded_reason = f"recovery failed ({type(error).__name__})"
                logger.warning("request %s: recovery failed: %s", request_id, error)
            if degraded_reason is not None:
                self.counts["degraded"] += 1
                logger.warning(
                    "request %s: %s, so the response uses the observed modalities only",
                    request_id,
                    degraded_reason,
                )
                strategy = "discard"

        try:
            row = await _await_with_timeout(
                self.selector.predict.remote(completed, strategy, request_id, fault),
                self.settings.selector_timeout_s,
            )
        except TimeoutError:
            self.counts["unavailable"] += 1
            logger.error(
                "request %s: the selector timed out after %g s",
                request_id,
                self.settings.selector_timeout_s,
            )
            raise ServiceUnavailable(
                f"the selector timed out after {self.settings.selector_timeout_s:g} s; "
                "retry later"
            ) from None
        except Exception as error:
            self.counts["unavailable"] += 1
            logger.error("request %s: the selector failed: %s", request_id, error)
            raise ServiceUnavailable(
                f"the selector failed ({type(error).__name__}); retry later"
            ) from None
        self.counts["succeeded"] += 1
        return self._prediction(row, sample, request_id, strategy, degraded_reason)

    def _prediction(
        self,
        row: dict[str, Any],
        sample: DecodedSample,
        request_id: str,
        strategy: str,
        degraded_reason: str | None,
    ) -> Prediction:
        class_names = self.card.class_names
        names = self.card.modality_names
        label = int(row["prediction"])
        # The recovery version is reported only when recovered values could be used.
        recovery_version = self.served["recovery_version"] if strategy == "dymo" else None
        return Prediction(
            request_id=request_id,
            label=label,
            class_name=class_names[label],
            probabilities=dict(zip(class_names, row["probabilities"])),
            strategy=strategy,
            observed=row["observed"],
            missing=[name for name, seen in zip(names, sample.present.tolist()) if not seen],
            recovered_used=row["recovered_used"],
            recovered_rejected=row["rejected"],
            steps=row["trace"],
            model_version=self.served["model_version"],
            recovery_version=recovery_version,
            degraded=degraded_reason is not None,
            degraded_reason=degraded_reason,
        )

    async def health(self) -> tuple[int, dict[str, Any]]:
        """Ask both model deployments for their stats; return (HTTP status, body)."""
        timeout_s = min(5.0, self.settings.selector_timeout_s)
        body: dict[str, Any] = {
            "model_version": self.served["model_version"],
            "recovery_version": self.served["recovery_version"],
            "ingress": {
                "replica": _replica_tag(),
                "uptime_s": round(time.monotonic() - self.started, 1),
                **{
                    key: self.counts[key]
                    for key in ("succeeded", "rejected", "degraded", "unavailable")
                },
            },
            "errors": [],
        }
        for name, handle in (("selector", self.selector), ("recovery", self.recovery)):
            try:
                body[name] = await _await_with_timeout(handle.stats.remote(), timeout_s)
            except TimeoutError:
                body["errors"].append(f"{name}: timed out after {timeout_s:g} s")
            except Exception as error:
                logger.error("health check: the %s deployment failed: %s", name, error)
                body["errors"].append(f"{name}: {type(error).__name__}")
        if "selector" not in body:
            body["status"] = "unavailable"
            return 503, body
        body["status"] = "degraded" if "recovery" not in body else "ok"
        return 200, body

    def __del__(self) -> None:
        logger.info("ingress replica %s stopping", _replica_tag())
