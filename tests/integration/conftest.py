"""Fixtures of the integration tests: tiny real datasets built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from dymo_ray.data.builders import build_mdt, build_polymnist

# 12 MNIST images per class give 8 train, 2 val and 2 test images per class. With the
# multiplicities below that is 320 / 160 / 80 rows: a 2-epoch run takes seconds, and every
# class still appears in each of two workers' shards.
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
