"""Every Serve config YAML in serve_configs/ validates and builds the application."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.deployment import Application
from ray.serve.schema import ServeDeploySchema

from dymo_ray.serve.settings import load_settings

CONFIG_DIR = Path(__file__).resolve().parents[2] / "serve_configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
MODEL_DEPLOYMENTS = {"Recovery": "recovery_max_batch_size", "Selector": "selector_max_batch_size"}


def load_config(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_config_folder_has_cpu_and_gpu():
    names = [path.name for path in CONFIGS]
    assert "cpu.yaml" in names
    assert "gpu.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_opens_with_command(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# Deploys"), "the file must open with what it deploys"
    assert any(f"serve run serve_configs/{path.name}" in line for line in lines)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_matches_serve_schema(path):
    schema = ServeDeploySchema.model_validate(load_config(path))
    assert [app.import_path for app in schema.applications] == [
        "dymo_ray.serve.app:build_app"
    ]
    assert schema.http_options.host == "127.0.0.1"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_args_are_valid_settings(path):
    (application,) = load_config(path)["applications"]
    settings = load_settings(application["args"])
    assert settings.bundle.startswith("models:/dymo-backbone")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_model_deployments_can_fill_batches(path):
    """`max_ongoing_requests` below the batch size would keep `@serve.batch` from filling."""
    (application,) = load_config(path)["applications"]
    settings = load_settings(application["args"])
    deployments = {item["name"]: item for item in application["deployments"]}
    for name, batch_key in MODEL_DEPLOYMENTS.items():
        deployment = deployments[name]
        assert deployment["max_ongoing_requests"] >= getattr(settings, batch_key), name
        scaling = deployment["autoscaling_config"]
        assert scaling["min_replicas"] == 1, name
        assert scaling["max_replicas"] >= 2, name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_actor_options_list_cpus(path):
    """A YAML `ray_actor_options` replaces the code's dict, so num_cpus must be restated."""
    (application,) = load_config(path)["applications"]
    for deployment in application["deployments"]:
        options = deployment.get("ray_actor_options")
        assert options is not None, deployment["name"]
        assert 0 < options["num_cpus"] <= 1, deployment["name"]


def test_cpu_config_fits_two_cores():
    (application,) = load_config(CONFIG_DIR / "cpu.yaml")["applications"]
    reserved = 0.0
    for deployment in application["deployments"]:
        scaling = deployment.get("autoscaling_config") or {}
        replicas = deployment.get("num_replicas") or scaling["max_replicas"]
        reserved += replicas * deployment["ray_actor_options"]["num_cpus"]
        assert deployment["ray_actor_options"].get("num_gpus", 0) == 0, deployment["name"]
    assert reserved <= 2.0


def test_gpu_config_gives_selector_gpu_fraction():
    (application,) = load_config(CONFIG_DIR / "gpu.yaml")["applications"]
    selector = {item["name"]: item for item in application["deployments"]}["Selector"]
    assert 0 < selector["ray_actor_options"]["num_gpus"] < 1
    assert selector["autoscaling_config"]["max_replicas"] * selector["ray_actor_options"][
        "num_gpus"
    ] > 1, "the selector should be able to grow past one GPU"
    assert application["args"]["device"] == "auto"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_import_path_builds_app(path, serve_bundle):
    (application,) = load_config(path)["applications"]
    args = {**application["args"], "bundle": str(serve_bundle), "recovery": "noise"}
    module_name, attribute = application["import_path"].split(":")
    builder = getattr(importlib.import_module(module_name), attribute)
    app = call_user_app_builder_with_args_if_necessary(builder, args)
    assert isinstance(app, Application)
