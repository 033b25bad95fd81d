"""MLflow setup, a small run logger for rank 0, and model-registry helpers.

The driver creates the database, the experiment and the run; workers only log to a run id
they are given. Concurrent first writers to a new SQLite store race ("database is locked"),
which is why nothing here creates a store from inside a Ray worker.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

from dymo_ray.paths import run_dir

logger = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"

# MLflow metric names allow letters, digits, "_", "-", ".", " ", ":" and "/". Subset and
# protocol names use "+" ("m0+m3", "drop:mnist+text"), so "+" becomes "-" in metric keys.
_METRIC_NAME_INVALID = re.compile(r"[^A-Za-z0-9_\-. :/]")


def metric_key(name: str) -> str:
    """Return `name` with characters that MLflow rejects in metric names replaced by "-"."""
    return _METRIC_NAME_INVALID.sub("-", name)


def tracking_uri() -> str:
    """Return `$MLFLOW_TRACKING_URI`, else the embedded SQLite store in the run folder."""
    configured = os.environ.get(TRACKING_URI_ENV)
    if configured:
        return configured
    # Four slashes: "sqlite:///" followed by an absolute path that starts with "/".
    return f"sqlite:///{run_dir() / 'mlflow.db'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(name: str, uri: str | None = None) -> str:
    """Return the id of experiment `name`, creating it (with a local artifact root) if needed.

    On the embedded SQLite store the artifact location is an absolute folder beside the
    database, so artifacts never land in whatever directory a worker happens to run in.
    """
    uri = uri or tracking_uri()
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///"):])
        artifact_root = database.parent / "mlartifacts" / name
        artifact_root.mkdir(parents=True, exist_ok=True)
        artifact_location = artifact_root.as_uri()
    experiment_id = client.create_experiment(name, artifact_location=artifact_location)
    logger.info("created MLflow experiment %r (id %s) at %s", name, experiment_id, uri)
    return experiment_id


class RunLogger(Protocol):
    """Tracker interface used by training code, implemented by `MlflowRunLogger` and `NullLogger`."""

    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_dict(self, data: dict[str, Any], file_name: str) -> None: ...


class NullLogger:
    """A logger that drops everything: for ranks other than 0 and for unit tests."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_dict(self, data: dict[str, Any], file_name: str) -> None:
        pass


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            # MLflow caps a param value at 6000 characters.
            flat[name] = str(value)[:6000]
    return flat


class MlflowRunLogger:
    """Log to one existing MLflow run through the client API (no global fluent state)."""

    def __init__(self, run_id: str, uri: str | None = None) -> None:
        self.run_id = run_id
        self.uri = uri or tracking_uri()
        self._client = _client(self.uri)

    @classmethod
    def start(
        cls,
        experiment: str,
        run_name: str | None = None,
        uri: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> MlflowRunLogger:
        """Create a run in `experiment` (created if missing) and return a logger for it."""
        uri = uri or tracking_uri()
        experiment_id = ensure_experiment(experiment, uri)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = _client(uri).create_run(experiment_id, run_name=run_name, tags=all_tags)
        logger.info("MLflow run %s (%s) in experiment %r", run.info.run_id, run_name, experiment)
        return cls(run.info.run_id, uri)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in _flatten(params).items()]
        # MLflow accepts at most 100 params per batch call.
        for start in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(metric_key(key), float(value), now, step or 0)
            for key, value in metrics.items()
            if value is not None and math.isfinite(float(value))
        ]
        for start in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict[str, Any], file_name: str) -> None:
        self._client.log_dict(self.run_id, data, file_name)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, value)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        self._client.set_terminated(self.run_id, status=status)


# MLflow 3 reserves the alias "latest": `models:/<name>/latest` already means the newest
# version. Registering with alias "latest" therefore sets no alias, and loading
# `models:/<name>@latest` resolves to the newest version.
RESERVED_ALIAS = "latest"


def register_artifact(
    run_id: str,
    artifact_path: str,
    name: str,
    alias: str,
    uri: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Register the run artifact folder `artifact_path` as a new version of model `name`.

    Returns:
        The new version number, as a string. `alias` is moved to this version, except for
        the reserved "latest", which MLflow resolves to the newest version by itself.
    """
    from mlflow.exceptions import MlflowException

    client = _client(uri or tracking_uri())
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"runs:/{run_id}/{artifact_path}"
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags or {})
    if alias.lower() != RESERVED_ALIAS:
        client.set_registered_model_alias(name, alias, version.version)
    logger.info("registered %s version %s (alias %r) from %s", name, version.version, alias, source)
    return str(version.version)


def resolve_model_version(model_uri: str, uri: str | None = None) -> tuple[str, str]:
    """Return (name, version) for `models:/<name>@<alias>` or `models:/<name>/<version>`.

    `latest` (as alias or version) means the newest version.

    Raises:
        ValueError: the URI is not a models:/ URI, or the model or alias does not exist.
    """
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith("models:/"):
        raise ValueError(f"expected a models:/ URI, got {model_uri!r}")
    body = model_uri[len("models:/"):]
    if "@" in body:
        name, selector = body.split("@", 1)
    elif "/" in body:
        name, selector = body.rsplit("/", 1)
    else:
        name, selector = body, RESERVED_ALIAS
    client = _client(uri or tracking_uri())
    try:
        if selector.lower() == RESERVED_ALIAS:
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise ValueError(f"registered model {name!r} has no versions")
            return name, str(max(int(v.version) for v in versions))
        if "@" in body:
            return name, str(client.get_model_version_by_alias(name, selector).version)
        client.get_model_version(name, selector)
        return name, selector
    except MlflowException as error:
        raise ValueError(
            f"cannot resolve {model_uri!r} in the MLflow store {uri or tracking_uri()}: {error}"
        ) from error


def download_artifacts(artifact_uri: str, uri: str | None = None) -> Path:
    """Download a `models:/`, `runs:/` or artifact URI to a new temporary folder.

    `models:/` URIs are resolved through this module's client so that the registry of the
    given tracking store is used (the fluent API would fall back to a default store).
    """
    import mlflow.artifacts

    uri = uri or tracking_uri()
    if artifact_uri.startswith("models:/"):
        name, version = resolve_model_version(artifact_uri, uri)
        artifact_uri = _client(uri).get_model_version_download_uri(name, version)
    destination = tempfile.mkdtemp(prefix="dymo_ray_download_")
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=artifact_uri, dst_path=destination, tracking_uri=uri
    )
    return Path(local)
