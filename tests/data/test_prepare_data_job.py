"""The prepare_data job script: arguments, output summary, and errors."""

from __future__ import annotations

import importlib.util

import pytest

from dymo_ray.data.io import load_split
from dymo_ray.paths import project_root


def _load_job():
    spec = importlib.util.spec_from_file_location("prepare_data_job", project_root() / "jobs" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_job_builds_and_prints_card(tmp_path, capsys):
    job = _load_job()
    code = job.main([
        "--dataset", "mdt", "--out", str(tmp_path), "--seed", "4",
        "--per-class-limit", "10", "--multiplicity", "train=3", "--no-progress",
    ])
    output = capsys.readouterr().out
    assert code == 0
    assert "dataset mdt (seed 4)" in output
    assert "text     text    shape [8] int64 values 0..70, alphabet of 71" in output
    assert "splits: train 210, val 10, test 40" in output
    assert f"folder: {tmp_path.resolve()}" in output
    assert "built in" in output
    assert len(load_split(tmp_path, "train")) == 210


def test_job_default_out_is_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DYMO_RAY_HOME", str(tmp_path))
    job = _load_job()
    job.main(["--dataset", "mdt", "--per-class-limit", "10", "--no-progress"])
    assert (tmp_path / "data" / "mdt" / "card.json").exists()
    assert f"folder: {tmp_path.resolve() / 'data' / 'mdt'}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "svhn"], "invalid choice: 'svhn'"),
        (["--multiplicity", "train:4"], "invalid multiplicity 'train:4'"),
        (["--dataset", "mdt", "--mnist-dir", "x"], "apply to --dataset polymnist only"),
        (["--mnist-dir", "x", "--polymnist-dir", "y"], "either --mnist-dir or --polymnist-dir"),
    ],
)
def test_job_rejects_bad_arguments(argv, message, capsys):
    job = _load_job()
    with pytest.raises(SystemExit):
        job.parse_args(argv)
    assert message in capsys.readouterr().err
