"""Parquet storage: round trips, schema metadata, and every error raised when a file and its card disagree."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from data_helpers import mixed_arrays, mixed_card

from dymo_ray.data.io import (
    SplitData,
    load_ray_dataset,
    load_split,
    seeded_rows,
    write_card,
    write_split,
)
from dymo_ray.data.spec import CardError, DatasetCard, ModalitySpec

ROWS = 6


def _write_mixed(folder, present=None, sample_ids=None) -> tuple[dict, np.ndarray]:
    card = mixed_card(ROWS)
    arrays, labels = mixed_arrays(ROWS)
    ids = sample_ids if sample_ids is not None else [f"s{i}" for i in range(ROWS)]
    write_split(folder, "train", arrays, labels, ids, present, card=card)
    write_card(folder, card)
    return arrays, labels


def _rewrite_table(path, change) -> None:
    """Apply `change` to the Arrow table of a split file and write it back."""
    table = pq.read_table(path)
    pq.write_table(change(table), path)


def _edit_card(folder, change) -> None:
    data = json.loads((folder / "card.json").read_text())
    change(data)
    (folder / "card.json").write_text(json.dumps(data))


# ---------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------


def test_round_trip_keeps_values(tmp_path):
    present = np.ones((ROWS, 3), dtype=bool)
    present[1, 0] = False
    present[4, 2] = False
    arrays, labels = _write_mixed(tmp_path, present=present)
    data = load_split(tmp_path, "train")
    assert len(data) == ROWS
    for name, array in arrays.items():
        assert data.inputs[name].dtype == torch.from_numpy(array).dtype, name
        assert tuple(data.inputs[name].shape) == array.shape, name
        assert np.array_equal(data.inputs[name].numpy(), array), name
    assert data.labels.dtype == torch.int64
    assert np.array_equal(data.labels.numpy(), labels)
    assert np.array_equal(data.present.numpy(), present)
    assert data.sample_ids == [f"s{i}" for i in range(ROWS)]
    assert data.card.modality_names == ["image", "caption", "table"]


def test_round_trip_int_sample_ids(tmp_path):
    _write_mixed(tmp_path, sample_ids=np.arange(10, 10 + ROWS))
    data = load_split(tmp_path, "train")
    assert data.sample_ids == list(range(10, 10 + ROWS))


def test_loaded_tensors_are_writable(tmp_path):
    """Tensors must own their memory: Arrow buffers are read-only."""
    _write_mixed(tmp_path)
    data = load_split(tmp_path, "train")
    data.inputs["image"][0] = 0
    assert int(data.inputs["image"][0].sum()) == 0


def test_limit_and_rows_select(tmp_path):
    arrays, labels = _write_mixed(tmp_path)
    first = load_split(tmp_path, "train", limit=2)
    assert len(first) == 2
    assert np.array_equal(first.inputs["caption"].numpy(), arrays["caption"][:2])
    picked = load_split(tmp_path, "train", rows=[4, 0, -1])
    assert picked.sample_ids == ["s4", "s0", "s5"]
    assert np.array_equal(picked.inputs["table"].numpy(), arrays["table"][[4, 0, 5]])
    assert np.array_equal(picked.labels.numpy(), labels[[4, 0, 5]])


def test_limit_and_rows_reject_bad_values(tmp_path):
    _write_mixed(tmp_path)
    with pytest.raises(ValueError, match="either limit or rows"):
        load_split(tmp_path, "train", limit=2, rows=[0])
    with pytest.raises(ValueError, match=r"row indices must be in \[0, 6\)"):
        load_split(tmp_path, "train", rows=[6])


def test_subset_slices_every_field(tmp_path):
    arrays, labels = _write_mixed(tmp_path)
    data = load_split(tmp_path, "train")
    by_slice = data.subset(slice(1, 4))
    by_index = data.subset([5, 2])
    by_mask = data.subset(torch.tensor([True, False, False, False, False, True]))
    assert isinstance(by_slice, SplitData)
    assert by_slice.sample_ids == ["s1", "s2", "s3"]
    assert np.array_equal(by_slice.inputs["image"].numpy(), arrays["image"][1:4])
    assert by_index.sample_ids == ["s5", "s2"]
    assert np.array_equal(by_index.labels.numpy(), labels[[5, 2]])
    assert by_mask.sample_ids == ["s0", "s5"]
    assert tuple(by_mask.present.shape) == (2, 3)


def test_schema_metadata_describes_columns(tmp_path):
    _write_mixed(tmp_path)
    schema = pq.read_schema(tmp_path / "train.parquet")
    assert schema.names == [
        "sample_id", "label", "image", "caption", "table",
        "present__image", "present__caption", "present__table",
    ]
    card = DatasetCard.from_dict(json.loads(schema.metadata[b"dymo_ray.card"]))
    assert card.modality_names == ["image", "caption", "table"]
    assert schema.metadata[b"dymo_ray.split"] == b"train"
    image_meta = schema.field("image").metadata
    assert image_meta[b"dymo_ray.kind"] == b"image"
    assert image_meta[b"dymo_ray.dtype"] == b"uint8"
    assert json.loads(image_meta[b"dymo_ray.shape"]) == [3, 4, 5]
    assert schema.field("image").type == pa.binary(60)
    assert schema.field("caption").type == pa.list_(pa.int64(), 6)
    assert schema.field("table").type == pa.list_(pa.float32(), 4)
    assert schema.field("label").type == pa.int64()
    assert schema.field("present__table").type == pa.bool_()


def test_uint8_list_column_is_accepted(tmp_path):
    """Files from other tools may store uint8 images as a fixed-size list; both must load."""
    arrays, _ = _write_mixed(tmp_path)

    def to_list(table):
        flat = pa.array(arrays["image"].reshape(-1), type=pa.uint8())
        column = pa.FixedSizeListArray.from_arrays(flat, 60)
        index = table.schema.get_field_index("image")
        return table.set_column(index, pa.field("image", column.type), column)

    _rewrite_table(tmp_path / "train.parquet", to_list)
    data = load_split(tmp_path, "train")
    assert np.array_equal(data.inputs["image"].numpy(), arrays["image"])


def test_multiple_row_groups_load_in_order(tmp_path):
    """Chunked columns (one chunk per row group) must be concatenated in row order."""
    arrays, _ = _write_mixed(tmp_path)
    table = pq.read_table(tmp_path / "train.parquet")
    pq.write_table(table, tmp_path / "train.parquet", row_group_size=2)
    data = load_split(tmp_path, "train", rows=[5, 3, 1])
    assert np.array_equal(data.inputs["image"].numpy(), arrays["image"][[5, 3, 1]])
    assert np.array_equal(data.inputs["caption"].numpy(), arrays["caption"][[5, 3, 1]])


# ---------------------------------------------------------------------------------------
# Load errors: the message names the file and the column
# ---------------------------------------------------------------------------------------


def test_load_missing_column_raises(tmp_path):
    _write_mixed(tmp_path)
    _rewrite_table(tmp_path / "train.parquet", lambda table: table.drop_columns(["caption"]))
    with pytest.raises(CardError, match=r"train\.parquet: column 'caption' is missing"):
        load_split(tmp_path, "train")


def test_load_missing_present_column_raises(tmp_path):
    _write_mixed(tmp_path)
    _rewrite_table(tmp_path / "train.parquet", lambda table: table.drop_columns(["present__table"]))
    with pytest.raises(CardError, match=r"train\.parquet: column 'present__table' is missing"):
        load_split(tmp_path, "train")


def test_load_wrong_shape_raises(tmp_path):
    _write_mixed(tmp_path)
    _edit_card(tmp_path, lambda card: card["modalities"][2].update(shape=[5]))
    with pytest.raises(CardError, match=r"train\.parquet: column 'table' has 4 values per row"):
        load_split(tmp_path, "train")


def test_load_wrong_shape_same_size_raises(tmp_path):
    """(3, 4, 5) and (5, 4, 3) have the same size; the stored shape must still match."""
    _write_mixed(tmp_path)
    _edit_card(tmp_path, lambda card: card["modalities"][0].update(shape=[5, 4, 3]))
    with pytest.raises(CardError, match=r"train\.parquet: column 'image' stores shape \[3, 4, 5\]"):
        load_split(tmp_path, "train")


def test_load_wrong_dtype_raises(tmp_path):
    _write_mixed(tmp_path)
    _edit_card(tmp_path, lambda card: card["modalities"][2].update(dtype="uint8"))
    with pytest.raises(CardError, match=r"train\.parquet: column 'table' has dtype float"):
        load_split(tmp_path, "train")


def test_load_wrong_image_dtype_raises(tmp_path):
    _write_mixed(tmp_path)
    _edit_card(tmp_path, lambda card: card["modalities"][0].update(dtype="float32"))
    with pytest.raises(CardError, match=r"train\.parquet: column 'image' has dtype uint8"):
        load_split(tmp_path, "train")


def test_load_label_out_of_range_raises(tmp_path):
    _write_mixed(tmp_path)

    def bad_label(table):
        labels = pa.array([0, 1, 2, 3, 0, 1], type=pa.int64())
        return table.set_column(1, pa.field("label", pa.int64()), labels)

    _rewrite_table(tmp_path / "train.parquet", bad_label)
    with pytest.raises(CardError, match=r"train\.parquet: column 'label' has 1 labels outside \[0, 3\)"):
        load_split(tmp_path, "train")


def test_load_negative_label_raises(tmp_path):
    _write_mixed(tmp_path)

    def negative_label(table):
        labels = pa.array([0, 1, 2, -1, 0, 1], type=pa.int64())
        return table.set_column(1, pa.field("label", pa.int64()), labels)

    _rewrite_table(tmp_path / "train.parquet", negative_label)
    with pytest.raises(CardError, match=r"outside \[0, 3\) \(first: -1 at row 3\)"):
        load_split(tmp_path, "train")


def test_load_fewer_card_classes_raises(tmp_path):
    _write_mixed(tmp_path)
    _edit_card(tmp_path, lambda card: card.update(class_names=["a", "b"]))
    data_labels = mixed_arrays(ROWS)[1]
    assert (data_labels == 2).any(), "the fixture needs a label 2 for this test"
    with pytest.raises(CardError, match=r"column 'label' has \d+ labels outside \[0, 2\)"):
        load_split(tmp_path, "train")


def test_load_nan_in_float_modality_raises(tmp_path):
    arrays, _ = _write_mixed(tmp_path)

    def add_nan(table):
        values = arrays["table"].copy()
        values[3, 2] = np.nan
        column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 4)
        index = table.schema.get_field_index("table")
        return table.set_column(index, table.schema.field("table"), column)

    _rewrite_table(tmp_path / "train.parquet", add_nan)
    with pytest.raises(CardError, match=r"train\.parquet: column 'table' has NaN .*row 3"):
        load_split(tmp_path, "train")


def test_load_value_outside_card_range_raises(tmp_path):
    _write_mixed(tmp_path)
    _edit_card(tmp_path, lambda card: card["modalities"][1].update(max_value=3.0))
    with pytest.raises(CardError, match=r"train\.parquet: column 'caption' has values in"):
        load_split(tmp_path, "train")


def test_load_split_size_mismatch_raises(tmp_path):
    _write_mixed(tmp_path)
    _edit_card(tmp_path, lambda card: card["splits"].update(train=ROWS + 1))
    with pytest.raises(CardError, match=r"train\.parquet: has 6 rows but .*card\.json lists 7"):
        load_split(tmp_path, "train")


def test_load_unlisted_split_raises(tmp_path):
    _write_mixed(tmp_path)
    _edit_card(tmp_path, lambda card: card.update(splits={"val": ROWS}))
    with pytest.raises(CardError, match=r"card lists no split 'train'; listed splits: \['val'\]"):
        load_split(tmp_path, "train")


def test_load_missing_file_raises(tmp_path):
    _write_mixed(tmp_path)
    with pytest.raises(CardError, match=r"split file not found: .*test\.parquet"):
        load_split(tmp_path, "test")


def test_load_missing_card_raises(tmp_path):
    with pytest.raises(CardError, match="dataset card not found"):
        load_split(tmp_path, "train")


def test_load_row_without_observed_modality_raises(tmp_path):
    _write_mixed(tmp_path)

    def hide_row(table):
        for name in ("present__image", "present__caption", "present__table"):
            values = [True] * ROWS
            values[2] = False
            index = table.schema.get_field_index(name)
            table = table.set_column(index, table.schema.field(name), pa.array(values))
        return table

    _rewrite_table(tmp_path / "train.parquet", hide_row)
    with pytest.raises(CardError, match=r"1 rows have no observed modality \(first row 2\)"):
        load_split(tmp_path, "train")


# ---------------------------------------------------------------------------------------
# Write errors
# ---------------------------------------------------------------------------------------


def _write_with(tmp_path, card=None, arrays=None, labels=None, ids=None, present=None):
    card = card or mixed_card(ROWS)
    default_arrays, default_labels = mixed_arrays(ROWS)
    write_split(
        tmp_path,
        "train",
        arrays if arrays is not None else default_arrays,
        labels if labels is not None else default_labels,
        ids if ids is not None else list(range(ROWS)),
        present,
        card=card,
    )


def test_write_wrong_dtype_raises(tmp_path):
    arrays, _ = mixed_arrays(ROWS)
    arrays["table"] = arrays["table"].astype(np.float64)
    with pytest.raises(CardError, match="column 'table' has dtype float64, expected float32"):
        _write_with(tmp_path, arrays=arrays)


def test_write_wrong_shape_raises(tmp_path):
    arrays, _ = mixed_arrays(ROWS)
    arrays["image"] = arrays["image"].reshape(ROWS, 5, 4, 3)
    with pytest.raises(CardError, match=r"column 'image' has shape \(6, 5, 4, 3\)"):
        _write_with(tmp_path, arrays=arrays)


def test_write_missing_modality_raises(tmp_path):
    arrays, _ = mixed_arrays(ROWS)
    del arrays["caption"]
    with pytest.raises(CardError, match=r"missing \['caption'\]"):
        _write_with(tmp_path, arrays=arrays)


def test_write_row_count_mismatch_raises(tmp_path):
    card = mixed_card(ROWS + 2)
    with pytest.raises(CardError, match=r"card lists 8 rows for split 'train' but 6 labels"):
        _write_with(tmp_path, card=card)


def test_write_nan_raises(tmp_path):
    arrays, _ = mixed_arrays(ROWS)
    arrays["table"][0, 0] = np.nan
    with pytest.raises(CardError, match="column 'table' has NaN"):
        _write_with(tmp_path, arrays=arrays)


def test_write_repeated_ids_raises(tmp_path):
    with pytest.raises(CardError, match="repeated ids"):
        _write_with(tmp_path, ids=[0, 1, 2, 3, 4, 4])


def test_write_empty_present_row_raises(tmp_path):
    present = np.ones((ROWS, 3), dtype=bool)
    present[0] = False
    with pytest.raises(CardError, match="no observed modality"):
        _write_with(tmp_path, present=present)


def test_write_reserved_modality_name_raises(tmp_path):
    card = DatasetCard(
        name="clash",
        modalities=[ModalitySpec("label", "tabular", (2,), "float32")],
        class_names=["a", "b"],
        splits={"train": 2},
    )
    with pytest.raises(CardError, match="modality name 'label' .* clashes with a fixed column"):
        write_split(tmp_path, "train", {"label": np.zeros((2, 2), np.float32)}, [0, 1], [0, 1], card=card)


def test_write_bad_split_name_raises(tmp_path):
    card = mixed_card(ROWS)
    arrays, labels = mixed_arrays(ROWS)
    with pytest.raises(ValueError, match="invalid split name '../x'"):
        write_split(tmp_path, "../x", arrays, labels, list(range(ROWS)), card=card)


# ---------------------------------------------------------------------------------------
# Ray Dataset
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ray_dataset_matches_load_split(tmp_path, ray_local):
    present = np.ones((ROWS, 3), dtype=bool)
    present[2, 1] = False
    arrays, labels = _write_mixed(tmp_path, present=present)
    dataset = load_ray_dataset(tmp_path, "train")
    batch = dataset.take_batch(ROWS, batch_format="numpy")
    order = np.argsort([int(s[1:]) for s in batch["sample_id"]])
    for name, array in arrays.items():
        assert batch[name].shape == array.shape, name
        assert batch[name].dtype == array.dtype, name
        assert np.array_equal(batch[name][order], array), name
    assert np.array_equal(batch["label"][order], labels)
    assert batch["present"].shape == (ROWS, 3)
    assert np.array_equal(batch["present"][order], present)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ray_dataset_nan_raises_when_read(tmp_path, ray_local):
    arrays, _ = _write_mixed(tmp_path)

    def add_nan(table):
        values = arrays["table"].copy()
        values[1, 0] = np.nan
        column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 4)
        index = table.schema.get_field_index("table")
        return table.set_column(index, table.schema.field("table"), column)

    _rewrite_table(tmp_path / "train.parquet", add_nan)
    dataset = load_ray_dataset(tmp_path, "train")
    # Ray wraps errors raised in its tasks; the original message is kept.
    with pytest.raises(Exception, match="column 'table' has NaN"):
        dataset.take_all()


def test_ray_dataset_checks_schema_before_reading(tmp_path):
    """Schema errors are raised in the caller, before Ray starts any task."""
    _write_mixed(tmp_path)
    _rewrite_table(tmp_path / "train.parquet", lambda table: table.drop_columns(["image"]))
    with pytest.raises(CardError, match=r"train\.parquet: column 'image' is missing"):
        load_ray_dataset(tmp_path, "train")


def test_ray_dataset_checks_labels_before_reading(tmp_path):
    _write_mixed(tmp_path)
    _edit_card(tmp_path, lambda card: card.update(class_names=["a", "b"]))
    with pytest.raises(CardError, match=r"column 'label' has \d+ labels outside \[0, 2\)"):
        load_ray_dataset(tmp_path, "train")


def test_seeded_rows_reproducible_and_sorted():
    rows = seeded_rows(100, 10, seed=3)

    assert rows.tolist() == sorted(set(rows.tolist()))
    assert len(rows) == 10
    assert rows.min() >= 0
    assert rows.max() < 100
    assert np.array_equal(seeded_rows(100, 10, seed=3), rows)
    assert not np.array_equal(seeded_rows(100, 10, seed=4), rows)


@pytest.mark.parametrize("limit", [None, 100, 250])
def test_seeded_rows_all_rows(limit):
    assert seeded_rows(100, limit, seed=0) is None


@pytest.mark.parametrize("limit", [0, -5])
def test_seeded_rows_limit_below_one(limit):
    with pytest.raises(ValueError, match=f"limit must be an integer >= 1 or None, got {limit}"):
        seeded_rows(100, limit, seed=0)
