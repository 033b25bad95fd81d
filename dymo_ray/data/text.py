"""Encoding of short strings as character indices over a fixed alphabet (text modalities)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dymo_ray.data.spec import MOPOE_ALPHABET


def encode_text(text: str, length: int, alphabet: str = MOPOE_ALPHABET) -> np.ndarray:
    """Encode `text` as character indices, padded on the right with spaces to `length`.

    A character that appears more than once in the alphabet (the dash in MoPoE's alphabet)
    is encoded as its first index.

    Args:
        text: String of at most `length` characters, each in `alphabet`.
        length: Number of positions in the output.
        alphabet: Characters; index i encodes alphabet[i]. Must contain a space when
            `text` is shorter than `length`.

    Returns:
        Int64 array (length,).

    Raises:
        ValueError: `text` is longer than `length` or has a character outside `alphabet`.
    """
    if len(text) > length:
        raise ValueError(f"text {text!r} has {len(text)} characters, more than length {length}")
    padded = text.ljust(length)
    unknown = sorted({char for char in padded if char not in alphabet})
    if unknown:
        raise ValueError(
            f"text {text!r} has characters outside the alphabet: {unknown}; "
            f"valid characters: {alphabet!r}"
        )
    return np.array([alphabet.index(char) for char in padded], dtype=np.int64)


def decode_text(indices: Sequence[int] | np.ndarray, alphabet: str = MOPOE_ALPHABET) -> str:
    """Decode character indices back to a string (padding spaces are kept).

    Raises:
        ValueError: an index is outside [0, len(alphabet)).
    """
    values = [int(i) for i in np.asarray(indices).reshape(-1)]
    bad = sorted({i for i in values if not 0 <= i < len(alphabet)})
    if bad:
        raise ValueError(f"character indices {bad} are outside [0, {len(alphabet)})")
    return "".join(alphabet[i] for i in values)
