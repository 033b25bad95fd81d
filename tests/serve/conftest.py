"""Fixtures of the serving tests: the session's tiny mdt dataset and a random-weight bundle on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_helpers import build_tiny_bundle


@pytest.fixture(scope="session")
def serve_mdt(tiny_mdt) -> Path:
    return tiny_mdt


@pytest.fixture(scope="session")
def serve_bundle(serve_mdt, tmp_path_factory) -> Path:
    return build_tiny_bundle(serve_mdt, tmp_path_factory.mktemp("serve_bundle"))
