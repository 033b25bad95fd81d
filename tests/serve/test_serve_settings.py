"""Serving settings and the app builder's checks, without Ray."""

from __future__ import annotations

import pytest

from dymo_ray.config import ConfigError
from dymo_ray.serve.app import build_app, resolve_settings
from dymo_ray.serve.settings import load_settings


def test_settings_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match="did you mean 'tau'"):
        load_settings({"taau": 0.2})


def test_settings_list_every_invalid_value():
    with pytest.raises(ConfigError) as caught:
        load_settings({"recovery_batching": "sometimes", "max_body_bytes": 0, "tau": -1})
    message = str(caught.value)
    assert "recovery_batching 'sometimes'" in message
    assert "max_body_bytes must be an integer >= 1" in message
    assert "tau must be a finite number > 0" in message


def test_settings_read_strings_from_cli():
    settings = load_settings({"tau": "0.2", "fault_injection": "true", "max_steps": "null"})
    assert settings.tau == 0.2
    assert settings.fault_injection is True
    assert settings.max_steps is None


def test_build_app_missing_bundle_names_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"setting bundle.*python jobs/train.py"):
        build_app({"bundle": str(tmp_path / "absent")})


def test_build_app_missing_recovery_names_setting(serve_bundle, tmp_path):
    with pytest.raises(ConfigError, match="has no recovery.json"):
        build_app({"bundle": str(serve_bundle), "recovery": str(tmp_path)})


def test_registry_recovery_missing_suggests_job(serve_bundle, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ConfigError, match="jobs/train_recovery.py --dataset mdt"):
        build_app({"bundle": str(serve_bundle), "tracking_uri": store})


def test_resolve_pins_absolute_paths(serve_bundle, monkeypatch):
    monkeypatch.chdir(serve_bundle.parent)
    settings, served = resolve_settings(
        load_settings({"bundle": serve_bundle.name, "recovery": "zeros"})
    )
    assert settings.bundle == str(serve_bundle.resolve())
    assert served.model_version.startswith("local:")
    assert served.recovery_version == "zeros"
    assert served.card["name"] == "mdt"
