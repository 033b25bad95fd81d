"""Sweep settings: every invalid input fails before Ray starts, naming the value and choices."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from dymo_ray.config import ConfigError, TrainConfig, build_config
from dymo_ray.data.io import load_card
from dymo_ray.paths import project_root
from dymo_ray.tune.settings import SweepConfig, check_against_card, subsets_range_for
from dymo_ray.tune.space import build_param_space, build_scheduler, build_searcher


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_job", project_root() / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sweep_config(**values) -> SweepConfig:
    return build_config(SweepConfig, values)


def test_defaults_are_valid():
    sweep = sweep_config()
    assert sweep.temperature_range == [0.02, 1.0]
    assert sweep.scheduler == "asha"
    assert sweep.search == "random"
    assert sweep.objective == "val_acc"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"temperature_range": [0.5, 0.1]}, r"temperature_range \[0.5, 0.1\] is empty or inverted"),
        ({"temperature_range": [0.2, 0.2]}, r"temperature_range \[0.2, 0.2\] is empty or inverted"),
        ({"temperature_range": [0.0, 1.0]}, r"low must be > 0, got 0.0"),
        ({"temperature_range": [-1.0, 1.0]}, r"low must be > 0, got -1.0"),
        ({"temperature_range": [0.1]}, r"temperature_range must be \[low, high\]"),
        ({"tau_range": [2.0, 1.0]}, r"tau_range \[2.0, 1.0\] is empty or inverted"),
        ({"subsets_range": [5, 2]}, r"subsets_range \[5, 2\] is empty or inverted"),
        ({"objective": "val_dymo_acc"},
         r"objective 'val_dymo_acc' is unknown \(did you mean 'val_dymo'\?\); "
         r"valid choices: \['val_acc', 'val_dymo'\]"),
        ({"scheduler": "hyperband"}, r"scheduler 'hyperband' is unknown.*valid choices: \['asha', 'fifo'\]"),
        ({"search": "bohb"}, r"search 'bohb' is unknown.*valid choices: \['random', 'optuna'\]"),
        ({"tune_tau": True}, r"tune_tau samples the selection temperature.*objective is 'val_acc'"),
        ({"num_samples": 0}, r"num_samples must be >= 1, got 0"),
        ({"max_concurrent": 0}, r"max_concurrent must be >= 1, got 0"),
        ({"cpus_per_trial": 0}, r"cpus_per_trial must be > 0, got 0"),
        ({"grace_period": 0}, r"grace_period must be >= 1 epoch, got 0"),
        ({"name": "a/b"}, r"name 'a/b' must be a non-empty folder name"),
    ],
)
def test_invalid_setting_rejected(values, message):
    with pytest.raises(ConfigError, match=message):
        sweep_config(**values)


def test_all_problems_reported_together():
    with pytest.raises(ConfigError) as raised:
        sweep_config(scheduler="pbt", temperature_range=[1.0, 0.5])
    assert "scheduler 'pbt'" in str(raised.value)
    assert "temperature_range [1.0, 0.5]" in str(raised.value)


def test_subsets_above_limit_rejected(tiny_polymnist):
    card = load_card(tiny_polymnist)
    with pytest.raises(ConfigError, match=r"subsets_range \[1, 32\] is invalid for 5 modalities.*valid range: 1\.\.31"):
        check_against_card(sweep_config(subsets_range=[1, 32]), card)


def test_subsets_below_one_rejected(tiny_polymnist):
    card = load_card(tiny_polymnist)
    with pytest.raises(ConfigError, match=r"subsets_range \[0, 3\] is invalid.*valid range: 1\.\.31"):
        check_against_card(sweep_config(subsets_range=[0, 3]), card)


def test_subsets_default_covers_every_subset(tiny_polymnist):
    assert subsets_range_for(sweep_config(), load_card(tiny_polymnist)) == (1, 31)


def test_invalid_protocol_rejected(tiny_polymnist):
    card = load_card(tiny_polymnist)
    with pytest.raises(ConfigError, match="protocol: .*random:1.5"):
        check_against_card(sweep_config(objective="val_dymo", protocol="random:1.5"), card)


def test_param_space_bounds():
    from ray.tune.search.sample import Float, Integer

    space = build_param_space(sweep_config(tune_tau=True, objective="val_dymo"), (2, 7))
    assert isinstance(space["temperature"], Float)
    assert space["temperature"].lower == 0.02
    assert space["temperature"].upper == 1.0
    assert isinstance(space["subsets_per_batch"], Integer)
    assert space["subsets_per_batch"].lower == 2
    # tune.randint excludes its upper bound, so 7 must be reachable through 8.
    assert space["subsets_per_batch"].upper == 8
    assert space["tau"].lower == 0.02


def test_param_space_without_tau():
    assert "tau" not in build_param_space(sweep_config(), (1, 31))


def test_asha_grace_period_longer_than_epochs_rejected():
    with pytest.raises(ConfigError, match="grace_period=3 is longer than the 2 epochs"):
        build_scheduler(sweep_config(grace_period=3), epochs=2)


def test_asha_scheduler_settings():
    scheduler = build_scheduler(sweep_config(), epochs=4)
    assert scheduler.metric == "val_acc"
    assert scheduler._max_t == 4


def test_optuna_missing_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` raise ImportError
    with pytest.raises(ConfigError, match=r"install the `tune` extra.*\.\[tune\]"):
        build_searcher(sweep_config(search="optuna"), max_concurrent=2)


def test_optuna_searcher_uses_objective():
    pytest.importorskip("optuna")
    searcher = build_searcher(sweep_config(search="optuna", objective="val_dymo"), max_concurrent=2)
    assert searcher.metric == "val_dymo"
    assert searcher.max_concurrent == 2


def test_random_search_limits_concurrency():
    """Tune ignores TuneConfig.max_concurrent_trials for random search, so the generator must."""
    searcher = build_searcher(sweep_config(), max_concurrent=1)
    assert searcher.max_concurrent == 1


def test_job_unknown_scheduler_exits_with_choices(capsys):
    job = load_job("tune")
    code = job.main(["--scheduler", "pbt"])
    error = capsys.readouterr().err
    assert code == 2
    assert "scheduler 'pbt' is unknown" in error
    assert "['asha', 'fifo']" in error


def test_job_unknown_objective_exits_with_choices(capsys):
    job = load_job("tune")
    code = job.main(["--objective", "test_acc"])
    error = capsys.readouterr().err
    assert code == 2
    assert "objective 'test_acc' is unknown" in error
    assert "['val_acc', 'val_dymo']" in error


def test_job_inverted_temperature_range_exits(capsys):
    job = load_job("tune")
    code = job.main(["--temperature-range", "1.0", "0.1"])
    assert code == 2
    assert "temperature_range [1.0, 0.1] is empty or inverted" in capsys.readouterr().err


def test_job_resume_without_name_exits(capsys):
    job = load_job("tune")
    assert job.main(["--resume"]) == 2
    assert "--resume needs --name" in capsys.readouterr().err


def test_job_smoke_preset():
    job = load_job("tune")
    sweep, train = job.build_configs(job.parse_args(["--smoke", "--set", "width=32"]))
    assert sweep.num_samples == 4
    assert train.epochs == 2
    assert train.train_limit == 1024
    assert train.width == 32
    assert isinstance(train, TrainConfig)


def test_sweep_with_gpu_rejected(tiny_polymnist):
    from dymo_ray.tune.driver import run_sweep

    train = build_config(TrainConfig, {"data_dir": str(tiny_polymnist), "use_gpu": True})
    with pytest.raises(ConfigError, match="use_gpu=true is not supported in a sweep"):
        run_sweep(sweep_config(), train)
