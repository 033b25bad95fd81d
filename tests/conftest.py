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


# 12 MNIST images per class give 8 train, 2 val and 2 test images per class. With these
# multiplicities that is 320 / 160 / 80 rows: a 2-epoch run takes seconds, and every class
# still appears in each of two workers' shards and in every calibration subset.
TINY_PER_CLASS = 12
TINY_MULTIPLICITY = {"train": 4, "val": 8, "test": 4}


@pytest.fixture(scope="session")
def tiny_polymnist(tmp_path_factory):
    """A tiny real PolyMNIST (seed 1), built once per session and shared read-only."""
    from dymo_ray.data.builders import build_polymnist

    out = tmp_path_factory.mktemp("tiny_polymnist")
    build_polymnist(out, seed=1, multiplicity=TINY_MULTIPLICITY,
                    per_class_limit=TINY_PER_CLASS, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_mdt(tmp_path_factory):
    """A tiny real MNIST-Digits-Text (seed 1), built once per session and shared read-only."""
    from dymo_ray.data.builders import build_mdt

    out = tmp_path_factory.mktemp("tiny_mdt")
    build_mdt(out, seed=1, multiplicity=TINY_MULTIPLICITY,
              per_class_limit=TINY_PER_CLASS, progress=False)
    return out
