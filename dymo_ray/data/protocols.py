"""Missingness protocols: named, seeded rules that hide modalities of a complete split.

Protocols are written as strings, the same ones in configs, on the command line and in
metric names:

- `complete`: every modality is observed.
- `random:<eta>`: each modality of each row is missing independently with probability eta.
  A row left with no observed modality gets one modality back, drawn uniformly from all M,
  so every row keeps at least one observed modality.
- `drop:<a>+<b>`: the named modalities are missing in every row; at least one must remain.

Expected missing fraction under `random:eta` with the put-back rule. Let K be the number
of missing modalities of a row before the put-back, K ~ Binomial(M, eta), so E[K] = M eta.
The put-back changes K only when K = M (probability eta^M), and lowers it by exactly one.
So E[missing after] = M eta - eta^M, and the expected missing fraction is

    eta - eta^M / M

e.g. 0.6 - 0.6^5 / 5 = 0.584448 for eta = 0.6 and M = 5 (`expected_missing_fraction`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

from dymo_ray.data.spec import DatasetCard

PROTOCOL_FORMS = ("complete", "random:<eta> with 0 <= eta <= 1", "drop:<a>+<b>")
DEFAULT_RANDOM_RATES = (0.2, 0.4, 0.6, 0.8)
# Cards with at most this many modalities get every drop pattern as default protocols, 6
# for 3 modalities. Larger cards get `random:<eta>` because 2^M - 2 patterns grow fast.
MAX_MODALITIES_FOR_DROP_DEFAULTS = 3


@dataclass(frozen=True)
class Protocol:
    """A parsed missingness protocol.

    Attributes:
        name: Canonical protocol string, e.g. "random:0.6" or "drop:mnist+text" (dropped
            modalities in card order). Seeds and metric names use it.
        kind: "complete", "random" or "drop".
        modality_names: The modalities in card order.
        eta: Missing probability per modality (kind "random" only).
        dropped: Names of the modalities missing in every row (kind "drop" only).
    """

    name: str
    kind: str
    modality_names: tuple[str, ...]
    eta: float | None = None
    dropped: tuple[str, ...] = ()

    def apply(self, num_rows: int, seed: int) -> torch.Tensor:
        """Draw the presence mask of `num_rows` rows.

        The random stream is seeded with `seed` and a SHA-256 digest of `name`, so two
        protocols with one seed draw independent masks and a run is reproducible across
        processes (Python's `hash` of a string changes with every process).

        Args:
            num_rows: N >= 0.
            seed: Non-negative integer seed.

        Returns:
            Bool tensor (N, M) in card order, True = observed. Every row has at least one
            observed modality.

        Raises:
            ValueError: `num_rows` or `seed` is negative.
        """
        if num_rows < 0:
            raise ValueError(f"num_rows must be >= 0, got {num_rows}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        num_modalities = len(self.modality_names)
        present = np.ones((num_rows, num_modalities), dtype=bool)
        if self.kind == "drop":
            for name in self.dropped:
                present[:, self.modality_names.index(name)] = False
        elif self.kind == "random":
            rng = np.random.default_rng([seed, _stable_digest(self.name)])
            present = rng.random((num_rows, num_modalities)) >= self.eta
            # The put-back draw is made for every row, used or not, so the rows' draws do
            # not depend on which other rows came out empty.
            put_back = rng.integers(0, num_modalities, size=num_rows)
            empty = np.flatnonzero(~present.any(axis=1))
            present[empty, put_back[empty]] = True
        assert present.any(axis=1).all(), f"protocol {self.name} left a row with nothing observed"
        return torch.from_numpy(present)

    def expected_missing_fraction(self) -> float:
        """Return the expected fraction of missing (row, modality) entries."""
        num_modalities = len(self.modality_names)
        if self.kind == "complete":
            return 0.0
        if self.kind == "drop":
            return len(self.dropped) / num_modalities
        assert self.eta is not None, "a random protocol needs eta"
        return expected_missing_fraction(self.eta, num_modalities)


def expected_missing_fraction(eta: float, num_modalities: int) -> float:
    """Return eta - eta^M / M, the expected missing fraction of `random:eta` with put-back."""
    return eta - eta**num_modalities / num_modalities


def _stable_digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def _invalid(text: str, reason: str, modality_names: Sequence[str]) -> ValueError:
    return ValueError(
        f"invalid missingness protocol {text!r}: {reason}. Valid forms: "
        f"{', '.join(PROTOCOL_FORMS)}; modality names: {list(modality_names)}"
    )


def parse_protocol(text: str, modality_names: Sequence[str]) -> Protocol:
    """Parse a protocol string for a dataset with the given modalities.

    Args:
        text: "complete", "random:<eta>" or "drop:<a>+<b>" (surrounding spaces ignored).
        modality_names: The card's modality names, in card order.

    Returns:
        The protocol, with a canonical `name`.

    Raises:
        ValueError: an unknown kind, an unknown or repeated modality, an empty drop list,
            a drop of every modality, or an eta that is not a number in [0, 1]. The message
            lists the valid forms and the modality names.
    """
    names = tuple(modality_names)
    if not names:
        raise ValueError("a protocol needs at least one modality name")
    stripped = text.strip()
    kind, separator, argument = stripped.partition(":")
    kind = kind.strip()

    if kind == "complete":
        if separator:
            raise _invalid(text, "'complete' takes no argument", names)
        return Protocol(name="complete", kind="complete", modality_names=names)

    if kind == "random":
        try:
            eta = float(argument)
        except ValueError:
            raise _invalid(text, f"eta {argument.strip()!r} is not a number", names) from None
        if not 0.0 <= eta <= 1.0:  # also false for NaN
            raise _invalid(text, f"eta {eta} is outside [0, 1]", names)
        return Protocol(name=f"random:{eta:g}", kind="random", modality_names=names, eta=eta)

    if kind == "drop":
        parts = [part.strip() for part in argument.split("+")]
        if not separator or any(not part for part in parts):
            raise _invalid(text, "the drop list is empty or has an empty name", names)
        unknown = [part for part in parts if part not in names]
        if unknown:
            raise _invalid(text, f"unknown modalities {unknown}", names)
        repeated = sorted({part for part in parts if parts.count(part) > 1})
        if repeated:
            raise _invalid(text, f"modalities {repeated} are listed more than once", names)
        if len(parts) == len(names):
            raise _invalid(text, "it drops every modality; at least one must stay observed", names)
        dropped = tuple(name for name in names if name in parts)
        return Protocol(
            name="drop:" + "+".join(dropped), kind="drop", modality_names=names, dropped=dropped
        )

    raise _invalid(text, f"unknown kind {kind!r}", names)


def default_protocols(card: DatasetCard) -> list[str]:
    """Return the protocols an evaluation runs by default on a dataset (without `complete`).

    Cards with at most 3 modalities (e.g. mdt) get every drop pattern that leaves at least
    one modality, by number of dropped modalities, then in card order. Larger cards (e.g.
    polymnist) get `random:0.2`, `random:0.4`, `random:0.6` and `random:0.8`.
    """
    names = card.modality_names
    if len(names) > MAX_MODALITIES_FOR_DROP_DEFAULTS:
        return [f"random:{eta:g}" for eta in DEFAULT_RANDOM_RATES]
    patterns = []
    for size in range(1, len(names)):
        for dropped in combinations(names, size):
            patterns.append("drop:" + "+".join(dropped))
    return patterns
