"""Enumeration of modality subsets, the unit of incomplete-data training and selection.

A subset is a bool vector over the modalities in card order, True = the modality is fed to
the fusion network (the same convention as `present`: True = observed). The empty subset is
never enumerated: a sample always has at least one observed modality.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import torch


@lru_cache(maxsize=16)
def _subset_tuples(num_modalities: int) -> tuple[tuple[bool, ...], ...]:
    rows = []
    for size in range(1, num_modalities + 1):
        for members in combinations(range(num_modalities), size):
            rows.append(tuple(i in members for i in range(num_modalities)))
    return tuple(rows)


def all_subsets(num_modalities: int) -> torch.Tensor:
    """Return every non-empty subset, by increasing size, then lexicographically.

    Args:
        num_modalities: M >= 1.

    Returns:
        Bool tensor (2^M - 1, M). For M = 3 the rows are {0}, {1}, {2}, {0,1}, {0,2},
        {1,2}, {0,1,2}.

    Raises:
        ValueError: `num_modalities` < 1.
    """
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
    return torch.tensor(_subset_tuples(num_modalities), dtype=torch.bool)


def num_subsets(num_modalities: int) -> int:
    """Return 2^M - 1, the number of non-empty subsets."""
    return 2**num_modalities - 1


def subset_index(subsets: torch.Tensor) -> torch.Tensor:
    """Map subset rows to their index in `all_subsets` order.

    Args:
        subsets: Bool tensor (..., M), no row empty.

    Returns:
        Long tensor (...) of indices into `all_subsets(M)`.

    Raises:
        ValueError: a row is empty.
    """
    num_modalities = subsets.shape[-1]
    if bool((~subsets.any(dim=-1)).any()):
        raise ValueError("a subset row is empty; every subset needs at least one modality")
    weights = 2 ** torch.arange(num_modalities, device=subsets.device)
    codes = (subsets.long() * weights).sum(dim=-1)
    table = _code_to_index(num_modalities).to(subsets.device)
    return table[codes]


@lru_cache(maxsize=16)
def _code_to_index(num_modalities: int) -> torch.Tensor:
    # Bit i of a code is modality i; position 0 (the empty subset) maps to -1.
    table = torch.full((2**num_modalities,), -1, dtype=torch.long)
    weights = 2 ** torch.arange(num_modalities)
    codes = (all_subsets(num_modalities).long() * weights).sum(dim=-1)
    table[codes] = torch.arange(len(codes))
    return table


def subset_name(subset: torch.Tensor | list[bool], modality_names: list[str]) -> str:
    """Return a readable key such as "m0+m3" for a subset row (used in metric names)."""
    members = [name for name, used in zip(modality_names, list(subset)) if bool(used)]
    return "+".join(members)
