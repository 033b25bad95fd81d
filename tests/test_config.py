"""Job configs: merging the command line (YAML, preset, flags, --set) and range checks."""

from __future__ import annotations

import pytest

from dymo_ray.config import ConfigError, TrainConfig, merge_job_config, range_problems


def test_merge_defaults_only():
    cfg = merge_job_config(TrainConfig, None, {"epochs": None}, [], None)

    assert cfg == TrainConfig()


def test_merge_later_sources_win(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 7\nbatch_size: 64\nseed: 5\nlearning_rate: 0.01\npatience: 4\n")
    preset = {"epochs": 2, "batch_size": 128, "seed": 6, "patience": 5}
    flags = {"epochs": 3, "batch_size": None, "seed": 8}

    cfg = merge_job_config(TrainConfig, preset, flags, ["epochs=4"], path)

    assert cfg.learning_rate == 0.01  # YAML only
    assert cfg.patience == 5  # the preset beats the YAML
    assert cfg.batch_size == 128  # a flag given as None keeps the preset
    assert cfg.seed == 8  # a flag beats the preset and the YAML
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


def test_range_problems_bounds():
    cfg = TrainConfig(learning_rate=0.0, epochs=0, patience=-1, train_limit=None)

    found = range_problems(
        cfg,
        above_zero=("learning_rate", "batch_size"),
        at_least_one=("epochs", "train_limit"),
        at_least_zero=("patience", "aux_weight"),
    )

    assert found == [
        "learning_rate must be > 0, got 0.0",
        "epochs must be >= 1, got 0",
        "patience must be >= 0, got -1",
    ]


def test_range_problems_edges_pass():
    cfg = TrainConfig(epochs=1, patience=0)

    assert range_problems(cfg, at_least_one=("epochs",), at_least_zero=("patience",)) == []


@pytest.mark.parametrize(
    "content",
    [b"epochs: [1\n", b"!!python/object:os.system {}\n", b"\xff\xfe\x00binary"],
)
def test_merge_unreadable_yaml_named(tmp_path, content):
    path = tmp_path / "train.yaml"
    path.write_bytes(content)

    with pytest.raises(ConfigError, match=f"config file {path} is not a readable YAML file"):
        merge_job_config(TrainConfig, None, {}, [], path)


def test_merge_folder_as_config_named(tmp_path):
    with pytest.raises(ConfigError, match="is not a readable YAML file"):
        merge_job_config(TrainConfig, None, {}, [], tmp_path)


def test_merge_override_value_not_yaml():
    with pytest.raises(ConfigError, match=r"invalid override 'epochs=\[1': the value is not YAML"):
        merge_job_config(TrainConfig, None, {}, ["epochs=[1"], None)


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "1e400"])
def test_merge_non_finite_float_rejected(value):
    with pytest.raises(ConfigError, match="learning_rate must be a finite number"):
        merge_job_config(TrainConfig, None, {}, [f"learning_rate={value}"], None)


def test_merge_negative_seed_rejected():
    with pytest.raises(ConfigError, match="seed must be >= 0, got -1"):
        merge_job_config(TrainConfig, None, {}, ["seed=-1"], None)
