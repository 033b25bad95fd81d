"""Fixtures of the serving tests: a tiny real mdt dataset and a random-weight bundle on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dymo_ray.data.builders import build_mdt
from serve_helpers import build_tiny_bundle

# 12 MNIST images per class; 4 rounds over them give 32 train rows per class, enough for
# the calibration statistics of every subset.
TINY_PER_CLASS = 12
TINY_MULTIPLICITY = {"train": 4, "val": 8, "test": 4}


@pytest.fixture(scope="session")
def serve_mdt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve_mdt")
    build_mdt(out, seed=1, multiplicity=TINY_MULTIPLICITY,
              per_class_limit=TINY_PER_CLASS, progress=False)
    return out


@pytest.fixture(scope="session")
def serve_bundle(serve_mdt, tmp_path_factory) -> Path:
    return build_tiny_bundle(serve_mdt, tmp_path_factory.mktemp("serve_bundle"))
