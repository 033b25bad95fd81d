"""Calibration statistics: class prototypes and distance scales per subset, for the ICS.

They are computed once after training, on the training split with true labels, for every
non-empty subset S in `all_subsets` order:
    P^S_c      mean embedding h_S of the class-c samples (not renormalised in cosine mode);
    sigma^S_c  sqrt(mean over class-c samples of d(h_S, P^S_c)^2), where d is 1 - <h, P> in
               cosine mode and the plain L2 norm ||h - P|| in euclidean mode;
    Pbar_c     the unweighted mean of P^S_c over the subsets (the overall prototypes).
sigma is the maximum-likelihood scale of a zero-mean Gaussian fitted to the distances, the
model behind ICS = erfc(d / (sigma sqrt 2)).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dymo_ray.selection.inputs import check_inputs
from dymo_ray.selection.reward import METRICS, prototype_distance
from dymo_ray.subsets import all_subsets, num_subsets

logger = logging.getLogger(__name__)

STATS_FORMAT_VERSION = 1

# Keys that `validate` accepts in place of a model.
EXPECTATION_KEYS = (
    "num_modalities",
    "num_classes",
    "embedding_dim",
    "metric",
    "backbone_fingerprint",
)

# Wrapper prefixes that DistributedDataParallel and torch.compile add to state_dict keys.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# model -> (version key, fingerprint). See `backbone_fingerprint`.
_fingerprint_cache: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = (
    weakref.WeakKeyDictionary()
)


def _strip_wrapper_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key


def _version_key(model: nn.Module) -> tuple | None:
    # Every in-place write to a tensor (optimizer steps, load_state_dict's copy_) bumps its
    # `_version` counter, and assigning a new tensor changes its data pointer, so an unchanged
    # key means unchanged values. Building it is much cheaper than model.state_dict(), which
    # matters because selection checks the fingerprint on every batch. `_version` is a private
    # PyTorch attribute; where it is unavailable the fingerprint is recomputed every call.
    try:
        return tuple(
            (tensor.data_ptr(), tensor._version, tensor.shape, tensor.dtype)
            for tensor in itertools.chain(model.parameters(), model.buffers())
        )
    except (AttributeError, RuntimeError):
        return None


def _compute_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    entries = sorted(
        ((_strip_wrapper_prefixes(name), tensor) for name, tensor in state.items()),
        key=lambda entry: entry[0],
    )
    for name, tensor in entries:
        values = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{values.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(values.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def backbone_fingerprint(model: nn.Module) -> str:
    """Return a SHA-256 hex digest of the model's state_dict (names, dtypes, shapes, values).

    The digest does not depend on the device, or on a DistributedDataParallel or
    torch.compile wrapper, so statistics computed on one rank validate against the same
    weights anywhere. It is cached per model until a tensor of its state_dict is written.

    Args:
        model: The backbone.

    Returns:
        A 64-character hex string.
    """
    version_key = _version_key(model)
    cached = _fingerprint_cache.get(model)
    if version_key is not None and cached is not None and cached[0] == version_key:
        return cached[1]
    fingerprint = _compute_fingerprint(model.state_dict())
    if version_key is not None:
        _fingerprint_cache[model] = (version_key, fingerprint)
    return fingerprint


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel keeps the backbone (and its card and config) in `.module`.
    return getattr(model, "module", model)


def model_expectations(model: nn.Module) -> dict[str, Any]:
    """Return what statistics for `model` must match, keyed as in EXPECTATION_KEYS."""
    backbone = _unwrap(model)
    return {
        "num_modalities": backbone.card.num_modalities,
        "num_classes": backbone.card.num_classes,
        "embedding_dim": backbone.config.projection_dim,
        "metric": backbone.config.metric,
        "backbone_fingerprint": backbone_fingerprint(backbone),
    }


@dataclass
class CalibrationStats:
    """Calibration statistics of one backbone, for every non-empty subset.

    Attributes:
        metric: "cosine" or "euclidean", the backbone's metric.
        subsets: Bool (S, M), S = 2^M - 1, in `all_subsets` order; row s is the subset of
            prototypes[s] and sigma[s].
        prototypes: Float32 (S, C, D), class prototypes P^S_c.
        sigma: Float32 (S, C), distance scales sigma^S_c, > 0.
        overall_prototypes: Float32 (C, D), Pbar_c, the mean of P^S_c over subsets.
        backbone_fingerprint: `backbone_fingerprint` of the backbone the statistics came from.
    """

    metric: str
    subsets: torch.Tensor
    prototypes: torch.Tensor
    sigma: torch.Tensor
    overall_prototypes: torch.Tensor
    backbone_fingerprint: str

    def __post_init__(self) -> None:
        problems = self._internal_problems()
        if problems:
            raise ValueError("invalid calibration statistics: " + "; ".join(problems))

    @property
    def num_modalities(self) -> int:
        return int(self.subsets.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.prototypes.shape[1])

    @property
    def embedding_dim(self) -> int:
        return int(self.prototypes.shape[2])

    def _internal_problems(self) -> list[str]:
        problems = []
        if self.metric not in METRICS:
            problems.append(f"metric {self.metric!r} is not one of {list(METRICS)}")
        tensors = {
            "subsets": self.subsets,
            "prototypes": self.prototypes,
            "sigma": self.sigma,
            "overall_prototypes": self.overall_prototypes,
        }
        for name, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                problems.append(f"{name} must be a tensor, got {type(value).__name__}")
        if problems:
            return problems

        if self.subsets.dim() != 2 or self.subsets.dtype != torch.bool:
            return problems + [
                f"subsets must be a bool (S, M) tensor, got {self.subsets.dtype} "
                f"{tuple(self.subsets.shape)}"
            ]
        num_modalities = self.subsets.shape[1]
        count = num_subsets(num_modalities)
        if not torch.equal(self.subsets.cpu(), all_subsets(num_modalities)):
            problems.append(f"subsets are not the {count} non-empty subsets in all_subsets order")

        if self.prototypes.dim() != 3 or self.prototypes.shape[0] != count:
            problems.append(
                f"prototypes must have shape ({count}, C, D), got {tuple(self.prototypes.shape)}"
            )
            return problems
        _, num_classes, dim = self.prototypes.shape
        if tuple(self.sigma.shape) != (count, num_classes):
            problems.append(
                f"sigma must have shape ({count}, {num_classes}), got {tuple(self.sigma.shape)}"
            )
        if tuple(self.overall_prototypes.shape) != (num_classes, dim):
            problems.append(
                f"overall_prototypes must have shape ({num_classes}, {dim}), "
                f"got {tuple(self.overall_prototypes.shape)}"
            )

        for name in ("prototypes", "sigma", "overall_prototypes"):
            if not bool(torch.isfinite(tensors[name]).all()):
                problems.append(f"{name} contains NaN or inf")
        if not problems and not bool((self.sigma > 0).all()):
            problems.append("sigma must be > 0 for every subset and class")
        if not isinstance(self.backbone_fingerprint, str) or not self.backbone_fingerprint:
            problems.append("backbone_fingerprint must be a non-empty string")
        return problems

    def compatibility_problems(self, target: nn.Module | Mapping[str, Any]) -> list[str]:
        """List how these statistics differ from what a backbone needs (empty when they match).

        Args:
            target: The backbone, or a mapping with any of the keys in EXPECTATION_KEYS.

        Raises:
            ValueError: a mapping has a key outside EXPECTATION_KEYS.
        """
        if isinstance(target, nn.Module):
            expected = model_expectations(target)
        else:
            unknown = sorted(set(target) - set(EXPECTATION_KEYS))
            if unknown:
                raise ValueError(
                    f"unknown expectation keys {unknown}; valid keys: {list(EXPECTATION_KEYS)}"
                )
            expected = dict(target)
        found = {
            "num_modalities": self.num_modalities,
            "num_classes": self.num_classes,
            "embedding_dim": self.embedding_dim,
            "metric": self.metric,
            "backbone_fingerprint": self.backbone_fingerprint,
        }
        problems = []
        for key in EXPECTATION_KEYS:
            if key not in expected or expected[key] == found[key]:
                continue
            if key == "backbone_fingerprint":
                problems.append(
                    f"backbone fingerprint differs (statistics {found[key][:12]}..., "
                    f"backbone {str(expected[key])[:12]}...): the statistics were computed on "
                    "other weights; recompute them with compute_calibration_stats"
                )
            else:
                problems.append(
                    f"{key} differs: statistics have {found[key]!r}, backbone has {expected[key]!r}"
                )
        return problems

    def validate(self, target: nn.Module | Mapping[str, Any]) -> None:
        """Check that these statistics belong to a backbone.

        Args:
            target: The backbone, or a mapping with any of the keys in EXPECTATION_KEYS.

        Raises:
            ValueError: the number of modalities or classes, the embedding size, the metric or
                the backbone fingerprint differs. The message lists every difference.
        """
        problems = self.compatibility_problems(target)
        if problems:
            raise ValueError(
                "calibration statistics do not match the backbone: " + "; ".join(problems)
            )

    def to(self, device: torch.device | str) -> CalibrationStats:
        """Return a copy with every tensor on `device`."""
        return CalibrationStats(
            metric=self.metric,
            subsets=self.subsets.to(device),
            prototypes=self.prototypes.to(device),
            sigma=self.sigma.to(device),
            overall_prototypes=self.overall_prototypes.to(device),
            backbone_fingerprint=self.backbone_fingerprint,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a dict of CPU tensors and plain values, ready for torch.save."""
        return {
            "format_version": STATS_FORMAT_VERSION,
            "metric": self.metric,
            "subsets": self.subsets.cpu(),
            "prototypes": self.prototypes.cpu(),
            "sigma": self.sigma.cpu(),
            "overall_prototypes": self.overall_prototypes.cpu(),
            "backbone_fingerprint": self.backbone_fingerprint,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationStats:
        """Rebuild statistics from `to_dict` output.

        Raises:
            ValueError: a key is missing or unknown, the format version is not supported, or
                the values are inconsistent.
        """
        fields = [
            "metric",
            "subsets",
            "prototypes",
            "sigma",
            "overall_prototypes",
            "backbone_fingerprint",
        ]
        known = {"format_version", *fields}
        missing = [key for key in sorted(known) if key not in data]
        unknown = sorted(set(data) - known)
        if missing or unknown:
            raise ValueError(
                f"invalid calibration statistics dict: missing keys {missing}, "
                f"unknown keys {unknown}; valid keys: {sorted(known)}"
            )
        if data["format_version"] != STATS_FORMAT_VERSION:
            raise ValueError(
                f"calibration statistics format version {data['format_version']!r} is not "
                f"supported; this version of dymo_ray reads version {STATS_FORMAT_VERSION}"
            )
        return cls(**{key: data[key] for key in fields})


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _check_labels(labels: torch.Tensor, batch_size: int, num_classes: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point:
        raise ValueError("labels must be an integer tensor of class indices")
    if tuple(labels.shape) != (batch_size,):
        raise ValueError(f"labels have shape {tuple(labels.shape)}, expected ({batch_size},)")
    if batch_size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}], got values from "
            f"{int(labels.min())} to {int(labels.max())}"
        )


