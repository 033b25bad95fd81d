"""Turn the JSON values of a request into arrays in the storage form of the dataset card.

Every check names the field it rejects as a location path, like FastAPI's own validation
errors (`["body", "modalities", "mnist"]`). Every problem of a request is reported together.
On client input, nothing here raises anything but `RequestInvalid`, so a bad request costs a
422 and never a replica.

Accepted forms per modality kind (storage dtypes come from the card):

- image (C, H, W): a nested list of whole numbers in [min_value, max_value], or a base64
  PNG (an optional `data:image/png;base64,` prefix is allowed) of W x H pixels in mode L
  (C = 1) or RGB (C = 3);
- text (L,): a string of at most L characters of the alphabet, padded on the right with
  spaces as the datasets are, or a list of L character indices;
- tabular (F,): a list of F finite numbers in [min_value, max_value].
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from dymo_ray.data.spec import DatasetCard, ModalitySpec
from dymo_ray.data.text import encode_text

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = {1: "L", 3: "RGB"}
_NUMPY_DTYPES = {"uint8": np.uint8, "int64": np.int64, "float32": np.float32}

Location = tuple[str | int, ...]


@dataclass(frozen=True)
class FieldError:
    """One invalid field of a request.

    Attributes:
        loc: Path of the field in the request, e.g. ("body", "modalities", "text").
        msg: What is wrong and what is expected.
        type: Short machine-readable kind of the problem.
    """

    loc: Location
    msg: str
    type: str = "value_error"

    def to_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


class RequestInvalid(Exception):
    """A request failed validation; `errors` lists every invalid field."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors))


class _FieldProblem(Exception):
    # Raised inside one modality's decoder and turned into a FieldError by the caller. It
    # is not a ValueError, so the PIL error handlers below cannot swallow it.
    def __init__(self, msg: str, kind: str = "value_error") -> None:
        super().__init__(msg)
        self.msg = msg
        self.kind = kind


@dataclass
class DecodedSample:
    """One validated sample in storage form.

    Attributes:
        inputs: Modality name -> array of the card's shape and storage dtype. Missing
            modalities are zeros, which the models never read.
        present: Bool (M,) in card order, True = observed.
        seed: Recovery seed sent by the client, or None.
    """

    inputs: dict[str, np.ndarray]
    present: np.ndarray
    seed: int | None = None

    @property
    def missing_any(self) -> bool:
        return not bool(self.present.all())


def decode_sample(
    card: DatasetCard,
    values: Mapping[str, Any],
    seed: int | None = None,
    loc: Location = ("body",),
) -> DecodedSample:
    """Validate and convert the modality values of one sample.

    Args:
        card: Dataset card of the served bundle.
        values: Modality name -> JSON value (nested list, string or None). A name absent
            from the mapping or mapped to None is missing.
        seed: Recovery seed of the sample, passed through.
        loc: Location of the sample in the request; errors append "modalities" and the
            modality name to it.

    Returns:
        The sample in storage form.

    Raises:
        RequestInvalid: an unknown modality, a value of the wrong form, shape, dtype or
            range, NaN or infinity, a malformed base64 or PNG payload, text outside the
            alphabet or too long, or no observed modality at all. Lists every problem.
    """
    errors = []
    known = set(card.modality_names)
    for name in values:
        if name not in known:
            errors.append(
                FieldError(
                    (*loc, "modalities", str(name)),
                    f"unknown modality {name!r}; valid modalities: {card.modality_names}",
                    "extra_forbidden",
                )
            )

    inputs = {}
    present = np.zeros(card.num_modalities, dtype=bool)
    for index, spec in enumerate(card.modalities):
        value = values.get(spec.name)
        if value is None:
            inputs[spec.name] = np.zeros(spec.shape, dtype=_NUMPY_DTYPES[spec.dtype])
            continue
        try:
            inputs[spec.name] = decode_modality(spec, value)
            present[index] = True
        except _FieldProblem as problem:
            errors.append(FieldError((*loc, "modalities", spec.name), problem.msg, problem.kind))
            # Count it as observed, so a sample whose only modality is invalid does not
            # also get "every modality is missing".
            present[index] = True

    if not present.any():
        errors.append(
            FieldError(
                (*loc, "modalities"),
                "every modality is missing; send at least one of "
                f"{card.modality_names}",
                "missing",
            )
        )
    if errors:
        raise RequestInvalid(errors)
    return DecodedSample(inputs=inputs, present=present, seed=seed)


def decode_modality(spec: ModalitySpec, value: Any) -> np.ndarray:
    """Convert the JSON value of one modality to its storage form.

    Raises:
        _FieldProblem: the value does not fit the spec (module-private; `decode_sample`
            turns it into a FieldError).
    """
    if spec.kind == "image":
        if isinstance(value, str):
            return _decode_png(spec, value)
        return _decode_numbers(spec, value, "a nested list of numbers or a base64 PNG")
    if spec.kind == "text":
        if isinstance(value, str):
            return _decode_text(spec, value)
        return _decode_numbers(spec, value, "a string or a list of character indices")
    if isinstance(value, str):
        raise _FieldProblem(
            f"must be a list of {spec.shape[0]} numbers, got a string", "type_error"
        )
    return _decode_numbers(spec, value, "a list of numbers")


