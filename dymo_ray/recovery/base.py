"""The `Recovery` interface: complete a batch by generating its missing modalities.

A recovery model receives a batch in storage form (a dict of modality tensors in card order) and
`present` (B, M), True = observed. It returns the completed batch, in which:

- observed modalities are the inputs, unchanged bit for bit;
- every missing modality of a row is generated from that row's observed modalities only;
- rows are grouped by observed set, with one generation call per distinct set;
- the values stored in a missing slot are never read, so they cannot change the output;
- with a seed, the output is reproducible and the global RNGs (torch CPU, the model's CUDA
  device, numpy) are left as they were.

Output dtypes equal the storage dtypes of the card (uint8 images, int64 text indices, float32
tabular vectors). A generated image is clamped to [min_value, max_value] and rounded, so a
completed batch passes the same checks, schemas and Parquet columns as a stored one.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import torch

from dymo_ray.data.spec import DatasetCard, ModalitySpec
from dymo_ray.subsets import subset_index

_TORCH_DTYPES = {"uint8": torch.uint8, "int64": torch.int64, "float32": torch.float32}


def storage_dtype(spec: ModalitySpec) -> torch.dtype:
    """Return the torch dtype a modality is stored in."""
    return _TORCH_DTYPES[spec.dtype]


class Recovery(ABC):
    """A frozen model that generates the missing modalities of a batch.

    Subclasses implement `_generate`, which receives the observed modalities of one group of
    rows (all with the same observed set) and returns the missing ones. Validation, grouping,
    seeding and copying the observed values live here, so every subclass gets the same
    contract.

    Attributes:
        card: Dataset card the model was built for; it fixes names, shapes and dtypes.
        name: Model name as accepted by `build_recovery` (e.g. "mopoe", "zeros").
    """

    name: str = "recovery"

    def __init__(self, card: DatasetCard) -> None:
        self.card = card

    @property
    def device(self) -> torch.device:
        """Device the model's parameters live on (CPU for parameter-free baselines)."""
        return torch.device("cpu")

    def config_dict(self) -> dict:
        """Return the JSON-serialisable configuration that rebuilds this model."""
        return {}

    @abstractmethod
    def _generate(
        self, observed: dict[str, torch.Tensor], missing: list[str], batch_size: int
    ) -> dict[str, torch.Tensor]:
        """Generate the `missing` modalities of one group of rows.

        Args:
            observed: Storage-form tensors of the observed modalities only, on `self.device`.
            missing: Names of the modalities to generate, in card order (never empty).
            batch_size: Number of rows in the group.

        Returns:
            One tensor per name in `missing`, shape (batch_size, *spec.shape), in the
            storage dtype and value range of that modality.
        """

    def recover(
        self,
        inputs: dict[str, torch.Tensor],
        present: torch.Tensor,
        seed: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return the batch with every missing modality generated from the observed ones.

        Args:
            inputs: One tensor per modality of the card, keyed by name, each of shape
                (B, *spec.shape) in the storage dtype (uint8 image, int64 text, float32
                tabular). Values in missing slots are ignored.
            present: Bool tensor (B, M) in card order, True = observed. Every row needs at
                least one observed modality.
            seed: Seed for the generation. With a seed the output is reproducible and the
                global RNG state is restored afterwards; with None the global RNGs are used.

        Returns:
            The completed batch: one tensor per modality, same shapes and dtypes as the
            inputs, on the device of the inputs. Observed rows are copies of the inputs.

        Raises:
            ValueError: modality names or shapes differ from the card, `present` has the
                wrong shape, a row of `present` has nothing observed, or an observed text
                index is outside the alphabet.
            TypeError: a tensor is not in its modality's storage dtype, or `present` is not
                bool.
        """
        batch_size = check_batch(self.card, inputs, present)
        output = {name: inputs[name].clone() for name in self.card.modality_names}
        if batch_size == 0 or bool(present.all()):
            return output

        present_cpu = present.detach().to("cpu")
        group_ids = subset_index(present_cpu)
        for group_id in torch.unique(group_ids).tolist():
            rows = torch.nonzero(group_ids == group_id).squeeze(1)
            observed_mask = present_cpu[rows[0]]
            missing = [
                name for name, seen in zip(self.card.modality_names, observed_mask) if not seen
            ]
            if not missing:
                continue
            observed = {
                name: inputs[name][rows.to(inputs[name].device)].to(self.device)
                for name, seen in zip(self.card.modality_names, observed_mask)
                if seen
            }
            with seeded_rng(group_seed(seed, group_id), self.device):
                generated = self._generate(observed, missing, len(rows))
            for name in missing:
                values = generated[name]
                expected = (len(rows), *self.card.modality(name).shape)
                assert tuple(values.shape) == expected, (
                    f"{type(self).__name__} generated {name!r} with shape "
                    f"{tuple(values.shape)}, expected {expected}"
                )
                target = output[name]
                target[rows.to(target.device)] = values.to(target.device, target.dtype)
        return output


def check_batch(
    card: DatasetCard, inputs: dict[str, torch.Tensor], present: torch.Tensor
) -> int:
    """Check a storage-form batch and its `present` mask against a card.

    Only observed rows are checked for value ranges, because missing slots may hold
    anything.

    Returns:
        The batch size B.

    Raises:
        ValueError: names, shapes or value ranges do not match the card, or a row of
            `present` has nothing observed.
        TypeError: a dtype does not match the card, or `present` is not bool.
    """
    names = card.modality_names
    if not isinstance(inputs, dict):
        raise TypeError(f"inputs must be a dict of tensors keyed by {names}, got {type(inputs)}")
    if sorted(inputs) != sorted(names):
        raise ValueError(
            f"input modalities {sorted(inputs)} do not match dataset {card.name!r}: "
            f"expected {names}"
        )
    if not isinstance(present, torch.Tensor) or present.dtype != torch.bool:
        kind = present.dtype if isinstance(present, torch.Tensor) else type(present)
        raise TypeError(f"present must be a bool tensor (B, M), True = observed; got {kind}")
    if present.dim() != 2 or present.shape[1] != len(names):
        raise ValueError(
            f"present must have shape (B, {len(names)}) for modalities {names}, "
            f"got {tuple(present.shape)}"
        )
    batch_size = present.shape[0]

    for spec in card.modalities:
        values = inputs[spec.name]
        expected_shape = (batch_size, *spec.shape)
        if tuple(values.shape) != expected_shape:
            raise ValueError(
                f"modality {spec.name!r} has shape {tuple(values.shape)}, expected "
                f"{expected_shape} (batch size from present, sample shape from the card)"
            )
        if values.dtype != storage_dtype(spec):
            raise TypeError(
                f"modality {spec.name!r} has dtype {values.dtype}, expected the storage dtype "
                f"{storage_dtype(spec)}; convert it before recovery"
            )

    empty_rows = torch.nonzero(~present.any(dim=1)).flatten().tolist()
    if empty_rows:
        listed = empty_rows[:10]
        raise ValueError(
            f"rows {listed}{' ...' if len(empty_rows) > 10 else ''} of present have no observed "
            "modality; recovery needs at least one observed modality per row"
        )

    for index, spec in enumerate(card.modalities):
        if spec.kind != "text":
            continue
        seen = inputs[spec.name][present[:, index].to(inputs[spec.name].device)]
        if seen.numel() and (int(seen.min()) < 0 or int(seen.max()) >= spec.vocab_size):
            raise ValueError(
                f"text modality {spec.name!r} has character indices outside "
                f"[0, {spec.vocab_size}) in observed rows"
            )
    return batch_size


def group_seed(seed: int | None, group_id: int) -> int | None:
    """Derive the seed of one observed-set group from the call's seed.

    Each group gets its own stream, so the recovery of a group does not depend on which other
    observed sets share the batch.
    """
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), int(group_id)]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the body under `seed`, restoring the global torch and numpy RNG states after.

    multivae samples with the global torch RNG (`rsample`) and, for MMVAE+ and CMVAE, picks
    the conditioning expert with `np.random.choice`, so both global states are seeded here
    and restored on exit. With `seed=None` the body runs on the global RNGs untouched.
    """
    if seed is None:
        yield
        return
    cuda_devices = []
    if device.type == "cuda":
        cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            torch.random.default_generator.manual_seed(seed)
            for index in cuda_devices:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(numpy_state)
