"""Parquet storage of dataset splits, with the dataset card as the contract for every load.

A dataset folder contains `card.json` and one `<split>.parquet` per split. Each Parquet file has
one row per sample and these columns:

- `sample_id`: int64 or string, unique within the split.
- `label`: int64 class index in [0, C).
- `<modality>` for every modality of the card, in card order, holding one sample flattened
  in C order (`spec.num_values` values): `fixed_size_binary(num_values)` for uint8
  modalities, a fixed-size list of int64 or float32 for the others. Parquet has no 8-bit
  integer type, so a list of uint8 is stored as 32-bit integers and decoded value by value.
  Measured on 14,000 PolyMNIST rows (2 CPU cores, pyarrow 25), reading it took about 3 s
  against 0.35 s for raw bytes. Readers also accept a fixed-size list of uint8.
  Its field metadata stores `dymo_ray.kind`, `dymo_ray.dtype` and `dymo_ray.shape` (JSON).
- `present__<modality>` for every modality: bool, True = observed. A row whose modality is
  not observed still stores values (zeros from `write_split`), which nothing may read.

The schema metadata stores the card as JSON (`dymo_ray.card`), the split name
(`dymo_ray.split`) and the storage format version (`dymo_ray.format_version`).

Every load checks the file against `card.json` and raises `CardError` naming the file and
the column on any mismatch.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dymo_ray.data.spec import CardError, DatasetCard, ModalitySpec

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

STORAGE_FORMAT_VERSION = 1
CARD_FILE = "card.json"
PRESENT_PREFIX = "present__"
RESERVED_COLUMNS = ("sample_id", "label", "present")
ROW_GROUP_ROWS = 4096

_ARROW_TYPES = {"uint8": pa.uint8(), "int64": pa.int64(), "float32": pa.float32()}
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def present_column(modality: str) -> str:
    """Return the name of the bool presence column of `modality`."""
    return PRESENT_PREFIX + modality


def split_path(data_dir: str | Path, split: str) -> Path:
    """Return the Parquet file of `split` in the dataset folder `data_dir`.

    Raises:
        ValueError: `split` is not a plain file-name stem (letters, digits, '_' and '-').
    """
    if not _SPLIT_NAME.match(split):
        raise ValueError(
            f"invalid split name {split!r}: use letters, digits, '_' and '-', e.g. 'train'"
        )
    return Path(data_dir) / f"{split}.parquet"


def check_card_names(card: DatasetCard) -> None:
    """Check that no modality name clashes with a fixed column.

    Raises:
        CardError: a modality is named `sample_id`, `label`, `present` or `present__*`.
    """
    for name in card.modality_names:
        if name in RESERVED_COLUMNS or name.startswith(PRESENT_PREFIX):
            raise CardError(
                f"modality name {name!r} of dataset {card.name!r} clashes with a fixed "
                f"column; reserved names: {list(RESERVED_COLUMNS)} and '{PRESENT_PREFIX}*'"
            )


def write_card(out_dir: str | Path, card: DatasetCard) -> Path:
    """Write `card` as `<out_dir>/card.json`, atomically, and return the path.

    Write the card after the split files: a folder with a card is a complete dataset.
    """
    check_card_names(card)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CARD_FILE
    temporary = out_dir / f".{CARD_FILE}.{os.getpid()}.tmp"
    card.save(temporary)
    os.replace(temporary, path)
    return path


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def write_split(
    out_dir: str | Path,
    split: str,
    arrays: Mapping[str, np.ndarray],
    labels: Sequence[int] | np.ndarray,
    sample_ids: Sequence[int] | Sequence[str] | np.ndarray,
    present: np.ndarray | None = None,
    *,
    card: DatasetCard,
) -> Path:
    """Write one split as `<out_dir>/<split>.parquet` (atomically) and return the path.

    The card must already list the split with its row count (`card.splits[split] == N`), so
    that the card stored in the file's metadata is the final one. Write `card.json` with
    `write_card` once every split is written.

    Args:
        out_dir: Dataset folder, created if missing.
        split: Split name, e.g. "train".
        arrays: One array per modality of the card, shape (N, *spec.shape), dtype spec.dtype.
        labels: Class indices (N,) in [0, C).
        sample_ids: N unique ids, all ints or all strings.
        present: Bool (N, M) in card order, True = observed; None means every modality is
            observed. Every row needs at least one observed modality.
        card: The dataset card.

    Returns:
        Path of the written Parquet file.

    Raises:
        CardError: the arrays, labels, ids or presence mask do not match the card.
    """
    check_card_names(card)
    path = split_path(out_dir, split)
    labels = np.asarray(labels)
    num_rows = len(labels)
    _check_write_inputs(path, split, arrays, labels, sample_ids, card)
    if present is None:
        present = np.ones((num_rows, card.num_modalities), dtype=bool)
    present = np.asarray(present)
    _check_present(path, present, num_rows, card)

    columns: dict[str, pa.Array] = {
        "sample_id": _sample_id_array(path, sample_ids),
        "label": pa.array(labels.astype(np.int64), type=pa.int64()),
    }
    fields = [pa.field("sample_id", columns["sample_id"].type), pa.field("label", pa.int64())]
    for spec in card.modalities:
        columns[spec.name] = _modality_array(np.asarray(arrays[spec.name]), spec)
        fields.append(
            pa.field(
                spec.name,
                storage_type(spec),
                nullable=False,
                metadata=_field_metadata(spec),
            )
        )
    for index, spec in enumerate(card.modalities):
        name = present_column(spec.name)
        columns[name] = pa.array(present[:, index], type=pa.bool_())
        fields.append(pa.field(name, pa.bool_(), nullable=False))

    schema = pa.schema(
        fields,
        metadata={
            "dymo_ray.card": card.to_json(),
            "dymo_ray.split": split,
            "dymo_ray.format_version": str(STORAGE_FORMAT_VERSION),
        },
    )
    table = pa.Table.from_arrays([columns[f.name] for f in fields], schema=schema)

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Same inputs, same pyarrow version: byte-identical files (nothing time-dependent).
    # Image rows are distinct byte strings, so a dictionary or min/max statistics of the
    # modality columns would only cost time. Only the id and label columns get them.
    pq.write_table(
        table,
        temporary,
        compression="zstd",
        row_group_size=ROW_GROUP_ROWS,
        use_dictionary=["label"],
        write_statistics=["sample_id", "label"],
    )
    os.replace(temporary, path)
    logger.debug("wrote %s (%d rows)", path, num_rows)
    return path


def storage_type(spec: ModalitySpec) -> pa.DataType:
    """Return the Arrow type `write_split` uses for a modality column."""
    if spec.dtype == "uint8":
        return pa.binary(spec.num_values)
    return pa.list_(_ARROW_TYPES[spec.dtype], spec.num_values)


def _modality_array(values: np.ndarray, spec: ModalitySpec) -> pa.Array:
    flat = np.ascontiguousarray(values).reshape(-1)
    if spec.dtype == "uint8":
        return pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(spec.num_values), len(values), [None, pa.py_buffer(flat)]
        )
    return pa.FixedSizeListArray.from_arrays(
        pa.array(flat, type=_ARROW_TYPES[spec.dtype]), spec.num_values
    )


def _field_metadata(spec: ModalitySpec) -> dict[str, str]:
    return {
        "dymo_ray.kind": spec.kind,
        "dymo_ray.dtype": spec.dtype,
        "dymo_ray.shape": json.dumps(list(spec.shape)),
    }


def _check_write_inputs(
    path: Path,
    split: str,
    arrays: Mapping[str, np.ndarray],
    labels: np.ndarray,
    sample_ids: Sequence[Any] | np.ndarray,
    card: DatasetCard,
) -> None:
    num_rows = len(labels)
    expected_rows = card.splits.get(split)
    if expected_rows != num_rows:
        raise CardError(
            f"{path}: the card lists {expected_rows} rows for split {split!r} but {num_rows} "
            f"labels were given; set card.splits[{split!r}] = {num_rows} before writing"
        )
    missing = [name for name in card.modality_names if name not in arrays]
    extra = sorted(set(arrays) - set(card.modality_names))
    if missing or extra:
        raise CardError(
            f"{path}: arrays must have exactly the card's modalities {card.modality_names}; "
            f"missing {missing}, unexpected {extra}"
        )

    for spec in card.modalities:
        array = np.asarray(arrays[spec.name])
        if array.shape != (num_rows, *spec.shape):
            raise CardError(
                f"{path}: column {spec.name!r} has shape {array.shape}, "
                f"expected {(num_rows, *spec.shape)} from the card"
            )
        if array.dtype != np.dtype(spec.dtype):
            raise CardError(
                f"{path}: column {spec.name!r} has dtype {array.dtype}, expected {spec.dtype} "
                "from the card; cast the array first"
            )

    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise CardError(
            f"{path}: column 'label' needs a 1-D integer array, got {labels.dtype} {labels.shape}"
        )
    _check_label_range(path, labels, card)

    if len(sample_ids) != num_rows:
        raise CardError(f"{path}: column 'sample_id' has {len(sample_ids)} ids for {num_rows} rows")
    if len(set(_python_ids(sample_ids))) != num_rows:
        raise CardError(f"{path}: column 'sample_id' has repeated ids; ids must be unique")

    for spec in card.modalities:
        _check_value_range(path, spec, np.asarray(arrays[spec.name]))


def _python_ids(sample_ids: Sequence[Any] | np.ndarray) -> list[Any]:
    return np.asarray(sample_ids).tolist() if isinstance(sample_ids, np.ndarray) else list(sample_ids)


def _sample_id_array(path: Path, sample_ids: Sequence[Any] | np.ndarray) -> pa.Array:
    ids = _python_ids(sample_ids)
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        return pa.array(ids, type=pa.int64())
    if all(isinstance(i, str) for i in ids):
        return pa.array(ids, type=pa.string())
    raise CardError(f"{path}: column 'sample_id' must be all ints or all strings")


def _check_present(path: Path, present: np.ndarray, num_rows: int, card: DatasetCard) -> None:
    if present.shape != (num_rows, card.num_modalities) or present.dtype != np.bool_:
        raise CardError(
            f"{path}: the presence mask must be bool {(num_rows, card.num_modalities)}, "
            f"got {present.dtype} {present.shape}"
        )
    empty = np.flatnonzero(~present.any(axis=1))
    if empty.size:
        raise CardError(
            f"{path}: {empty.size} rows have no observed modality (first row {int(empty[0])}); "
            "every row needs at least one"
        )


# ---------------------------------------------------------------------------------------
# Checking a file against the card
# ---------------------------------------------------------------------------------------


def _check_schema(path: Path, schema: pa.Schema, card: DatasetCard, split: str, num_rows: int) -> None:
    """Check column names, types, shapes and the row count of a split file against the card."""
    check_card_names(card)
    card_path = path.parent / CARD_FILE
    expected_rows = card.splits.get(split)
    if expected_rows is None:
        raise CardError(
            f"{card_path}: the card lists no split {split!r}; listed splits: {sorted(card.splits)}"
        )
    if expected_rows != num_rows:
        raise CardError(
            f"{path}: has {num_rows} rows but {card_path} lists {expected_rows} for split "
            f"{split!r}; rebuild the dataset or fix the card"
        )
    names = set(schema.names)
    required = ["sample_id", "label", *card.modality_names]
    required += [present_column(name) for name in card.modality_names]
    for name in required:
        if name not in names:
            raise CardError(
                f"{path}: column {name!r} is missing; the card {card_path} needs columns {required}"
            )

    sample_id_type = schema.field("sample_id").type
    if sample_id_type not in (pa.int64(), pa.string(), pa.large_string()):
        raise CardError(f"{path}: column 'sample_id' has type {sample_id_type}, expected int64 or string")
    if schema.field("label").type != pa.int64():
        raise CardError(f"{path}: column 'label' has type {schema.field('label').type}, expected int64")
    for spec in card.modalities:
        _check_modality_field(path, schema.field(spec.name), spec)
        present_type = schema.field(present_column(spec.name)).type
        if present_type != pa.bool_():
            raise CardError(
                f"{path}: column {present_column(spec.name)!r} has type {present_type}, expected bool"
            )


def _check_modality_field(path: Path, field: pa.Field, spec: ModalitySpec) -> None:
    if pa.types.is_fixed_size_binary(field.type):
        value_type, size = pa.uint8(), field.type.byte_width
    elif pa.types.is_fixed_size_list(field.type):
        value_type, size = field.type.value_type, field.type.list_size
    else:
        raise CardError(
            f"{path}: column {spec.name!r} has type {field.type}, expected "
            f"{storage_type(spec)} ({spec.num_values} {spec.dtype} values, shape {list(spec.shape)})"
        )
    if value_type != _ARROW_TYPES[spec.dtype]:
        raise CardError(
            f"{path}: column {spec.name!r} has dtype {value_type}, the card expects {spec.dtype}"
        )
    if size != spec.num_values:
        raise CardError(
            f"{path}: column {spec.name!r} has {size} values per row, the card "
            f"expects shape {list(spec.shape)} ({spec.num_values} values)"
        )
    metadata = {key.decode(): value.decode() for key, value in (field.metadata or {}).items()}
    stored_shape = metadata.get("dymo_ray.shape")
    if stored_shape is not None and json.loads(stored_shape) != list(spec.shape):
        raise CardError(
            f"{path}: column {spec.name!r} stores shape {json.loads(stored_shape)}, "
            f"the card expects {list(spec.shape)}"
        )
    stored_dtype = metadata.get("dymo_ray.dtype")
    if stored_dtype is not None and stored_dtype != spec.dtype:
        raise CardError(
            f"{path}: column {spec.name!r} stores dtype {stored_dtype}, the card expects {spec.dtype}"
        )


def _check_label_range(path: Path, labels: np.ndarray, card: DatasetCard) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= card.num_classes))
    if bad.size:
        raise CardError(
            f"{path}: column 'label' has {bad.size} labels outside [0, {card.num_classes}) "
            f"(first: {int(labels[bad[0]])} at row {int(bad[0])}); "
            f"the card has classes {card.class_names}"
        )


def _check_value_range(path: Path, spec: ModalitySpec, values: np.ndarray) -> None:
    """Check for NaN or infinity (float modalities) and values outside the spec's range."""
    if values.size == 0:
        return
    if np.issubdtype(values.dtype, np.floating):
        finite = np.isfinite(values)
        if not finite.all():
            row = int(np.argwhere(~finite)[0][0])
            raise CardError(
                f"{path}: column {spec.name!r} has NaN or infinite values (first at row {row}); "
                "mark unobserved values with the present column instead"
            )
    if np.issubdtype(values.dtype, np.integer):
        limits = np.iinfo(values.dtype)
        if spec.min_value <= limits.min and spec.max_value >= limits.max:
            return  # every value of the dtype is in range, e.g. uint8 images in 0..255
    low, high = values.min(), values.max()
    if low < spec.min_value or high > spec.max_value:
        raise CardError(
            f"{path}: column {spec.name!r} has values in [{low}, {high}], outside the card's "
            f"range [{spec.min_value}, {spec.max_value}]"
        )


