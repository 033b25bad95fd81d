"""Build recovery models by name, and save and load them as plain files.

A saved recovery model is a folder with:
- `recovery.json`: format version, model name, config, package versions;
- `card.json`: the dataset card it was built for;
- `weights.pt`: the model's state dict as CPU tensors (absent for parameter-free
  baselines), loaded with `torch.load(weights_only=True)`.
Nothing is pickled, so a model trained on a GPU loads on a machine without one.
"""

from __future__ import annotations

import difflib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import dymo_ray
from dymo_ray.data.spec import CardError, DatasetCard
from dymo_ray.recovery.base import Recovery
from dymo_ray.recovery.baselines import NoiseRecovery, ZerosRecovery

GENERATIVE_RECOVERIES = ("mopoe", "mmvae_plus", "cmvae")
BASELINE_RECOVERIES = ("zeros", "noise")
RECOVERY_NAMES = GENERATIVE_RECOVERIES + BASELINE_RECOVERIES
DEFAULT_RECOVERY = "mopoe"
FORMAT_VERSION = 1

_BASELINES = {"zeros": ZerosRecovery, "noise": NoiseRecovery}


def build_recovery(name: str, card: DatasetCard, **config: Any) -> Recovery:
    """Build an untrained recovery model for a dataset card.

    Args:
        name: One of `RECOVERY_NAMES`: "mopoe" (default), "mmvae_plus", "cmvae", or the
            baselines "zeros" and "noise".
        card: The dataset card; it fixes the modalities, shapes and dtypes.
        **config: Fields of `MultivaeRecoveryConfig` overriding the model's defaults
            (latent_dim, style_dim, hidden_dim, beta, laplace_scale, importance_samples,
            num_clusters, use_posterior_mean, init_seed). Baselines take none.

    Raises:
        ValueError: `name` is unknown, or an option is unknown or invalid.
    """
    if name in _BASELINES:
        if config:
            raise ValueError(
                f"recovery baseline {name!r} takes no options, got {sorted(config)}"
            )
        return _BASELINES[name](card)
    if name in GENERATIVE_RECOVERIES:
        # Imported here: multivae takes seconds to import and the baselines do not need it.
        from dymo_ray.recovery.multivae_adapter import MULTIVAE_RECOVERIES

        return MULTIVAE_RECOVERIES[name].from_options(card, **config)
    nearest = difflib.get_close_matches(str(name), RECOVERY_NAMES, n=1)
    hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
    raise ValueError(f"unknown recovery model {name!r}; valid names: {list(RECOVERY_NAMES)}{hint}")


def save_recovery(recovery: Recovery, folder: str | Path) -> Path:
    """Write a recovery model to `folder` (created if needed) and return the folder path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    header = {
        "format_version": FORMAT_VERSION,
        "name": recovery.name,
        "config": recovery.config_dict(),
        "dymo_ray_version": dymo_ray.__version__,
        "multivae_version": _package_version("multivae"),
        "torch_version": torch.__version__,
    }
    (folder / "recovery.json").write_text(json.dumps(header, indent=2) + "\n")
    recovery.card.save(folder / "card.json")
    model = getattr(recovery, "model", None)
    if model is not None:
        state = {key: value.detach().to("cpu") for key, value in model.state_dict().items()}
        torch.save(state, folder / "weights.pt")
    return folder


def load_recovery(
    folder: str | Path,
    card: DatasetCard | None = None,
    map_location: str | torch.device = "cpu",
) -> Recovery:
    """Load a recovery model written by `save_recovery`.

    Args:
        folder: The folder `save_recovery` wrote.
        card: The dataset card of the data the caller will pass. When given, the saved card
            must be compatible with it (same modality names, kinds, shapes, dtypes,
            alphabets and classes), and the loaded model uses it.
        map_location: Device to load the weights onto.

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        CardError: `card` is not compatible with the saved card; the message lists each
            difference.
        ValueError: a saved file is corrupt, or the saved format version or model name is
            not supported.
    """
    folder = Path(folder)
    header_path = folder / "recovery.json"
    if not header_path.exists():
        raise FileNotFoundError(
            f"no saved recovery model in {folder}: recovery.json not found; save one with "
            "dymo_ray.recovery.save_recovery"
        )
    try:
        header = json.loads(header_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{header_path} is not readable JSON: {error}") from error
    if not isinstance(header, dict) or not {"name", "config"} <= set(header):
        raise ValueError(f"{header_path} must contain a JSON object with 'name' and 'config'")
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"recovery model in {folder} has format version {header.get('format_version')}, "
            f"this dymo_ray reads version {FORMAT_VERSION}"
        )
    saved_card = DatasetCard.load(folder / "card.json")
    if card is not None:
        problems = card.compatibility_problems(saved_card)
        if problems:
            raise CardError(
                f"recovery model in {folder} was built for dataset card {saved_card.name!r}, "
                f"which does not match card {card.name!r} (given card vs saved card): "
                + "; ".join(problems)
            )
    recovery = build_recovery(header["name"], card or saved_card, **header["config"])
    model = getattr(recovery, "model", None)
    if model is not None:
        weights_path = folder / "weights.pt"
        if not weights_path.exists():
            raise FileNotFoundError(f"recovery weights not found: {weights_path}")
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as error:  # torch.load raises many unrelated types on a corrupt file.
            raise ValueError(
                f"recovery weights {weights_path} cannot be loaded into {header['name']}: {error}"
            ) from error
        model.to(map_location)
        model.eval()
    return recovery


def load_registered_recovery(
    model_uri: str,
    card: DatasetCard | None = None,
    map_location: str | torch.device = "cpu",
    tracking_uri: str | None = None,
) -> Recovery:
    """Download a registered recovery model and load it, e.g. `models:/dymo-recovery-mdt@latest`.

    Args:
        model_uri: A `models:/<name>@<alias>`, `models:/<name>/<version>` or `runs:/` URI of
            a folder written by `save_recovery`.
        card: Dataset card to check the saved card against (see `load_recovery`).
        map_location: Device to load the weights onto.
        tracking_uri: MLflow store; default `dymo_ray.tracking.tracking_uri()`.

    Raises:
        ValueError: the URI does not resolve in the store.
        CardError: `card` is not compatible with the saved card.
    """
    from dymo_ray.tracking import download_artifacts

    folder = download_artifacts(model_uri, uri=tracking_uri)
    return load_recovery(folder, card=card, map_location=map_location)


def is_registry_uri(location: str) -> bool:
    """Return True for `models:/` and `runs:/` URIs."""
    return location.startswith(("models:/", "runs:/"))


def load_recovery_model(
    location: str,
    card: DatasetCard,
    tracking_uri: str | None = None,
    map_location: str | torch.device = "cpu",
) -> Recovery:
    """Load a recovery model by location, as the evaluation job and the serving app name it.

    Args:
        location: "zeros" or "noise", a `models:/` or `runs:/` URI, or a folder written by
            `dymo_ray.recovery.save_recovery`.
        card: Dataset card of the bundle the recovery completes inputs for; a saved model
            must match it.
        tracking_uri: MLflow store of a URI.
        map_location: Device of the weights.

    Raises:
        FileNotFoundError: the folder or a file in it is missing.
        ValueError: the URI does not resolve, or the saved model does not match `card`.
    """
    if location in BASELINE_RECOVERIES:
        return build_recovery(location, card)
    if is_registry_uri(location):
        return load_registered_recovery(
            location, card=card, map_location=map_location, tracking_uri=tracking_uri
        )
    return load_recovery(Path(location), card=card, map_location=map_location)


def _package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