def compute_calibration_stats(
    model: nn.Module,
    batches: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]],
    num_classes: int,
) -> CalibrationStats:
    """Compute the calibration statistics of a backbone on labelled, complete data.

    A pure function of the model and the batches, with no Ray or process-group calls: call it
    on one process (rank 0) with the whole training split. Each batch is encoded once and
    fused under every subset. The embeddings are kept on the CPU in float32 for the second
    pass over distances: N * (2^M - 1) * D * 4 bytes, 111 MB for 14,000 PolyMNIST rows with
    31 subsets and D = 64. Sums are accumulated in float64.

    Args:
        model: The backbone (`encode`, `fuse`, `card`, `config.metric`). It runs in eval mode
            under no_grad; its training mode is restored afterwards.
        batches: Pairs (inputs, labels): inputs as for `FusionBackbone.encode`, with every
            modality real, and labels (B,) int class indices. Iterated once.
        num_classes: C, the number of classes of the backbone.

    Returns:
        CalibrationStats on the CPU.

    Raises:
        ValueError: there are no batches, an input or label is invalid, num_classes differs
            from the backbone, a class has no sample, or a class has a zero distance scale
            (all its embeddings equal under some subset).
    """
    backbone = _unwrap(model)
    metric = backbone.config.metric
    card = backbone.card
    if num_classes != card.num_classes:
        raise ValueError(
            f"num_classes is {num_classes}, but the backbone has {card.num_classes} classes"
        )
    subsets = all_subsets(card.num_modalities)
    device = _model_device(backbone)
    device_subsets = subsets.to(device)

    stored: list[tuple[torch.Tensor, torch.Tensor]] = []  # (embeddings (B, S, D), labels (B,))
    sums: torch.Tensor | None = None  # (C, S, D) float64
    counts = torch.zeros(num_classes, dtype=torch.float64)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            for inputs, labels in batches:
                batch_size = check_inputs(card, inputs)
                _check_labels(labels, batch_size, num_classes)
                tokens = backbone.encode({k: v.to(device) for k, v in inputs.items()})
                per_subset = [backbone.fuse(tokens, subset)[1] for subset in device_subsets]
                embeddings = torch.stack(per_subset, dim=1).float().cpu()
                labels = labels.long().cpu()
                if sums is None:
                    shape = (num_classes, *embeddings.shape[1:])
                    sums = torch.zeros(shape, dtype=torch.float64)
                sums.index_add_(0, labels, embeddings.double())
                counts += torch.bincount(labels, minlength=num_classes).double()
                stored.append((embeddings, labels))
    finally:
        backbone.train(was_training)

    if sums is None:
        raise ValueError("no batches: calibration statistics need the labelled training split")
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        names = [card.class_names[c] for c in empty]
        raise ValueError(
            f"classes {empty} ({names}) have no sample; calibration statistics need at "
            "least one sample of every class"
        )

    # (C, S, D) -> (S, C, D). Distances use the float32 prototypes that selection uses.
    prototypes = (sums / counts[:, None, None]).transpose(0, 1).contiguous()
    prototypes32 = prototypes.float()
    by_class = prototypes32.transpose(0, 1)  # (C, S, D)
    squared_sums = torch.zeros(num_classes, len(subsets), dtype=torch.float64)
    for embeddings, labels in stored:
        rows, count, dim = embeddings.shape
        own_prototypes = by_class.index_select(0, labels)  # (B, S, D)
        distance = prototype_distance(
            embeddings.reshape(-1, dim), own_prototypes.reshape(-1, dim), metric
        ).reshape(rows, count)
        squared_sums.index_add_(0, labels, distance**2)
    sigma = (squared_sums / counts[:, None]).sqrt().T.contiguous()  # (S, C)

    zero = (sigma <= 0).nonzero().tolist()
    if zero:
        subset_id, class_id = zero[0]
        members = subsets[subset_id].nonzero().flatten().tolist()
        names = [card.modality_names[m] for m in members]
        raise ValueError(
            f"{len(zero)} (subset, class) pairs have a distance scale of 0, e.g. class "
            f"{class_id} under subset {names}: all its embeddings are equal there. ICS needs "
            "at least two distinct embeddings per class and subset"
        )
    logger.info(
        "calibration statistics: %d samples, %d subsets, %d classes, metric %s",
        int(counts.sum()),
        len(subsets),
        num_classes,
        metric,
    )
    return CalibrationStats(
        metric=metric,
        subsets=subsets,
        prototypes=prototypes32,
        sigma=sigma.float(),
        overall_prototypes=prototypes.mean(dim=0).float(),
        backbone_fingerprint=backbone_fingerprint(backbone),
    )