# ---------------------------------------------------------------------------------------
# Loading into memory
# ---------------------------------------------------------------------------------------


@dataclass
class SplitData:
    """A split held in memory as tensors.

    Attributes:
        card: The dataset card.
        split: Split name.
        inputs: Modality name -> tensor (N, *spec.shape) in the storage dtype (uint8 images,
            int64 text, float32 tabular).
        labels: Int64 (N,).
        present: Bool (N, M) in card order, True = observed.
        sample_ids: N ids (ints or strings).
    """

    card: DatasetCard
    split: str
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    present: torch.Tensor
    sample_ids: list[Any]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: slice | Sequence[int] | np.ndarray | torch.Tensor) -> SplitData:
        """Return the rows at `indices` (a slice, int indices or a bool mask of length N)."""
        if isinstance(indices, slice):
            positions = list(range(len(self)))[indices]
            index: slice | torch.Tensor = indices
        else:
            index = torch.as_tensor(np.asarray(indices))
            if index.dtype == torch.bool:
                index = torch.nonzero(index, as_tuple=False).reshape(-1)
            index = index.long()
            positions = index.tolist()
        return SplitData(
            card=self.card,
            split=self.split,
            inputs={name: tensor[index] for name, tensor in self.inputs.items()},
            labels=self.labels[index],
            present=self.present[index],
            sample_ids=[self.sample_ids[i] for i in positions],
        )


