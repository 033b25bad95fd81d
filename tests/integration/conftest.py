"""Fixtures of the integration tests: tiny real datasets built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from dymo_ray.data.builders import build_mdt, build_polymnist

# 12 MNIST images per class: 8 train, 1 val, 3 test (70/10/20 % rounded), times the
# multiplicities below; small enough for a 2-epoch run in seconds, large enough that every
# class appears in every worker's shard.
TINY_PER_CLASS = 12
TINY_MULTIPLICITY = {"train": 4, "val": 8, "test": 4}


@pytest.fixture(scope="session")
def tiny_polymnist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_polymnist")
    build_polymnist(out, seed=1, multiplicity=TINY_MULTIPLICITY,
                    per_class_limit=TINY_PER_CLASS, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_mdt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_mdt")
    build_mdt(out, seed=1, multiplicity=TINY_MULTIPLICITY,
              per_class_limit=TINY_PER_CLASS, progress=False)
    return out
