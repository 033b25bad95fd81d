"""The recovery training job on a real local Ray, with a temporary SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dymo_ray.config import build_config
from dymo_ray.data.io import load_card, load_split
from dymo_ray.data.spec import CardError
from dymo_ray.recovery import load_registered_recovery
from dymo_ray.train.recovery_job import run_recovery_training
from dymo_ray.train.recovery_loop import RecoveryTrainConfig

pytestmark = [pytest.mark.slow]


def tiny_config(dataset: str, data_dir: Path, **overrides) -> RecoveryTrainConfig:
    values = {
        "dataset": dataset,
        "data_dir": str(data_dir),
        "epochs": 1,
        "batch_size": 64,
        "latent_dim": 8,
        "hidden_dim": 32,
        "classifier_epochs": 1,
        "grid_rows": 4,
        "num_workers": 2,
        "torch_threads": 1,
        "run_name": f"tiny-{dataset}",
        **overrides,
    }
    return build_config(RecoveryTrainConfig, values)


@pytest.fixture(scope="module")
def trained_polymnist(ray_local, tiny_polymnist, tmp_path_factory):
    """One 1-epoch, 2-worker MoPoE run shared by the tests that only read its outputs."""
    folder = tmp_path_factory.mktemp("recovery_polymnist")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    outcome = run_recovery_training(
        tiny_config("polymnist", tiny_polymnist), storage_path=folder / "ray", tracking_uri=store
    )
    return outcome, store


@pytest.mark.timeout(420)
def test_recovery_job_logs_run(trained_polymnist):
    from mlflow.tracking import MlflowClient

    outcome, store = trained_polymnist
    client = MlflowClient(store)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "mopoe"
    assert [m.step for m in client.get_metric_history(outcome.run_id, "train/loss")] == [1]
    assert "train/recon/m4" in run.data.metrics
    assert "train/kl" in run.data.metrics
    assert "coherence/m0/k4" in run.data.metrics
    assert "classifier/m3" in run.data.metrics

    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"dataset_card.json", "recovery", "coherence.json", "coherence.txt"} <= artifacts
    grids = [a.path for a in client.list_artifacts(outcome.run_id, "grids")]
    assert grids == ["grids/recovered_epoch_001.png"]


@pytest.mark.timeout(420)
def test_registered_recovery_loads_on_cpu(trained_polymnist, tiny_polymnist):
    outcome, store = trained_polymnist
    card = load_card(tiny_polymnist)
    recovery = load_registered_recovery(
        "models:/dymo-recovery-polymnist@latest", card=card, tracking_uri=store
    )
    assert recovery.name == "mopoe"
    assert recovery.device == torch.device("cpu")
    assert recovery.config_dict()["latent_dim"] == 8

    test = load_split(tiny_polymnist, "test", limit=6)
    present = torch.zeros((6, 5), dtype=torch.bool)
    present[:, 0] = True
    completed = recovery.recover(test.inputs, present, seed=0)
    assert torch.equal(completed["m0"], test.inputs["m0"])
    assert completed["m3"].shape == (6, 3, 28, 28)


@pytest.mark.timeout(420)
def test_registered_recovery_rejects_other_card(trained_polymnist, tiny_mdt):
    _, store = trained_polymnist
    with pytest.raises(CardError, match="modality names differ"):
        load_registered_recovery(
            "models:/dymo-recovery-polymnist@latest", card=load_card(tiny_mdt), tracking_uri=store
        )


@pytest.mark.timeout(420)
def test_coherence_table_covers_modalities(trained_polymnist):
    outcome, _ = trained_polymnist
    keys = {(row.modality, row.num_observed) for row in outcome.coherence.rows}
    assert keys == {(f"m{i}", k) for i in range(5) for k in range(1, 5)}
    assert set(outcome.coherence.real_accuracy) == {f"m{i}" for i in range(5)}


@pytest.mark.timeout(420)
def test_mdt_worker_failure_resumes(ray_local, tiny_mdt, tmp_path):
    """One epoch of MMVAE+ on the mixed-kind card, then a worker killed at epoch 2: the group
    restarts from the epoch-1 checkpoint and finishes."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_recovery_training(
        tiny_config("mdt", tiny_mdt, model="mmvae_plus", style_dim=4, epochs=2, max_failures=1),
        storage_path=tmp_path / "ray",
        fault_injection={"epoch": 1, "marker": str(tmp_path / "killed"), "rank": 1},
        tracking_uri=store,
    )
    assert (tmp_path / "killed").exists()
    assert outcome.resumed_at == [1]
    assert outcome.epochs_run == 2
    recovery = load_registered_recovery("models:/dymo-recovery-mdt@latest", tracking_uri=store)
    test = load_split(tiny_mdt, "test", limit=4)
    present = torch.tensor([[True, False, False]] * 4)
    text = recovery.recover(test.inputs, present, seed=0)["text"]
    assert int(text.min()) >= 0
    assert int(text.max()) < 71


@pytest.mark.timeout(300)
def test_local_mode_keeps_its_checkpoint(ray_local, mlflow_store, tiny_polymnist, tmp_path):
    """num_workers=0 runs Ray Train's local mode, which does not copy reported checkpoints."""
    outcome = run_recovery_training(
        tiny_config("polymnist", tiny_polymnist, num_workers=0, test_limit=64,
                    classifier_train_limit=128, coherence_max_subsets=1),
        storage_path=tmp_path / "ray",
    )
    found = (tmp_path / "ray").glob("*/local_checkpoints/epoch_*")
    checkpoint_folders = sorted(path.name for path in found)
    assert checkpoint_folders == ["epoch_0001"]
    assert outcome.epochs_run == 1
