"""The Serve application builder: `import_path: dymo_ray.serve.app:build_app`.

    serve run serve_configs/cpu.yaml
    serve run dymo_ray.serve.app:build_app bundle=runs/my_bundle recovery=noise

`build_app(args)` runs in the process that deploys the app (the `serve run` process). It
validates the settings and pins `models:/<name>@<alias>` URIs to their current version, so
every replica loads the same model, including replicas the autoscaler adds later. It
resolves local paths to absolute ones and loads the bundle once, to fail early with a clear
message. The replicas then load their models from the pinned locations.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray.serve import Application

from dymo_ray import tracking
from dymo_ray.bundle import BundleError, load_bundle
from dymo_ray.config import ConfigError
from dymo_ray.data.spec import DatasetCard
from dymo_ray.recovery import is_registry_uri
from dymo_ray.recovery.factory import BASELINE_RECOVERIES
from dymo_ray.serve.deployments import Ingress, RecoveryDeployment, SelectorDeployment
from dymo_ray.serve.settings import ServeSettings, load_settings

logger = logging.getLogger(__name__)

# Requests a model replica may hold: two full batches, so one can fill while one runs.
_ONGOING_PER_BATCH = 2
# The ingress only awaits other deployments, so one replica takes many requests at once.
INGRESS_MAX_ONGOING_REQUESTS = 256


@dataclass
class ServedModels:
    """The pinned models an app serves, as the ingress reports them.

    Attributes:
        card: Dataset card of the bundle, as a dict.
        model_version: "<registered name>/<version>" or "local:<fingerprint prefix>".
        model_source: Pinned bundle location the replicas load.
        backbone_fingerprint: SHA-256 of the backbone weights.
        metric: "cosine" or "euclidean".
        recovery_version: "<registered name>/<version>", "zeros", "noise" or
            "local:<folder name>".
        recovery_source: Pinned recovery location the replicas load.
    """

    card: dict[str, Any]
    model_version: str
    model_source: str
    backbone_fingerprint: str | None
    metric: str
    recovery_version: str
    recovery_source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pin_registry_uri(
    location: str, tracking_uri: str, model_kind: str, hint: str
) -> tuple[str, str]:
    # Returns (pinned URI, "<name>/<version>").
    try:
        name, version = tracking.resolve_model_version(location, tracking_uri)
    except ValueError as error:
        raise ConfigError(f"{model_kind} {location!r} not found: {error}; {hint}") from error
    return f"models:/{name}/{version}", f"{name}/{version}"


def _resolve_bundle(settings: ServeSettings, tracking_uri: str):
    location = settings.bundle
    hint = (
        "train and register one with `python jobs/train.py`, or set the bundle arg to a "
        "bundle folder"
    )
    version_label = None
    if location.startswith("models:/"):
        location, version_label = _pin_registry_uri(location, tracking_uri, "bundle", hint)
    elif not is_registry_uri(location):
        location = str(Path(location).expanduser().resolve())
    try:
        bundle = load_bundle(location, tracking_uri=tracking_uri)
    except BundleError as error:
        raise ConfigError(f"failed to load the bundle (setting bundle): {error}; {hint}") from error
    fingerprint = bundle.stats.backbone_fingerprint if bundle.stats is not None else None
    if version_label is None:
        version_label = location if is_registry_uri(location) else f"local:{fingerprint[:12]}"
    return bundle, location, version_label, fingerprint


def _resolve_recovery(
    settings: ServeSettings, card: DatasetCard, bundle_recovery: str | None, tracking_uri: str
) -> tuple[str, str]:
    location = settings.recovery or bundle_recovery or f"models:/dymo-recovery-{card.name}@latest"
    if location in BASELINE_RECOVERIES:
        return location, location
    if location.startswith("models:/"):
        hint = (
            f"train and register one with `python jobs/train_recovery.py --dataset "
            f"{card.name}`, or set the recovery arg to a saved folder or to one of "
            f"{list(BASELINE_RECOVERIES)}"
        )
        return _pin_registry_uri(location, tracking_uri, "recovery model", hint)
    if location.startswith("runs:/"):
        return location, location
    folder = Path(location).expanduser().resolve()
    if not (folder / "recovery.json").exists():
        raise ConfigError(
            f"recovery model folder {folder} has no recovery.json (setting recovery); "
            f"valid values: a models:/ URI, a folder written by save_recovery, or one of "
            f"{list(BASELINE_RECOVERIES)}"
        )
    return str(folder), f"local:{folder.name}"


def resolve_settings(settings: ServeSettings) -> tuple[ServeSettings, ServedModels]:
    """Pin the model locations of `settings` and describe the served models.

    Returns:
        The settings with absolute, pinned `bundle`, `recovery` and `tracking_uri`, and the
        description of the served models.

    Raises:
        ConfigError: the bundle or the recovery model cannot be found or loaded.
    """
    tracking_uri = settings.tracking_uri or tracking.tracking_uri()
    bundle, bundle_location, model_version, fingerprint = _resolve_bundle(settings, tracking_uri)
    recovery_location, recovery_version = _resolve_recovery(
        settings, bundle.card, bundle.recovery_uri, tracking_uri
    )
    pinned = ServeSettings(
        **{
            **settings.to_dict(),
            "bundle": bundle_location,
            "recovery": recovery_location,
            "tracking_uri": tracking_uri,
        }
    )
    served = ServedModels(
        card=bundle.card.to_dict(),
        model_version=model_version,
        model_source=bundle_location,
        backbone_fingerprint=fingerprint,
        metric=bundle.backbone_config.metric,
        recovery_version=recovery_version,
        recovery_source=recovery_location,
    )
    return pinned, served


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Build the serving application from the `args` of a Serve config.

    Args:
        args: Keys of `ServeSettings` (e.g. bundle, recovery, tau, recovery_timeout_s,
            max_body_bytes); missing keys take their defaults.

    Returns:
        The bound Ingress -> Recovery, Selector application.

    Raises:
        ConfigError: an arg is unknown or invalid, or a model cannot be found.
    """
    settings, served = resolve_settings(load_settings(args))
    logger.info(
        "serving bundle %s (%s) with recovery %s (%s)",
        served.model_version,
        settings.bundle,
        served.recovery_version,
        settings.recovery,
    )
    values = settings.to_dict()
    actor_options = {"num_cpus": settings.replica_num_cpus}

    def autoscaling(batch_size: int) -> dict[str, Any]:
        return {
            "min_replicas": 1,
            "initial_replicas": 1,
            "max_replicas": settings.max_replicas,
            "target_ongoing_requests": batch_size,
        }

    recovery = RecoveryDeployment.options(
        ray_actor_options=actor_options,
        max_ongoing_requests=_ONGOING_PER_BATCH * settings.recovery_max_batch_size,
        autoscaling_config=autoscaling(settings.recovery_max_batch_size),
    ).bind(values, served.card)
    selector = SelectorDeployment.options(
        ray_actor_options=actor_options,
        max_ongoing_requests=_ONGOING_PER_BATCH * settings.selector_max_batch_size,
        autoscaling_config=autoscaling(settings.selector_max_batch_size),
    ).bind(values)
    return Ingress.options(
        ray_actor_options=actor_options,
        num_replicas=1,
        max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
    ).bind(values, served.to_dict(), recovery, selector)
