"""Shared fixtures: one local Ray instance per test session and a temporary MLflow store."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Keep the torch thread pool small: Ray workers and the test process share 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A fresh local Ray with 2 CPUs and no dashboard, shared by every Ray test."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    """Point MLflow and the run folder at a temporary SQLite store; return its URI."""
    home = tmp_path / "runs"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.setenv("DYMO_RAY_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
