"""Typed configs loaded from YAML or flags, validated with every problem reported at once."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

DATASETS = ("polymnist", "mdt")
METRICS = ("cosine", "euclidean")

ConfigT = TypeVar("ConfigT")


class ConfigError(ValueError):
    """A config is invalid; the message lists every problem found."""


def _nearest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(value: Any, annotation: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise TypeError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise TypeError("; ".join(errors))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise TypeError(f"expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value)
        raise TypeError(f"expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        if isinstance(value, (int, float, str)):
            return float(value)
        raise TypeError(f"expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(f"expected a string, got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [item for item in value.split(",") if item]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation) or (Any,)
        return [v if item_type is Any else _coerce(v, item_type) for v in value]
    return value


def build_config(cls: type[ConfigT], values: dict[str, Any]) -> ConfigT:
    """Build dataclass `cls` from a mapping, converting types and collecting all problems.

    Raises:
        ConfigError: unknown keys, values of the wrong type, or `cls.problems()` findings,
            all listed in one message.
    """
    types_by_name = _field_types(cls)
    problems = []
    kwargs = {}
    for key, value in values.items():
        if key not in types_by_name:
            problems.append(
                f"unknown config key {key!r}{_nearest(key, list(types_by_name))}; "
                f"valid keys: {sorted(types_by_name)}"
            )
            continue
        try:
            kwargs[key] = _coerce(value, types_by_name[key])
        except (TypeError, ValueError) as error:
            problems.append(f"{key}: {error}")
    if problems:
        raise ConfigError(f"invalid {cls.__name__}:\n  - " + "\n  - ".join(problems))
    config = cls(**kwargs)
    check = getattr(config, "problems", None)
    if check is not None:
        found = check()
        if found:
            raise ConfigError(f"invalid {cls.__name__}:\n  - " + "\n  - ".join(found))
    return config


def load_yaml_config(cls: type[ConfigT], path: str | Path, overrides: dict[str, Any]) -> ConfigT:
    """Load `cls` from a YAML file, then apply `overrides` (e.g. from the command line).

    Raises:
        ConfigError: the file is missing, is not a mapping, or the merged config is invalid.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).replace("\n", " ")
        raise ConfigError(f"config file {path} is not a readable YAML file: {reason}") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return build_config(cls, {**loaded, **overrides})


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse `key=value` strings from `--set` flags; values are read as YAML scalars.

    Raises:
        ConfigError: a pair has no '='.
    """
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"invalid override {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            reason = str(error).replace("\n", " ")
            raise ConfigError(
                f"invalid override {pair!r}: the value is not YAML: {reason}"
            ) from error
    return out


def range_problems(
    config: Any,
    above_zero: tuple[str, ...] = (),
    at_least_one: tuple[str, ...] = (),
    at_least_zero: tuple[str, ...] = (),
) -> list[str]:
    """List the named fields of `config` whose value is out of range; fields set to None pass.

    A float that is NaN or infinite is out of every range.
    """
    found = []
    for names, fails, bound in (
        (above_zero, lambda value: value <= 0, "> 0"),
        (at_least_one, lambda value: value < 1, ">= 1"),
        (at_least_zero, lambda value: value < 0, ">= 0"),
    ):
        for name in names:
            value = getattr(config, name)
            if value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                found.append(f"{name} must be a finite number, got {value}")
            elif fails(value):
                found.append(f"{name} must be {bound}, got {value}")
    return found


def merge_job_config(
    cls: type[ConfigT],
    preset: dict[str, Any] | None,
    flags: dict[str, Any],
    overrides: list[str],
    config_path: str | Path | None,
) -> ConfigT:
    """Build a job's config from its command line.

    Later sources win: the class defaults, the YAML file at `config_path`, `preset` (such as
    the `--smoke` values), the flags that were given (None means not given), then the
    `--set key=value` strings in `overrides`.

    Raises:
        ConfigError: the file is missing or invalid, an override has no '=', or the merged
            config is invalid.
    """
    values = dict(preset or {})
    values.update({key: value for key, value in flags.items() if value is not None})
    values.update(parse_overrides(overrides))
    if config_path is not None:
        return load_yaml_config(cls, config_path, values)
    return build_config(cls, values)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Return a dataclass config as a plain dict (YAML and MLflow friendly)."""
    return dataclasses.asdict(config)


def save_yaml_config(config: Any, path: str | Path, header: str = "") -> Path:
    """Write a dataclass config as YAML that `load_yaml_config` reads back unchanged."""
    path = Path(path)
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    path.write_text((header + "\n" if header else "") + text)
    return path


@dataclass
class TrainConfig:
    """Settings of the backbone training job (`jobs/train.py`).

    `None` means "the dataset's default", resolved by `resolve_defaults` once the dataset
    card is known.
    """

    dataset: str = "polymnist"
    data_dir: str | None = None
    seed: int = 0
    # Optimisation. The authors used Adam, learning rate 1e-3, batch 256.
    epochs: int | None = None
    batch_size: int = 256
    learning_rate: float = 1e-3
    patience: int = 10
    min_delta: float = 1e-4
    # Incomplete simulation and the prototype loss.
    subsets_per_batch: int | None = None
    temperature: float = 0.1
    aux_weight: float = 1.0
    aux_start_epoch: int = 3
    # Backbone shape; None takes `BackboneConfig.for_card`.
    metric: str = "cosine"
    width: int | None = None
    heads: int | None = None
    blocks: int | None = None
    projection_dim: int | None = None
    # Data limits for quick runs (rows per split; None = all rows).
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    # Ray Train.
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    max_failures: int = 1
    torch_threads: int | None = None
    # Tracking.
    experiment: str = "dymo"
    run_name: str | None = None
    registered_model: str = "dymo-backbone"
    alias: str = "latest"

    def problems(self) -> list[str]:
        found = []
        if self.dataset not in DATASETS:
            found.append(
                f"dataset {self.dataset!r} is unknown{_nearest(self.dataset, list(DATASETS))}; "
                f"valid datasets: {list(DATASETS)}"
            )
        if self.metric not in METRICS:
            found.append(f"metric {self.metric!r} is not one of {list(METRICS)}")
        found += range_problems(
            self,
            above_zero=("batch_size", "learning_rate", "temperature", "cpus_per_worker",
                        "gpus_per_worker"),
            at_least_one=("epochs", "subsets_per_batch", "width", "heads", "blocks",
                          "projection_dim", "train_limit", "val_limit", "test_limit",
                          "torch_threads"),
            at_least_zero=("seed", "aux_weight", "aux_start_epoch", "patience", "min_delta",
                           "max_failures"),
        )
        if self.num_workers < 0:
            found.append(f"num_workers must be >= 0 (0 runs in-process), got {self.num_workers}")
        return found


SMOKE_OVERRIDES: dict[str, Any] = {
    "epochs": 2,
    "aux_start_epoch": 1,
    "train_limit": 1024,
    "val_limit": 256,
    "test_limit": 512,
    "batch_size": 128,
}
