"""Request decoding: storage-form conversion and one named error per invalid field."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from dymo_ray.data.spec import MOPOE_ALPHABET, DatasetCard, ModalitySpec
from dymo_ray.data.text import encode_text
from dymo_ray.serve.decode import RequestInvalid, decode_sample, encode_png


@pytest.fixture(scope="module")
def card() -> DatasetCard:
    modalities = [
        ModalitySpec("grey", "image", (1, 4, 3), "uint8"),
        ModalitySpec("colour", "image", (3, 2, 2), "uint8"),
        ModalitySpec("text", "text", (5,), "int64", max_value=70, alphabet=MOPOE_ALPHABET),
        ModalitySpec("table", "tabular", (2,), "float32", min_value=-1.0, max_value=1.0),
    ]
    return DatasetCard("tiny", modalities, ["a", "b"])


def grey_image() -> np.ndarray:
    return np.arange(12, dtype=np.uint8).reshape(1, 4, 3) * 20


def png_of(array: np.ndarray, mode: str) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def only_error(card, values):
    with pytest.raises(RequestInvalid) as caught:
        decode_sample(card, values)
    assert len(caught.value.errors) == 1, caught.value.errors
    return caught.value.errors[0]


def test_decode_list_and_missing(card):
    sample = decode_sample(card, {"grey": grey_image().tolist(), "table": [0.5, -1.0]})
    assert sample.present.tolist() == [True, False, False, True]
    assert sample.inputs["grey"].dtype == np.uint8
    np.testing.assert_array_equal(sample.inputs["grey"], grey_image())
    assert sample.inputs["table"].dtype == np.float32
    assert sample.inputs["colour"].shape == (3, 2, 2)
    assert not sample.inputs["colour"].any()


def test_decode_png_equals_list(card):
    colour = np.arange(12, dtype=np.uint8).reshape(3, 2, 2) * 7
    sample = decode_sample(
        card,
        {"grey": encode_png(grey_image()), "colour": "data:image/png;base64," + encode_png(colour)},
    )
    np.testing.assert_array_equal(sample.inputs["grey"], grey_image())
    np.testing.assert_array_equal(sample.inputs["colour"], colour)


def test_decode_text_pads_with_spaces(card):
    sample = decode_sample(card, {"text": "two"})
    np.testing.assert_array_equal(sample.inputs["text"], encode_text("two  ", 5))


def test_decode_text_indices(card):
    sample = decode_sample(card, {"text": [0, 1, 2, 3, 70]})
    assert sample.inputs["text"].tolist() == [0, 1, 2, 3, 70]


ROWS = [[1, 2, 3]] * 4
BAD_VALUES = [
    ("shape", {"grey": [ROWS[:3]]}, "grey", "has shape [1, 3, 3], expected [1, 4, 3]"),
    ("ragged", {"grey": [[[1, 2, 3]] * 3 + [[1, 2]]]}, "grey", "ragged"),
    ("fraction", {"grey": [[[1.5, 2, 3]] + ROWS[:3]]}, "grey", "whole numbers"),
    ("range", {"grey": [[[256, 2, 3]] + ROWS[:3]]}, "grey", "outside [0, 255]"),
    ("negative", {"grey": [[[-1, 2, 3]] + ROWS[:3]]}, "grey", "outside [0, 255]"),
    ("strings", {"grey": [[["1", 2, 3]] + ROWS[:3]]}, "grey", "only numbers"),
    ("booleans", {"table": [True, False]}, "table", "only numbers"),
    ("nulls inside", {"table": [None, 0.5]}, "table", "only numbers"),
    ("nan", {"table": [float("nan"), 0.5]}, "table", "NaN"),
    ("infinity", {"table": [float("inf"), 0.5]}, "table", "NaN or infinity"),
    ("tabular range", {"table": [2.0, 0.5]}, "table", "outside [-1, 1]"),
    ("tabular string", {"table": "0.5,0.5"}, "table", "got a string"),
    ("not a list", {"grey": 5}, "grey", "got int"),
    ("bad base64", {"grey": "not base64!"}, "grey", "not valid base64"),
    ("not png", {"grey": base64.b64encode(b"GIF89a....").decode()}, "grey", "not a PNG"),
    ("truncated png", {"grey": base64.b64encode(b"\x89PNG\r\n\x1a\n\0\0").decode()}, "grey",
     "not a valid PNG"),
    ("png size", {"grey": png_of(np.zeros((5, 3), np.uint8), "L")}, "grey",
     "PNG is 3x5 pixels, expected 3x4"),
    ("png mode", {"grey": png_of(np.zeros((4, 3), np.uint8), "RGB")}, "grey",
     "mode 'RGB', expected 'L'"),
    ("text alphabet", {"text": "TWO"}, "text", "outside the alphabet"),
    ("text length", {"text": "twenty"}, "text", "6 characters, more than the maximum of 5"),
    ("text index", {"text": [0, 1, 2, 3, 71]}, "text", "outside [0, 70]"),
]


@pytest.mark.parametrize("values, field, message", [case[1:] for case in BAD_VALUES],
                         ids=[case[0] for case in BAD_VALUES])
def test_decode_bad_value_names_field(card, values, field, message):
    error = only_error(card, values)
    assert error.loc == ("body", "modalities", field)
    assert message in error.msg


def test_decode_unknown_modality(card):
    error = only_error(card, {"grey": grey_image().tolist(), "audio": [1]})
    assert error.loc == ("body", "modalities", "audio")
    assert "valid modalities" in error.msg


def test_decode_everything_missing(card):
    error = only_error(card, {"grey": None})
    assert error.loc == ("body", "modalities")
    assert "every modality is missing" in error.msg


def test_decode_reports_every_problem(card):
    with pytest.raises(RequestInvalid) as caught:
        decode_sample(card, {"text": "TWO", "table": [9.0, 0.0]}, loc=("body", "samples", 3))
    locations = [error.loc for error in caught.value.errors]
    assert locations == [
        ("body", "samples", 3, "modalities", "text"),
        ("body", "samples", 3, "modalities", "table"),
    ]
