"""Readers for published dataset formats, for users who have the files.

- The official PolyMNIST folder layout: `<root>/<split>/m<k>/<i>.<label>.png`.
- The MNIST IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-*`,
  optionally gzip-compressed), to build the full-size PolyMNIST.
"""

from __future__ import annotations

import gzip
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dymo_ray.data.sources import ImageSource

logger = logging.getLogger(__name__)

_MODALITY_DIR = re.compile(r"^m(\d+)$")
_POLYMNIST_FILE = re.compile(r"^(\d+)\.(\d+)\.png$")
_IDX_UBYTE = 0x08


class DatasetFormatError(ValueError):
    """Files on disk do not follow the expected published format."""


@dataclass
class FolderSplit:
    """One split read from the official PolyMNIST layout.

    Attributes:
        arrays: Modality name ("m0", "m1", ...) -> uint8 (N, 3, H, W), rows sorted by
            (i, label).
        labels: Int64 (N,) labels parsed from the file names.
        sample_ids: Int64 (N,) the index i parsed from the file names.
    """

    arrays: dict[str, np.ndarray]
    labels: np.ndarray
    sample_ids: np.ndarray

    def __len__(self) -> int:
        return int(len(self.labels))


# ---------------------------------------------------------------------------------------
# PolyMNIST folders
# ---------------------------------------------------------------------------------------


