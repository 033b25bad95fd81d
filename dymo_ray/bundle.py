"""The versioned model bundle: backbone weights, config, card and calibration statistics.

A bundle is a folder:

* `bundle.json`: format version, package version, dataset card, backbone config, training
  config, the recovery model's registry reference and the calibration statistics' summary;
* `weights.pt`: the backbone `state_dict` (CPU tensors);
* `calibration.pt`: the calibration statistics (CPU tensors).

Loading checks all of it and raises `BundleError` saying what differs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import dymo_ray
from dymo_ray.data.spec import DatasetCard
from dymo_ray.models.backbone import BackboneConfig, FusionBackbone
from dymo_ray.selection.calibration import CalibrationStats

logger = logging.getLogger(__name__)

BUNDLE_FORMAT_VERSION = 1
META_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
CALIBRATION_FILE = "calibration.pt"


class BundleError(ValueError):
    """A bundle is missing, malformed, or does not match what the caller expects."""


@dataclass
class ModelBundle:
    """A trained backbone with everything needed to run DyMo selection on it.

    Attributes:
        model: The backbone, in eval mode, on the CPU.
        card: Dataset card the backbone was trained on.
        stats: Calibration statistics computed on the training split, or None.
        train_config: The resolved training config, as a dict.
        recovery_uri: Registry reference of the recovery model paired with this bundle.
        source: Where the bundle was loaded from (path or URI).
        version: Registry version, when loaded from the registry.
    """

    model: FusionBackbone
    card: DatasetCard
    stats: CalibrationStats | None
    train_config: dict[str, Any]
    recovery_uri: str | None = None
    source: str | None = None
    version: str | None = None

    @property
    def backbone_config(self) -> BackboneConfig:
        return self.model.config

    def save(self, folder: str | Path) -> Path:
        """Write the bundle to `folder` (created) and return it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "package_version": dymo_ray.__version__,
            "card": self.card.to_dict(),
            "backbone_config": self.model.config.to_dict(),
            "train_config": self.train_config,
            "recovery_uri": self.recovery_uri,
            "class_names": list(self.card.class_names),
            "calibration": None if self.stats is None else {
                "metric": self.stats.metric,
                "num_subsets": int(self.stats.subsets.shape[0]),
                "backbone_fingerprint": self.stats.backbone_fingerprint,
            },
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save(state, folder / WEIGHTS_FILE)
        if self.stats is not None:
            torch.save(self.stats.to(torch.device("cpu")).to_dict(), folder / CALIBRATION_FILE)
        return folder


def load_bundle(
    location: str | Path,
    expected_card: DatasetCard | None = None,
    require_stats: bool = True,
    tracking_uri: str | None = None,
) -> ModelBundle:
    """Load a bundle from a local folder or a `models:/` or `runs:/` URI, on the CPU.

    Args:
        location: Folder path, `models:/dymo-backbone@<alias>`, `models:/<name>/<version>`
            or `runs:/<run_id>/bundle`.
        expected_card: When given, the bundle's modalities and classes must match it.
        require_stats: Raise when the bundle has no calibration statistics.
        tracking_uri: MLflow store for URIs; default `dymo_ray.tracking.tracking_uri()`.

    Returns:
        The bundle with the model in eval mode.

    Raises:
        BundleError: the folder or a file is missing, the format version is unknown, the
            weights do not fit the config, the statistics are missing or belong to another
            backbone, or the card differs from `expected_card`.
    """
    version = None
    source = str(location)
    if isinstance(location, str) and location.split(":/", 1)[0] in ("models", "runs"):
        from dymo_ray import tracking

        try:
            if location.startswith("models:/"):
                _, version = tracking.resolve_model_version(location, tracking_uri)
            folder = tracking.download_artifacts(location, tracking_uri)
        except Exception as error:  # MLflow raises several unrelated types here.
            raise BundleError(f"cannot download the bundle {location!r}: {error}") from error
    else:
        folder = Path(location)
    if not (folder / META_FILE).exists():
        raise BundleError(
            f"no bundle at {folder}: {META_FILE} is missing; pass a bundle folder or a "
            "models:/ URI such as models:/dymo-backbone@latest"
        )
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"bundle {folder}: {META_FILE} is not readable JSON: {error}") from error
    if not isinstance(meta, dict):
        raise BundleError(f"bundle {folder}: {META_FILE} must contain a JSON object")
    if meta.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"bundle {folder} has format version {meta.get('format_version')!r}; this dymo_ray "
            f"({dymo_ray.__version__}) reads version {BUNDLE_FORMAT_VERSION}"
        )
    missing_keys = [key for key in ("card", "backbone_config") if key not in meta]
    if missing_keys:
        raise BundleError(f"bundle {folder}: {META_FILE} is missing the keys {missing_keys}")
    card = DatasetCard.from_dict(meta["card"])
    if expected_card is not None:
        problems = expected_card.compatibility_problems(card)
        if problems:
            raise BundleError(
                f"bundle {source} was trained on another dataset card: " + "; ".join(problems)
            )
    model = FusionBackbone(card, BackboneConfig.from_dict(meta["backbone_config"]))
    state = _load_tensor_file(folder / WEIGHTS_FILE, source, weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise BundleError(f"bundle {source}: the weights do not fit the backbone config: {error}")
    model.eval()

    stats = None
    if (folder / CALIBRATION_FILE).exists():
        data = _load_tensor_file(folder / CALIBRATION_FILE, source, weights_only=False)
        stats = CalibrationStats.from_dict(data)
        problems = stats.compatibility_problems(model)
        if problems:
            raise BundleError(
                f"bundle {source}: the calibration statistics do not match the backbone: "
                + "; ".join(problems)
            )
    elif require_stats:
        raise BundleError(
            f"bundle {source} has no calibration statistics ({CALIBRATION_FILE}); DyMo "
            "selection needs them: retrain with jobs/train.py"
        )
    return ModelBundle(
        model=model,
        card=card,
        stats=stats,
        train_config=meta.get("train_config", {}),
        recovery_uri=meta.get("recovery_uri"),
        source=source,
        version=version,
    )


def _load_tensor_file(path: Path, source: str, weights_only: bool) -> Any:
    """Load one file of a bundle with `torch.load`.

    Raises:
        BundleError: the file is missing or cannot be read.
    """
    if not path.exists():
        raise BundleError(f"bundle {source}: {path.name} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # torch.load raises many unrelated types on a corrupt file.
        raise BundleError(
            f"bundle {source}: {path.name} is not a readable torch file: {error}"
        ) from error
