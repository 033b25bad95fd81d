"""The backbone training job on a real local Ray, with a temporary SQLite MLflow store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dymo_ray.bundle import BundleError, load_bundle
from dymo_ray.config import ConfigError, TrainConfig, build_config
from dymo_ray.train.backbone_job import run_training
from dymo_ray.train.common import ClusterTooSmallError

pytestmark = [pytest.mark.slow]


def tiny_config(data_dir: Path, **overrides) -> TrainConfig:
    values = {
        "dataset": "polymnist",
        "data_dir": str(data_dir),
        "epochs": 2,
        "aux_start_epoch": 1,
        "batch_size": 64,
        "width": 32,
        "heads": 2,
        "projection_dim": 16,
        "num_workers": 2,
        "torch_threads": 1,
        "run_name": "tiny",
        **overrides,
    }
    return build_config(TrainConfig, values)


@pytest.fixture(scope="module")
def trained(ray_local, tiny_polymnist, tmp_path_factory):
    """One 2-epoch, 2-worker run shared by the tests that only read its outputs."""
    folder = tmp_path_factory.mktemp("trained")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    outcome = run_training(
        tiny_config(tiny_polymnist), storage_path=folder / "ray", tracking_uri=store
    )
    return outcome, store


@pytest.mark.timeout(420)
def test_train_job_logs_and_registers(trained):
    from mlflow.tracking import MlflowClient

    outcome, store = trained
    client = MlflowClient(store)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["subsets_per_batch"] == "5"
    assert run.data.params["temperature"] == "0.1"
    history = client.get_metric_history(outcome.run_id, "val/acc")
    assert [m.step for m in history] == [1, 2]
    assert "val/acc/m0-m1-m2-m3-m4" in run.data.metrics
    assert "train/loss" in run.data.metrics
    artifacts = [a.path for a in client.list_artifacts(outcome.run_id)]
    assert "dataset_card.json" in artifacts
    assert "bundle" in artifacts

    bundle = load_bundle("models:/dymo-backbone@latest", tracking_uri=store)
    assert bundle.version == outcome.version
    assert bundle.card.name == "polymnist"
    assert bundle.stats is not None
    assert bundle.stats.prototypes.shape == (31, 10, 16)
    assert bundle.train_config["epochs"] == 2


@pytest.mark.timeout(420)
def test_worker_failure_resumes_from_checkpoint(ray_local, mlflow_store, tiny_polymnist, tmp_path):
    """A worker killed at the start of epoch 2 restarts the group from epoch 1's checkpoint."""
    marker = tmp_path / "killed"
    outcome = run_training(
        tiny_config(tiny_polymnist, epochs=3, max_failures=1),
        storage_path=tmp_path / "ray",
        fault_injection={"epoch": 1, "marker": str(marker), "rank": 1},
    )
    assert marker.exists()
    assert outcome.resumed_at == [1]
    assert outcome.epochs_run == 3


@pytest.mark.timeout(120)
def test_too_many_workers_fails_fast(ray_local, mlflow_store, tiny_polymnist):
    with pytest.raises(ClusterTooSmallError, match="num_workers=5"):
        run_training(tiny_config(tiny_polymnist, num_workers=5))


@pytest.mark.timeout(120)
def test_subsets_per_batch_above_limit_rejected(mlflow_store, tiny_polymnist):
    with pytest.raises(ConfigError, match=r"valid range: 1\.\.31"):
        run_training(tiny_config(tiny_polymnist, subsets_per_batch=32))


@pytest.mark.timeout(120)
def test_dataset_mismatch_rejected(mlflow_store, tiny_mdt):
    with pytest.raises(ConfigError, match="contains dataset 'mdt'"):
        run_training(tiny_config(tiny_mdt, dataset="polymnist"))


def test_unknown_config_key_suggests_nearest():
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        build_config(TrainConfig, {"temprature": 0.2})


def test_unknown_dataset_lists_choices():
    with pytest.raises(ConfigError, match=r"valid datasets: \['polymnist', 'mdt'\]"):
        build_config(TrainConfig, {"dataset": "cifar"})


def test_bundle_folder_without_meta_rejected(tmp_path):
    with pytest.raises(BundleError, match="bundle.json is missing"):
        load_bundle(tmp_path)


@pytest.mark.timeout(300)
def test_bundle_with_foreign_statistics_rejected(trained, tmp_path):
    """Statistics computed on one backbone must not load beside another's weights."""
    outcome, _ = trained
    folder = tmp_path / "bundle"
    shutil.copytree(outcome.bundle_dir, folder)
    state = torch.load(folder / "weights.pt")
    state["classifier.bias"] = state["classifier.bias"] + 1.0
    torch.save(state, folder / "weights.pt")
    with pytest.raises(BundleError, match="calibration statistics do not match"):
        load_bundle(folder)


@pytest.mark.timeout(120)
def test_card_not_matching_files_rejected(mlflow_store, tiny_polymnist, tmp_path):
    from dymo_ray.data.spec import CardError

    folder = tmp_path / "data"
    shutil.copytree(tiny_polymnist, folder)
    card = json.loads((folder / "card.json").read_text())
    card["modalities"][0]["shape"] = [3, 32, 32]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(CardError, match="m0"):
        run_training(tiny_config(folder))


def test_bundle_for_other_card_rejected(trained, tiny_mdt):
    from dymo_ray.data.io import load_card

    outcome, _ = trained
    with pytest.raises(BundleError, match="modality names differ"):
        load_bundle(outcome.bundle_dir, expected_card=load_card(tiny_mdt))


@pytest.mark.timeout(120)
def test_non_finite_loss_names_epoch_and_step(tiny_polymnist):
    """A diverging run stops with the epoch and step instead of training on NaN."""
    from dymo_ray.config import config_to_dict
    from dymo_ray.data.io import load_card
    from dymo_ray.train.backbone_job import backbone_config_for, resolve_config
    from dymo_ray.train.backbone_loop import NonFiniteLossError, train_backbone

    card = load_card(tiny_polymnist)
    cfg = resolve_config(tiny_config(tiny_polymnist, learning_rate=1e30, num_workers=0), card)
    config = {
        "train": config_to_dict(cfg),
        "data_dir": str(tiny_polymnist),
        "backbone": backbone_config_for(cfg, card).to_dict(),
        "session": "local",
    }
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1 step \d+"):
        train_backbone(config)


@pytest.mark.timeout(300)
def test_local_mode_keeps_its_checkpoints(ray_local, mlflow_store, tiny_polymnist, tmp_path):
    """num_workers=0 runs Ray Train's local mode, which does not copy reported checkpoints."""
    outcome = run_training(
        tiny_config(tiny_polymnist, num_workers=0, run_name="tiny-local"),
        storage_path=tmp_path / "ray",
    )
    found = (tmp_path / "ray").glob("*/local_checkpoints/epoch_*")
    checkpoint_folders = sorted(path.name for path in found)
    assert checkpoint_folders == ["epoch_0001", "epoch_0002"]
    assert outcome.epochs_run == 2
    bundle = load_bundle(outcome.bundle_dir)
    assert bundle.stats is not None