def read_polymnist_folder(root: str | Path, progress: bool = True) -> dict[str, FolderSplit]:
    """Read every split of an official PolyMNIST folder.

    A split is a subfolder of `root` holding `m<k>` modality folders (others, such as a
    folder of missing-modality masks, are ignored). Rows are aligned across modalities by
    the (i, label) parsed from each file name `<i>.<label>.png`, never by listing order.
    Hidden files (names starting with '.') are skipped.

    Args:
        root: Folder with e.g. `train/m0/0.5.png`, ..., `test/m4/9999.7.png`.
        progress: Show a progress bar on stderr while images are decoded.

    Returns:
        Split name -> the split, e.g. {"test": ..., "train": ...}, sorted by split name.

    Raises:
        FileNotFoundError: `root` does not exist.
        DatasetFormatError: no split folder; modality folders that are not m0..m{K-1} or
            differ between splits; a file name that does not parse; a file that one
            modality has and another lacks; two files with one index i; images of
            different sizes or that cannot be decoded.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"PolyMNIST folder not found: {root}")
    split_dirs = sorted(
        path
        for path in root.iterdir()
        if path.is_dir() and any(_MODALITY_DIR.match(p.name) for p in path.iterdir() if p.is_dir())
    )
    if not split_dirs:
        raise DatasetFormatError(
            f"{root}: no split folder found; expected <split>/m<k>/<i>.<label>.png, "
            "e.g. train/m0/0.5.png"
        )

    splits: dict[str, FolderSplit] = {}
    modality_names: list[str] | None = None
    for split_dir in split_dirs:
        names = _modality_dirs(split_dir)
        if modality_names is None:
            modality_names = names
        elif names != modality_names:
            raise DatasetFormatError(
                f"{split_dir}: has modality folders {names}, but {split_dirs[0]} has {modality_names}"
            )
        splits[split_dir.name] = _read_polymnist_split(split_dir, names, progress)
        logger.info("read %s: %d rows x %d modalities", split_dir, len(splits[split_dir.name]), len(names))
    return splits


def _modality_dirs(split_dir: Path) -> list[str]:
    indices = sorted(
        int(match.group(1))
        for path in split_dir.iterdir()
        if path.is_dir() and (match := _MODALITY_DIR.match(path.name))
    )
    expected = list(range(len(indices)))
    if indices != expected:
        raise DatasetFormatError(
            f"{split_dir}: modality folders must be m0..m{len(indices) - 1}, "
            f"found {['m' + str(i) for i in indices]}"
        )
    return [f"m{i}" for i in indices]


def _index_modality_files(modality_dir: Path) -> dict[tuple[int, int], Path]:
    """Map (i, label) to the file of one modality folder."""
    files: dict[tuple[int, int], Path] = {}
    seen_index: dict[int, Path] = {}
    for path in modality_dir.iterdir():
        if path.name.startswith("."):
            continue
        match = _POLYMNIST_FILE.match(path.name)
        if match is None or not path.is_file():
            raise DatasetFormatError(
                f"{path}: name does not parse as <i>.<label>.png (e.g. 17.4.png)"
            )
        index, label = int(match.group(1)), int(match.group(2))
        if index in seen_index:
            raise DatasetFormatError(
                f"{path}: index {index} is used twice in {modality_dir}, also by {seen_index[index].name}"
            )
        seen_index[index] = path
        files[(index, label)] = path
    return files


def _read_polymnist_split(split_dir: Path, names: list[str], progress: bool) -> FolderSplit:
    files = {name: _index_modality_files(split_dir / name) for name in names}
    keys = sorted(set().union(*(set(entry) for entry in files.values())))
    for name in names:
        missing = [key for key in keys if key not in files[name]]
        if missing:
            index, label = missing[0]
            owner = next(other for other in names if missing[0] in files[other])
            raise DatasetFormatError(
                f"{split_dir / name / f'{index}.{label}.png'}: file is missing, but "
                f"{split_dir / owner / f'{index}.{label}.png'} exists "
                f"({len(missing)} files missing in {split_dir / name})"
            )

    arrays: dict[str, np.ndarray] = {}
    bar = tqdm(
        total=len(keys) * len(names), desc=f"read {split_dir.name}", unit="img", disable=not progress
    )
    with bar:
        for name in names:
            images = [_read_png(files[name][key]) for key in keys]
            bar.update(len(keys))
            if images:
                shapes = {image.shape for image in images}
                if len(shapes) > 1:
                    first = images[0].shape
                    odd = next(files[name][k] for k, image in zip(keys, images) if image.shape != first)
                    raise DatasetFormatError(
                        f"{odd}: image size differs from {files[name][keys[0]]} ({first})"
                    )
                stacked = np.stack(images)
            else:
                stacked = np.zeros((0, 3, 0, 0), dtype=np.uint8)
            arrays[name] = stacked
    return FolderSplit(
        arrays=arrays,
        labels=np.array([label for _, label in keys], dtype=np.int64),
        sample_ids=np.array([index for index, _ in keys], dtype=np.int64),
    )


def _read_png(path: Path) -> np.ndarray:
    """Decode one image as uint8 channels-first RGB (3, H, W)."""
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except OSError as error:
        raise DatasetFormatError(f"{path}: cannot decode the image: {error}") from error
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------
# MNIST IDX files
# ---------------------------------------------------------------------------------------

# Official file names, plus the dotted variant some mirrors use ("train-images.idx3-ubyte").
_IDX_STEMS = {
    "train": ("train-images{sep}idx3-ubyte", "train-labels{sep}idx1-ubyte"),
    "test": ("t10k-images{sep}idx3-ubyte", "t10k-labels{sep}idx1-ubyte"),
}


def read_mnist_idx(directory: str | Path) -> dict[str, ImageSource]:
    """Read the MNIST training and test sets from IDX files.

    Args:
        directory: Folder with `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
            `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each optionally with a
            `.gz` suffix (a '.' in place of the '-' before `idx` is accepted too).

    Returns:
        {"train": ..., "test": ...}, each with uint8 images (N, 28, 28) and int64 labels.

    Raises:
        FileNotFoundError: a file is missing (the message lists the names tried).
        DatasetFormatError: a file has a bad header, a truncated or overlong body, labels
            outside 0..9, or image and label counts that differ.
    """
    directory = Path(directory)
    out = {}
    for split, (image_stem, label_stem) in _IDX_STEMS.items():
        image_path = _find_idx_file(directory, image_stem)
        label_path = _find_idx_file(directory, label_stem)
        images = _read_idx(image_path, expected_rank=3)
        labels = _read_idx(label_path, expected_rank=1).astype(np.int64)
        if len(images) != len(labels):
            raise DatasetFormatError(
                f"{image_path} has {len(images)} images but {label_path} has {len(labels)} labels"
            )
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DatasetFormatError(f"{label_path}: labels must be digits 0..9")
        out[split] = ImageSource(
            images=images,
            labels=labels,
            description={
                "format": "MNIST IDX",
                "images_file": image_path.name,
                "labels_file": label_path.name,
                "num_images": int(len(images)),
            },
        )
    return out


def _find_idx_file(directory: Path, stem: str) -> Path:
    tried = []
    for separator in ("-", "."):
        for suffix in ("", ".gz"):
            candidate = directory / (stem.format(sep=separator) + suffix)
            tried.append(candidate.name)
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"MNIST IDX file not found in {directory}; tried {tried}")


def _read_idx(path: Path, expected_rank: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise DatasetFormatError(f"{path}: cannot read the file: {error}") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetFormatError(f"{path}: not an IDX file (the first two bytes must be zero)")
    if data[2] != _IDX_UBYTE:
        raise DatasetFormatError(f"{path}: IDX data type {data[2]:#04x} is not unsigned byte (0x08)")
    rank = data[3]
    if rank != expected_rank:
        raise DatasetFormatError(f"{path}: IDX rank {rank}, expected {expected_rank}")
    header_size = 4 + 4 * rank
    if len(data) < header_size:
        raise DatasetFormatError(f"{path}: truncated IDX header")
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=rank, offset=4))
    expected_bytes = int(np.prod(shape, dtype=np.int64))
    body = len(data) - header_size
    if body != expected_bytes:
        raise DatasetFormatError(
            f"{path}: IDX header gives shape {shape} ({expected_bytes} bytes) "
            f"but the body has {body} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape).copy()
