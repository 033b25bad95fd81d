"""Character-index encoding of text modalities over MoPoE's alphabet."""

from __future__ import annotations

import numpy as np
import pytest

from dymo_ray.data.builders import DIGIT_WORDS, digit_text_field
from dymo_ray.data.spec import MOPOE_ALPHABET
from dymo_ray.data.text import decode_text, encode_text


def test_alphabet_has_71_characters():
    assert len(MOPOE_ALPHABET) == 71
    assert MOPOE_ALPHABET.index(" ") == 69


def test_word_round_trip():
    for label, word in enumerate(DIGIT_WORDS):
        field = digit_text_field(label, 1)
        indices = encode_text(field, 8)
        assert indices.dtype == np.int64
        assert indices.shape == (8,)
        assert decode_text(indices) == field
        assert decode_text(indices).strip() == word


def test_encode_hand_values():
    # 'a' is 0, 'z' is 25, '0' is 26, a space is 69.
    assert encode_text("az0", 4).tolist() == [0, 25, 26, 69]


def test_dash_encodes_to_first_index():
    """The dash appears twice in MoPoE's alphabet (36 and 59); encoding uses 36."""
    assert MOPOE_ALPHABET.index("-") == 36
    assert MOPOE_ALPHABET.rindex("-") == 59
    assert encode_text("-", 1).tolist() == [36]
    assert decode_text([59]) == "-"


def test_text_field_places_word():
    assert digit_text_field(3, 0) == "three   "
    assert digit_text_field(3, 3) == "   three"
    assert digit_text_field(1, 5) == "     one"


def test_text_field_rejects_overflow():
    with pytest.raises(ValueError, match="offset 4 does not fit 'three'"):
        digit_text_field(3, 4)


def test_encode_rejects_unknown_character():
    with pytest.raises(ValueError, match=r"characters outside the alphabet: \['T'\]"):
        encode_text("Two", 8)


def test_encode_rejects_long_text():
    with pytest.raises(ValueError, match="more than length 3"):
        encode_text("four", 3)


def test_decode_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"character indices \[71\] are outside \[0, 71\)"):
        decode_text([0, 71])
