"""Helpers of the data tests: small build settings, a mixed-kind card, file writers."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from dymo_ray.data.spec import MOPOE_ALPHABET, DatasetCard, ModalitySpec

# 20 MNIST images per class split 70/10/20 gives 14/2/4 per class: 140/20/40 images.
SMALL_LIMIT = 20
SMALL_POLYMNIST_MULTIPLICITY = {"train": 2, "val": 1, "test": 2}
SMALL_MDT_MULTIPLICITY = {"train": 2, "val": 1, "test": 2}


def mixed_card(rows: int = 6) -> DatasetCard:
    """A 3-class card with one modality of each kind and one split "train" of `rows` rows."""
    return DatasetCard(
        name="mixed",
        modalities=[
            ModalitySpec("image", "image", (3, 4, 5), "uint8", 0.0, 255.0),
            ModalitySpec("caption", "text", (6,), "int64", 0.0, 70.0, alphabet=MOPOE_ALPHABET),
            ModalitySpec("table", "tabular", (4,), "float32", -10.0, 10.0),
        ],
        class_names=["a", "b", "c"],
        splits={"train": rows},
        seed=0,
    )


def mixed_arrays(rows: int = 6, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Random valid arrays and labels for `mixed_card(rows)`."""
    rng = np.random.default_rng(seed)
    arrays = {
        "image": rng.integers(0, 256, size=(rows, 3, 4, 5), dtype=np.uint8),
        "caption": rng.integers(0, 71, size=(rows, 6)).astype(np.int64),
        "table": rng.uniform(-10, 10, size=(rows, 4)).astype(np.float32),
    }
    labels = rng.integers(0, 3, size=rows).astype(np.int64)
    return arrays, labels


def write_polymnist_folder(
    root: Path,
    split_rows: dict[str, list[tuple[int, int]]],
    num_modalities: int,
    seed: int = 0,
) -> dict[tuple[str, int, int], dict[str, np.ndarray]]:
    """Write random 28x28 RGB PNGs as `<root>/<split>/m<k>/<i>.<label>.png`.

    Folders and files are created in a shuffled order, so a reader that trusts listing
    order pairs the wrong files.

    Returns:
        (split, i, label) -> modality name -> the (3, 28, 28) uint8 image written.
    """
    rng = np.random.default_rng(seed)
    written: dict[tuple[str, int, int], dict[str, np.ndarray]] = {}
    jobs = [
        (split, modality, index, label)
        for split, rows in split_rows.items()
        for modality in range(num_modalities)
        for index, label in rows
    ]
    for job in rng.permutation(len(jobs)):
        split, modality, index, label = jobs[job]
        folder = root / split / f"m{modality}"
        folder.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{index}.{label}.png")
        written.setdefault((split, index, label), {})[f"m{modality}"] = image
    return written


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (magic 0x0000080<rank>, big-endian sizes)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist_idx(
    folder: Path, train_labels: np.ndarray, test_labels: np.ndarray, gz: bool = False, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write random MNIST-format IDX files with the given labels; return what was written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for prefix, split, labels in (("train", "train", train_labels), ("t10k", "test", test_labels)):
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        for name, array in (
            (f"{prefix}-images-idx3-ubyte", images),
            (f"{prefix}-labels-idx1-ubyte", np.asarray(labels, dtype=np.uint8)),
        ):
            data = idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (folder / name).write_bytes(data)
        written[split] = (images, np.asarray(labels, dtype=np.int64))
    return written
