"""Merging a job's config from its command line: YAML, preset, flags and --set overrides."""

from __future__ import annotations

import pytest

from dymo_ray.config import ConfigError, TrainConfig, merge_job_config


def test_merge_defaults_only():
    cfg = merge_job_config(TrainConfig, None, {"epochs": None}, [], None)

    assert cfg == TrainConfig()


def test_merge_later_sources_win(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 7\nbatch_size: 64\nseed: 5\nlearning_rate: 0.01\n")
    preset = {"epochs": 2, "batch_size": 128, "seed": 6}
    flags = {"epochs": 3, "batch_size": None}

    cfg = merge_job_config(TrainConfig, preset, flags, ["epochs=4"], path)

    assert cfg.learning_rate == 0.01  # YAML only
    assert cfg.seed == 6  # the preset beats the YAML
    assert cfg.batch_size == 128  # a flag given as None keeps the preset
    assert cfg.epochs == 4  # --set beats everything


def test_merge_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        merge_job_config(TrainConfig, None, {}, [], tmp_path / "absent.yaml")


def test_merge_override_without_equals():
    with pytest.raises(ConfigError, match="invalid override 'epochs': expected key=value"):
        merge_job_config(TrainConfig, None, {}, ["epochs"], None)


def test_merge_invalid_value_named():
    with pytest.raises(ConfigError, match="epochs must be >= 1, got 0"):
        merge_job_config(TrainConfig, None, {"epochs": 0}, [], None)
