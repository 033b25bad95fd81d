"""Modality specs and dataset cards: the contract between data, models and services.

A dataset card describes everything a model needs to be built without looking at the data:
the modalities (name, kind, shape, dtype, value range), the class names and the splits.
Encoders, recovery models, the selector and the serving schemas are all built from a card.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODALITY_KINDS = ("image", "text", "tabular")
SUPPORTED_DTYPES = ("uint8", "int64", "float32")

# The 71-character alphabet of the MoPoE text modality, in MoPoE's order. The dash appears
# twice there; we keep both positions so indices match MoPoE, and encode a dash as the first.
MOPOE_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"\\/|_@#$%^&*~`+-=<>()[]{} \n"


class CardError(ValueError):
    """A dataset card is invalid, or does not match the files it describes."""


@dataclass(frozen=True)
class ModalitySpec:
    """One input modality.

    Attributes:
        name: Key of the modality in every dict, Parquet column and metric name.
        kind: "image" (C, H, W), "text" (L,) character indices, or "tabular" (F,) floats.
        shape: Shape of one sample, without the batch dimension.
        dtype: Storage dtype: "uint8" for images, "int64" for text, "float32" for tabular.
        min_value: Smallest valid value (inclusive).
        max_value: Largest valid value (inclusive). Images are scaled by it to [0, 1].
        alphabet: Characters of a text modality; index i stands for alphabet[i].
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    min_value: float = 0.0
    max_value: float = 255.0
    alphabet: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        problems = self.problems()
        if problems:
            raise CardError(f"invalid modality spec {self.name!r}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """List what is wrong with this spec (empty when valid)."""
        problems = []
        if not self.name or not self.name.replace("_", "").isalnum():
            problems.append(f"name {self.name!r} must be non-empty letters, digits and '_'")
        if self.kind not in MODALITY_KINDS:
            problems.append(f"kind {self.kind!r} is not one of {MODALITY_KINDS}")
        if self.dtype not in SUPPORTED_DTYPES:
            problems.append(f"dtype {self.dtype!r} is not one of {SUPPORTED_DTYPES}")
        if any(s <= 0 for s in self.shape):
            problems.append(f"shape {self.shape} has a non-positive size")
        expected_rank = {"image": 3, "text": 1, "tabular": 1}.get(self.kind)
        if expected_rank is not None and len(self.shape) != expected_rank:
            problems.append(
                f"a {self.kind} modality needs a shape of rank {expected_rank}, got {self.shape}"
            )
        if self.kind == "text":
            if not self.alphabet:
                problems.append("a text modality needs an alphabet")
            elif self.dtype != "int64":
                problems.append(f"a text modality is stored as int64, got {self.dtype!r}")
        if self.max_value < self.min_value:
            problems.append(f"max_value {self.max_value} < min_value {self.min_value}")
        return problems

    @property
    def num_values(self) -> int:
        """Number of scalars in one sample."""
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def vocab_size(self) -> int:
        """Alphabet size of a text modality."""
        if self.alphabet is None:
            raise CardError(f"modality {self.name!r} of kind {self.kind!r} has no alphabet")
        return len(self.alphabet)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModalitySpec:
        known = {"name", "kind", "shape", "dtype", "min_value", "max_value", "alphabet"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CardError(f"unknown modality spec keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)


@dataclass
class DatasetCard:
    """Description of a built dataset, stored as `card.json` beside its Parquet files.

    Attributes:
        name: Dataset name, e.g. "polymnist".
        modalities: Modality specs in the fixed modality order used by every tensor.
        class_names: Name of each class; labels are indices into this list.
        splits: Number of rows per split, e.g. {"train": 14000, "val": 500, "test": 2000}.
        sources: Where each raw input came from (package, file, licence notes).
        recipe: How the rows were built, in words and parameters.
        seed: Seed of the build.
        format_version: Version of this card format.
    """

    name: str
    modalities: list[ModalitySpec]
    class_names: list[str]
    splits: dict[str, int] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    format_version: int = 1

    def __post_init__(self) -> None:
        names = [m.name for m in self.modalities]
        if not names:
            raise CardError(f"dataset card {self.name!r} has no modalities")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise CardError(f"dataset card {self.name!r} repeats modality names {duplicates}")
        if len(self.class_names) < 2:
            raise CardError(
                f"dataset card {self.name!r} needs at least 2 classes, got {self.class_names}"
            )

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def modality(self, name: str) -> ModalitySpec:
        """Return the spec of modality `name`.

        Raises:
            CardError: `name` is not a modality of this card.
        """
        for spec in self.modalities:
            if spec.name == name:
                return spec
        raise CardError(
            f"unknown modality {name!r} for dataset {self.name!r}; "
            f"valid modalities: {self.modality_names}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format_version": self.format_version,
            "modalities": [m.to_dict() for m in self.modalities],
            "class_names": list(self.class_names),
            "splits": dict(self.splits),
            "sources": self.sources,
            "recipe": self.recipe,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetCard:
        data = dict(data)
        data["modalities"] = [ModalitySpec.from_dict(m) for m in data["modalities"]]
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the card as JSON to `path` and return the path."""
        path = Path(path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> DatasetCard:
        """Read a card from a JSON file or from a dataset folder holding `card.json`.

        Raises:
            CardError: the file is missing or not a valid card.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "card.json"
        if not path.exists():
            raise CardError(
                f"dataset card not found: {path}; build the dataset with "
                "`python jobs/prepare_data.py --dataset <name>`"
            )
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise CardError(f"invalid dataset card {path}: {error}") from error

    def compatibility_problems(self, other: DatasetCard) -> list[str]:
        """List the differences that make models built for `other` unusable on this card."""
        problems = []
        if self.modality_names != other.modality_names:
            problems.append(
                f"modality names differ: {self.modality_names} vs {other.modality_names}"
            )
        else:
            for mine, theirs in zip(self.modalities, other.modalities):
                if (mine.kind, mine.shape, mine.dtype) != (theirs.kind, theirs.shape, theirs.dtype):
                    problems.append(
                        f"modality {mine.name!r} differs: kind/shape/dtype "
                        f"{(mine.kind, mine.shape, mine.dtype)} vs "
                        f"{(theirs.kind, theirs.shape, theirs.dtype)}"
                    )
                if mine.alphabet != theirs.alphabet:
                    problems.append(f"modality {mine.name!r} has a different alphabet")
        if list(self.class_names) != list(other.class_names):
            problems.append(f"class names differ: {self.class_names} vs {other.class_names}")
        return problems
