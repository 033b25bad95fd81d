"""Fixtures of the data tests: small real builds, shared per session (they are read-only)."""

from __future__ import annotations

import pytest

from data_helpers import SMALL_LIMIT, SMALL_MDT_MULTIPLICITY, SMALL_POLYMNIST_MULTIPLICITY

from dymo_ray.data.builders import BuildResult, build_mdt, build_polymnist


@pytest.fixture(scope="session")
def small_polymnist(tmp_path_factory) -> BuildResult:
    out = tmp_path_factory.mktemp("polymnist_small")
    return build_polymnist(
        out, seed=3, multiplicity=SMALL_POLYMNIST_MULTIPLICITY, per_class_limit=SMALL_LIMIT,
        progress=False,
    )


@pytest.fixture(scope="session")
def small_mdt(tmp_path_factory) -> BuildResult:
    out = tmp_path_factory.mktemp("mdt_small")
    return build_mdt(
        out, seed=3, multiplicity=SMALL_MDT_MULTIPLICITY, per_class_limit=SMALL_LIMIT,
        progress=False,
    )
