"""The evaluate job: table, CSV, plot and MLflow run on real mdt rows, and its input errors."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch

from dymo_ray.bundle import ModelBundle
from dymo_ray.data.io import load_split
from dymo_ray.evaluation import compare_dymo
from dymo_ray.models.backbone import BackboneConfig, FusionBackbone
from dymo_ray.paths import project_root
from dymo_ray.selection import compute_calibration_stats

STRATEGIES = {"discard", "impute_all", "dymo", "oracle"}
MDT_DROP_PATTERNS = 6  # 3 modalities: 3 single drops and 3 pair drops


def load_job():
    path = project_root() / "jobs" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("evaluate_job", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_random_bundle(data_dir: Path, folder: Path) -> Path:
    """Save a small random-weight backbone with calibration statistics of the train split."""
    train = load_split(data_dir, "train")
    torch.manual_seed(0)
    config = BackboneConfig(width=16, heads=2, blocks=1, projection_dim=8, mlp_ratio=2)
    model = FusionBackbone(train.card, config).eval()
    stats = compute_calibration_stats(
        model, [(train.inputs, train.labels)], train.card.num_classes
    )
    bundle = ModelBundle(model=model, card=train.card, stats=stats, train_config={})
    return bundle.save(folder)


@pytest.mark.timeout(300)
def test_evaluate_writes_table_csv_plot_run(tiny_mdt, mlflow_store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    bundle_dir = save_random_bundle(tiny_mdt, tmp_path / "bundle")
    out = tmp_path / "eval"
    code = load_job().main([
        "--dataset", "mdt", "--bundle", str(bundle_dir), "--recovery", "noise",
        "--data-dir", str(tiny_mdt), "--out", str(out), "--no-progress",
    ])
    output = capsys.readouterr().out

    assert code == 0
    with open(out / "eval_mdt.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == MDT_DROP_PATTERNS * len(STRATEGIES)
    assert {row["strategy"] for row in rows} == STRATEGIES
    assert all(0.0 <= float(row["accuracy"]) <= 1.0 for row in rows)
    for protocol in {row["protocol"] for row in rows}:
        assert f"\n{protocol} " in output  # one table row per protocol
    assert "DyMo minus discard, accuracy points: " in output
    assert (out / "eval_mdt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name("dymo-eval")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].info.run_id in output
    protocol = rows[0]["protocol"]
    assert f"eval/{protocol}/dymo/acc" in runs[0].data.metrics
    artifacts = {item.path for item in client.list_artifacts(runs[0].info.run_id)}
    assert artifacts == {"eval_mdt.csv", "eval_mdt.png"}


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_evaluate_rejects_limit_below_one(limit, tiny_mdt, mlflow_store, tmp_path, capsys):
    bundle_dir = save_random_bundle(tiny_mdt, tmp_path / "bundle")
    code = load_job().main([
        "--dataset", "mdt", "--bundle", str(bundle_dir), "--recovery", "noise",
        "--data-dir", str(tiny_mdt), "--limit", limit, "--no-progress",
    ])

    assert code == 2
    assert f"limit must be an integer >= 1 or None, got {limit}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--split", "nosuch"], "split 'nosuch' not found in dataset"),
        (["--protocols", "drop:text,drop:text"], "invalid --protocols: ['drop:text'] repeated"),
        (["--protocols", ""], "protocol"),
        (["--out", "FILE"], "failed to create the --out folder"),
    ],
)
def test_evaluate_bad_option_named(extra, message, tiny_mdt, mlflow_store, tmp_path, capsys):
    bundle_dir = save_random_bundle(tiny_mdt, tmp_path / "bundle")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    extra = [str(a_file) if item == "FILE" else item for item in extra]
    code = load_job().main([
        "--dataset", "mdt", "--bundle", str(bundle_dir), "--recovery", "noise",
        "--data-dir", str(tiny_mdt), "--no-progress", *extra,
    ])

    assert code == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error


@pytest.mark.parametrize("size", ["0", "-1"])
def test_evaluate_batch_size_below_one(size, capsys):
    with pytest.raises(SystemExit) as raised:
        load_job().parse_args(["--batch-size", size])

    assert raised.value.code == 2
    assert f"must be an integer >= 1, got {size}" in capsys.readouterr().err


def test_compare_dymo_discard_wins():
    pivot = [
        {"protocol": "random:0.2", "discard": 0.9895, "impute_all": 0.9625, "dymo": 0.9875},
        {"protocol": "random:0.8", "discard": 0.9350, "impute_all": 0.6810, "dymo": 0.9400},
    ]

    lines = compare_dymo(pivot)

    assert lines[0] == "DyMo minus discard, accuracy points: random:0.2 -0.20, random:0.8 +0.50"
    assert lines[1] == (
        "DyMo minus impute-all, accuracy points: random:0.2 +2.50, random:0.8 +25.90"
    )
    assert lines[2].startswith("discard beats DyMo at 1 of 2 protocols (random:0.2).")
    assert "/v1/classify" in lines[2]


def test_compare_dymo_never_below_discard():
    pivot = [{"protocol": "drop:a", "discard": 0.5, "impute_all": 0.4, "dymo": 0.5}]

    lines = compare_dymo(pivot)

    assert lines[-1] == "DyMo is at or above discard at every protocol."