def _value_range(spec: ModalitySpec) -> tuple[float, float]:
    if spec.kind == "text":
        return 0.0, float(spec.vocab_size - 1)
    return float(spec.min_value), float(spec.max_value)


def _decode_numbers(spec: ModalitySpec, value: Any, forms: str) -> np.ndarray:
    if not isinstance(value, list):
        raise _FieldProblem(f"must be {forms}, got {type(value).__name__}", "type_error")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        # numpy raises ValueError on ragged nesting ("inhomogeneous shape").
        raise _FieldProblem(
            f"must be a nested list of shape {list(spec.shape)}; the nesting is ragged",
            "shape_error",
        ) from None
    # Kinds: i/u integers, f floats. Booleans, strings, nulls and objects (including
    # integers too large for int64) are rejected.
    if array.dtype.kind not in "iuf":
        raise _FieldProblem(
            f"must contain only numbers; found values of numpy kind {array.dtype.kind!r} "
            "(booleans, strings, nulls or out-of-range integers)",
            "type_error",
        )
    if array.shape != spec.shape:
        raise _FieldProblem(
            f"has shape {list(array.shape)}, expected {list(spec.shape)}", "shape_error"
        )
    numbers = array.astype(np.float64)
    if not np.isfinite(numbers).all():
        raise _FieldProblem("contains NaN or infinity; only finite numbers are valid")
    return _check_range_and_convert(spec, numbers)


def _check_range_and_convert(spec: ModalitySpec, numbers: np.ndarray) -> np.ndarray:
    storage = _NUMPY_DTYPES[spec.dtype]
    low, high = _value_range(spec)
    if np.issubdtype(storage, np.integer) and not np.array_equal(numbers, np.round(numbers)):
        raise _FieldProblem(
            f"must contain whole numbers (stored as {spec.dtype}); found fractional values",
            "dtype_error",
        )
    below, above = numbers < low, numbers > high
    if below.any() or above.any():
        found = float(numbers.min()) if below.any() else float(numbers.max())
        raise _FieldProblem(
            f"has values outside [{low:g}, {high:g}], e.g. {found:g}", "range_error"
        )
    return numbers.astype(storage)


def _decode_text(spec: ModalitySpec, text: str) -> np.ndarray:
    length = spec.shape[0]
    if len(text) > length:
        raise _FieldProblem(
            f"has {len(text)} characters, more than the maximum of {length}", "too_long"
        )
    alphabet = spec.alphabet or ""
    unknown = sorted({char for char in text if char not in alphabet})
    if unknown:
        raise _FieldProblem(
            f"has characters outside the alphabet: {unknown}; valid characters: {alphabet!r}",
            "alphabet_error",
        )
    try:
        return encode_text(text, length, alphabet)
    except ValueError as error:
        # Only reachable when the alphabet has no space for the padding.
        raise _FieldProblem(str(error)) from None


def _decode_png(spec: ModalitySpec, text: str) -> np.ndarray:
    channels, height, width = spec.shape
    expected_mode = _PNG_MODES.get(channels)
    if expected_mode is None:
        raise _FieldProblem(
            f"a {channels}-channel image cannot be sent as a PNG; send a nested list",
            "type_error",
        )
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _FieldProblem(
            "is a string but not valid base64; send a base64 PNG or a nested list of numbers",
            "base64_error",
        ) from None
    if not raw.startswith(PNG_SIGNATURE):
        raise _FieldProblem(
            "is valid base64 but not a PNG (the PNG signature is missing)", "png_error"
        )
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as image:
            # Size and mode come from the header: check them before decoding the pixels,
            # so an oversized image is rejected without being decompressed.
            if image.size != (width, height):
                raise _FieldProblem(
                    f"PNG is {image.size[0]}x{image.size[1]} pixels, expected "
                    f"{width}x{height}",
                    "shape_error",
                )
            if image.mode != expected_mode:
                raise _FieldProblem(
                    f"PNG has mode {image.mode!r}, expected {expected_mode!r} for a "
                    f"{channels}-channel image",
                    "dtype_error",
                )
            pixels = np.asarray(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise _FieldProblem(f"is not a valid PNG: {error}", "png_error") from None
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return _check_range_and_convert(spec, pixels.astype(np.float64))


def encode_png(image: np.ndarray) -> str:
    """Encode an image (C, H, W) of uint8 values, C in {1, 3}, as a base64 PNG string."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim != 3 or array.shape[0] not in _PNG_MODES:
        raise ValueError(f"expected an image of shape (1 or 3, H, W), got {array.shape}")
    pixels = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