def load_card(data_dir: str | Path) -> DatasetCard:
    """Read `<data_dir>/card.json` and check its modality names.

    Raises:
        CardError: the card is missing, invalid, or a modality name clashes with a column.
    """
    card = DatasetCard.load(Path(data_dir))
    check_card_names(card)
    return card


def seeded_rows(total: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Return `limit` row indices out of `total`, drawn with `seed` and sorted, or None for all.

    The rows are the start of a seeded permutation, so classes stay mixed and a seed always
    gives the same rows. None is returned when `limit` is None or covers every row.

    Raises:
        ValueError: `limit` is below 1.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be an integer >= 1 or None, got {limit}")
    if limit is None or limit >= total:
        return None
    return np.sort(np.random.default_rng(seed).permutation(total)[:limit])


def load_split(
    data_dir: str | Path,
    split: str,
    limit: int | None = None,
    rows: Sequence[int] | np.ndarray | None = None,
) -> SplitData:
    """Load a split into memory after checking it against the card.

    Args:
        data_dir: Dataset folder with `card.json` and `<split>.parquet`.
        split: Split name.
        limit: Keep only the first `limit` rows.
        rows: Keep only these row indices, in this order. Not together with `limit`.

    Returns:
        The split as tensors.

    Raises:
        CardError: the file is missing or does not match the card. The checks cover a
            missing column, a wrong shape or dtype, labels outside [0, C), NaN in a float
            modality, values outside the card's range, a row count other than the card's
            and a row with nothing observed.
        ValueError: both `limit` and `rows`, or a negative `limit`, or a row index out of range.
    """
    if limit is not None and rows is not None:
        raise ValueError("pass either limit or rows, not both")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    card, path = _card_and_path(data_dir, split)
    parquet = pq.ParquetFile(path)
    _check_schema(path, parquet.schema_arrow, card, split, parquet.metadata.num_rows)
    table = parquet.read()
    if limit is not None:
        table = table.slice(0, limit)
    elif rows is not None:
        indices = np.asarray(rows, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < -table.num_rows or indices.max() >= table.num_rows):
            raise ValueError(f"row indices must be in [0, {table.num_rows}) for {path}")
        indices = np.where(indices < 0, indices + table.num_rows, indices)
        table = table.take(pa.array(indices, type=pa.int64()))
    return _table_to_split_data(path, table, card, split)


def _card_and_path(data_dir: str | Path, split: str) -> tuple[DatasetCard, Path]:
    data_dir = Path(data_dir).resolve()
    card = load_card(data_dir)
    path = split_path(data_dir, split)
    if not path.exists():
        raise CardError(
            f"split file not found: {path}; the card lists splits {sorted(card.splits)}"
        )
    return card, path


def _flat_values(path: Path, column: pa.ChunkedArray, spec: ModalitySpec) -> np.ndarray:
    """Return the flat values of a modality column as one writable numpy array.

    Each chunk is viewed without a copy; concatenation makes the only copy.
    """
    if column.null_count:
        raise CardError(f"{path}: column {spec.name!r} has {column.null_count} null rows")
    parts = [np.empty(0, dtype=spec.dtype)]
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        if pa.types.is_fixed_size_binary(chunk.type):
            data = chunk.buffers()[1]
            start = chunk.offset * spec.num_values
            parts.append(
                np.frombuffer(data, dtype=np.uint8, count=len(chunk) * spec.num_values, offset=start)
            )
        else:
            parts.append(chunk.flatten().to_numpy(zero_copy_only=True))
    return np.concatenate(parts)


def _table_to_split_data(path: Path, table: pa.Table, card: DatasetCard, split: str) -> SplitData:
    num_rows = table.num_rows
    labels = _plain_column(path, table, "label").astype(np.int64, copy=False)
    _check_label_range(path, labels, card)

    inputs = {}
    for spec in card.modalities:
        values = _flat_values(path, table.column(spec.name), spec)
        values = values.reshape(num_rows, *spec.shape)
        _check_value_range(path, spec, values)
        inputs[spec.name] = torch.from_numpy(values)

    present = np.stack(
        [_plain_column(path, table, present_column(name)) for name in card.modality_names],
        axis=1,
    ).reshape(num_rows, card.num_modalities)
    _check_present(path, present.astype(bool), num_rows, card)
    return SplitData(
        card=card,
        split=split,
        inputs=inputs,
        labels=torch.from_numpy(np.array(labels)),
        present=torch.from_numpy(present.astype(bool)),
        sample_ids=table.column("sample_id").to_pylist(),
    )


def _plain_column(path: Path, table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise CardError(f"{path}: column {name!r} has {column.null_count} null rows")
    return column.to_numpy()


# ---------------------------------------------------------------------------------------
# Loading as a Ray Dataset
# ---------------------------------------------------------------------------------------


def load_ray_dataset(data_dir: str | Path, split: str) -> ray.data.Dataset:
    """Read a split as a Ray Dataset whose batches hold arrays in the card's shapes.

    The schema, the row count and the labels are checked in the caller's process before
    Ray reads anything; NaN and value ranges are checked per batch while Ray reads, so those
    errors surface when the dataset is consumed.

    Each batch has the columns `sample_id`, `label` (int64), one column per modality with
    arrays (B, *spec.shape) in the storage dtype, and `present`: bool (B, M) in card order,
    True = observed.

    Args:
        data_dir: Dataset folder with `card.json` and `<split>.parquet`.
        split: Split name.

    Returns:
        A lazy `ray.data.Dataset`.

    Raises:
        CardError: the file is missing or does not match the card.
    """
    import ray.data  # Ray is heavy to import; only this function needs it.

    card, path = _card_and_path(data_dir, split)
    parquet = pq.ParquetFile(path)
    _check_schema(path, parquet.schema_arrow, card, split, parquet.metadata.num_rows)
    labels = pq.read_table(path, columns=["label"]).column("label")
    if labels.null_count:
        raise CardError(f"{path}: column 'label' has {labels.null_count} null rows")
    _check_label_range(path, labels.to_numpy(), card)

    columns = ["sample_id", "label", *card.modality_names]
    columns += [present_column(name) for name in card.modality_names]
    dataset = ray.data.read_parquet(str(path), columns=columns)
    reshape = functools.partial(_reshape_batch, path=path, card=card)
    return dataset.map_batches(reshape, batch_format="pyarrow")


def _reshape_batch(batch: pa.Table, *, path: Path, card: DatasetCard) -> dict[str, np.ndarray]:
    num_rows = batch.num_rows
    out: dict[str, np.ndarray] = {
        "sample_id": batch.column("sample_id").to_numpy(zero_copy_only=False),
        "label": _plain_column(path, batch, "label").astype(np.int64, copy=False),
    }
    for spec in card.modalities:
        values = _flat_values(path, batch.column(spec.name), spec)
        values = values.reshape(num_rows, *spec.shape)
        _check_value_range(path, spec, values)
        out[spec.name] = values
    present = [_plain_column(path, batch, present_column(name)) for name in card.modality_names]
    out["present"] = np.stack(present, axis=1).astype(bool).reshape(num_rows, card.num_modalities)
    return out
