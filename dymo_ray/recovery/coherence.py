"""Coherence of recovered modalities, measured with unimodal classifiers.

For each modality a small classifier is trained on real data of that modality alone. The
coherence of a recovery model for target modality m and k observed modalities is that
classifier's accuracy on m recovered from observed subsets of size k that exclude m. The
classifier's accuracy on the real test data of m is the reference a good recovery approaches.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dymo_ray.data.spec import DatasetCard, ModalitySpec
from dymo_ray.recovery.architectures import build_trunk
from dymo_ray.recovery.base import Recovery, seeded_rng
from dymo_ray.recovery.codec import to_model_form


class UnimodalClassifier(nn.Module):
    """Classifier of one modality: storage-form input (B, *shape) -> class logits (B, C).

    It reuses the recovery encoder's trunk for the modality kind, followed by a linear layer.
    """

    def __init__(self, spec: ModalitySpec, num_classes: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.spec = spec
        self.trunk = build_trunk(spec, hidden_dim)
        self.head = nn.Linear(hidden_dim, num_classes)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(to_model_form(self.spec, values)))


def train_unimodal_classifiers(
    card: DatasetCard,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    epochs: int = 3,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> dict[str, UnimodalClassifier]:
    """Train one classifier per modality on real, complete training data.

    Args:
        card: The dataset card.
        inputs: Storage-form training data, one tensor (N, *shape) per modality.
        labels: Int64 class indices (N,).
        epochs: Passes over the data per classifier.
        batch_size: Samples per step.
        learning_rate: Adam learning rate.
        seed: Seed of initialisation and shuffling; the global RNG state is restored after.

    Returns:
        Classifiers keyed by modality name, in eval mode.
    """
    classifiers = {}
    num_samples = len(labels)
    for index, spec in enumerate(card.modalities):
        with seeded_rng(seed + index, torch.device("cpu")):
            classifier = UnimodalClassifier(spec, card.num_classes)
            optimizer = torch.optim.Adam(classifier.parameters(), lr=learning_rate)
            classifier.train()
            for _ in range(epochs):
                order = torch.randperm(num_samples)
                for start in range(0, num_samples, batch_size):
                    rows = order[start : start + batch_size]
                    logits = classifier(inputs[spec.name][rows])
                    loss = F.cross_entropy(logits, labels[rows])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        classifier.eval()
        classifiers[spec.name] = classifier
    return classifiers


@torch.no_grad()
def predict_classes(
    classifier: nn.Module, values: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """Return the predicted class (N,) of storage-form samples (N, *shape)."""
    classifier.eval()
    predictions = [
        classifier(values[start : start + batch_size]).argmax(dim=-1)
        for start in range(0, len(values), batch_size)
    ]
    return torch.cat(predictions)


@dataclass
class CoherenceRow:
    """Coherence of one target modality at one number of observed modalities.

    Attributes:
        modality: The recovered (target) modality.
        num_observed: k, the size of the observed subsets it was recovered from.
        accuracy: Classifier accuracy on the recovered samples, over all evaluated subsets.
        num_subsets: Observed subsets of size k evaluated.
        num_samples: Recovered samples scored (test rows times subsets).
    """

    modality: str
    num_observed: int
    accuracy: float
    num_subsets: int
    num_samples: int


@dataclass
class CoherenceTable:
    """Coherence rows plus each classifier's accuracy on real test data."""

    rows: list[CoherenceRow]
    real_accuracy: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Return flat metric names for tracking, e.g. "coherence/m0/k2" and "classifier/m0"."""
        values = {f"classifier/{name}": acc for name, acc in self.real_accuracy.items()}
        for row in self.rows:
            values[f"coherence/{row.modality}/k{row.num_observed}"] = row.accuracy
        return values

    def to_dicts(self) -> list[dict]:
        """Return the rows as dicts, with the real-data accuracy of the modality added."""
        return [
            {**row.__dict__, "real_accuracy": self.real_accuracy.get(row.modality)}
            for row in self.rows
        ]

    def format(self) -> str:
        """Return a fixed-width text table: one row per modality, one column per k."""
        modalities = list(dict.fromkeys(row.modality for row in self.rows))
        counts = sorted({row.num_observed for row in self.rows})
        cells = {(row.modality, row.num_observed): row.accuracy for row in self.rows}
        name_width = max([len("modality"), *(len(name) for name in modalities)])
        header = f"{'modality':<{name_width}}  {'real':>6}" + "".join(
            f"  {f'k={k}':>6}" for k in counts
        )
        lines = [header, "-" * len(header)]
        for name in modalities:
            real = self.real_accuracy.get(name)
            line = f"{name:<{name_width}}  {_percent(real):>6}"
            line += "".join(f"  {_percent(cells.get((name, k))):>6}" for k in counts)
            lines.append(line)
        lines.append(
            "real: classifier accuracy on real test data. k=j: accuracy on the modality "
            "recovered from j observed modalities. -: not evaluated."
        )
        return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


@torch.no_grad()
def coherence_table(
    recovery: Recovery,
    classifiers: dict[str, nn.Module],
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    seed: int = 0,
    max_subsets_per_size: int | None = None,
    batch_size: int = 512,
) -> CoherenceTable:
    """Measure coherence per target modality and number of observed modalities.

    Every proper, non-empty observed subset S is evaluated once (or at most
    `max_subsets_per_size` of each size, drawn with `seed`): all test rows are recovered with
    S observed, and every modality outside S is scored with its classifier.

    Args:
        recovery: The recovery model.
        classifiers: Unimodal classifiers keyed by modality name (all modalities).
        inputs: Real, complete storage-form test data, one tensor (N, *shape) per modality.
        labels: Int64 class indices (N,).
        seed: Seed of the recoveries and of the subset sampling.
        max_subsets_per_size: Cap on the subsets evaluated per size; None = all.
        batch_size: Rows per recovery call.

    Returns:
        A `CoherenceTable` with one row per (modality, k) for k = 1 .. M-1.
    """
    card = recovery.card
    names = card.modality_names
    num_modalities = len(names)
    sampler = random.Random(seed)
    correct: dict[tuple[str, int], int] = {}
    scored: dict[tuple[str, int], int] = {}
    subsets_seen: dict[tuple[str, int], int] = {}

    for size in range(1, num_modalities):
        subsets = list(itertools.combinations(range(num_modalities), size))
        if max_subsets_per_size is not None and len(subsets) > max_subsets_per_size:
            subsets = sorted(sampler.sample(subsets, max_subsets_per_size))
        for subset in subsets:
            targets = [names[i] for i in range(num_modalities) if i not in subset]
            present_row = torch.tensor([i in subset for i in range(num_modalities)])
            hits = {name: 0 for name in targets}
            for start in range(0, len(labels), batch_size):
                chunk = {name: inputs[name][start : start + batch_size] for name in names}
                chunk_labels = labels[start : start + batch_size]
                present = present_row.expand(len(chunk_labels), -1).clone()
                completed = recovery.recover(chunk, present, seed=seed + start)
                for name in targets:
                    predicted = predict_classes(classifiers[name], completed[name], batch_size)
                    hits[name] += int((predicted.cpu() == chunk_labels.cpu()).sum())
            for name in targets:
                key = (name, size)
                correct[key] = correct.get(key, 0) + hits[name]
                scored[key] = scored.get(key, 0) + len(labels)
                subsets_seen[key] = subsets_seen.get(key, 0) + 1

    rows = [
        CoherenceRow(
            modality=name,
            num_observed=size,
            accuracy=correct[(name, size)] / scored[(name, size)],
            num_subsets=subsets_seen[(name, size)],
            num_samples=scored[(name, size)],
        )
        for name in names
        for size in range(1, num_modalities)
        if (name, size) in scored
    ]
    real_accuracy = {
        name: float(
            (predict_classes(classifiers[name], inputs[name], batch_size).cpu() == labels.cpu())
            .float()
            .mean()
        )
        for name in names
    }
    return CoherenceTable(rows=rows, real_accuracy=real_accuracy)
