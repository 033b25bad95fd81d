"""Fixtures of the sweep tests: a tiny real PolyMNIST built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from dymo_ray.data.builders import build_polymnist

# The sizes of the integration tests' tiny dataset: 320 / 160 / 80 rows, so a 2-epoch trial
# of a small backbone takes seconds and every class appears in every epoch.
TINY_PER_CLASS = 12
TINY_MULTIPLICITY = {"train": 4, "val": 8, "test": 4}


@pytest.fixture(scope="session")
def tiny_polymnist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_polymnist_tune")
    build_polymnist(out, seed=1, multiplicity=TINY_MULTIPLICITY,
                    per_class_limit=TINY_PER_CLASS, progress=False)
    return out
