"""Coherence of recovered samples, on a tiny card where every modality shows the label."""

from __future__ import annotations

import pytest
import torch

from dymo_ray.data.spec import MOPOE_ALPHABET, DatasetCard, ModalitySpec
from dymo_ray.recovery import Recovery, build_recovery
from dymo_ray.recovery.coherence import (
    coherence_table,
    predict_classes,
    train_unimodal_classifiers,
)


def label_card() -> DatasetCard:
    return DatasetCard(
        name="labels",
        modalities=[
            ModalitySpec("bright", "image", (1, 8, 8), "uint8"),
            ModalitySpec("word", "text", (4,), "int64", alphabet=MOPOE_ALPHABET),
            ModalitySpec("dark", "image", (1, 8, 8), "uint8"),
        ],
        class_names=["zero", "one", "two"],
    )


def label_batch(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each modality spells the label: a flat image of brightness 100 * label (inverted for
    "dark") and the label's digit character repeated four times."""
    count = len(labels)
    level = (100 * labels).to(torch.uint8).view(count, 1, 1, 1).expand(count, 1, 8, 8)
    digit_index = torch.tensor([MOPOE_ALPHABET.index(str(int(y))) for y in labels])
    return {
        "bright": level.clone(),
        "word": digit_index.view(count, 1).expand(count, 4).clone(),
        "dark": (255 - level).clone(),
    }


class LabelCopyRecovery(Recovery):
    """Test double: rebuilds every missing modality from the first observed one's label."""

    name = "label_copy"

    def _generate(self, observed, missing, batch_size):
        first_name, first = next(iter(observed.items()))
        if first_name == "word":
            labels = torch.tensor([int(MOPOE_ALPHABET[int(i)]) for i in first[:, 0]])
        elif first_name == "bright":
            labels = first[:, 0, 0, 0].long() // 100
        else:
            labels = (255 - first[:, 0, 0, 0].long()) // 100
        rebuilt = label_batch(labels)
        return {name: rebuilt[name] for name in missing}


@pytest.fixture(scope="module")
def classifiers():
    labels = torch.arange(90) % 3
    return train_unimodal_classifiers(
        label_card(), label_batch(labels), labels, epochs=40, batch_size=30, seed=0
    )


def test_classifiers_learn_real_data(classifiers):
    labels = torch.arange(30) % 3
    inputs = label_batch(labels)
    for name, classifier in classifiers.items():
        accuracy = (predict_classes(classifier, inputs[name]) == labels).float().mean()
        assert float(accuracy) == 1.0, name


def test_perfect_recovery_full_coherence(classifiers):
    labels = torch.arange(30) % 3
    table = coherence_table(
        LabelCopyRecovery(label_card()), classifiers, label_batch(labels), labels, seed=0
    )
    assert [(row.modality, row.num_observed) for row in table.rows] == [
        ("bright", 1),
        ("bright", 2),
        ("word", 1),
        ("word", 2),
        ("dark", 1),
        ("dark", 2),
    ]
    assert all(row.accuracy == 1.0 for row in table.rows)
    assert table.real_accuracy == {"bright": 1.0, "word": 1.0, "dark": 1.0}


def test_subset_and_sample_counts(classifiers):
    """With 3 modalities, a target has 2 observed subsets of size 1 and 1 of size 2."""
    labels = torch.arange(30) % 3
    table = coherence_table(
        LabelCopyRecovery(label_card()), classifiers, label_batch(labels), labels, batch_size=7
    )
    counts = {(row.modality, row.num_observed): row.num_subsets for row in table.rows}
    assert counts[("word", 1)] == 2
    assert counts[("word", 2)] == 1
    assert table.rows[0].num_samples == 2 * 30


def test_zeros_recovery_matches_constant_prediction(classifiers):
    """Zeros make each classifier predict one class c, so coherence = share of labels == c."""
    card = label_card()
    labels = torch.tensor([0, 1, 2, 2, 1, 2])
    table = coherence_table(build_recovery("zeros", card), classifiers, label_batch(labels), labels)
    zeros = build_recovery("zeros", card).recover(
        label_batch(labels), torch.tensor([[True, False, False]] * 6)
    )
    for name in ("word", "dark"):
        predicted = predict_classes(classifiers[name], zeros[name])
        expected = float((labels == predicted).float().mean())
        for row in table.rows:
            if row.modality == name:
                assert row.accuracy == pytest.approx(expected), (name, row.num_observed)


def test_subset_cap_limits_evaluations(classifiers):
    labels = torch.arange(6) % 3
    table = coherence_table(
        LabelCopyRecovery(label_card()),
        classifiers,
        label_batch(labels),
        labels,
        max_subsets_per_size=1,
    )
    scored = sum(row.num_subsets for row in table.rows)
    # One subset of size 1 (2 targets) and one of size 2 (1 target).
    assert scored == 3


def test_table_formats_and_flattens(classifiers):
    labels = torch.arange(6) % 3
    table = coherence_table(
        LabelCopyRecovery(label_card()), classifiers, label_batch(labels), labels
    )
    text = table.format()
    assert text.splitlines()[0].split() == ["modality", "real", "k=1", "k=2"]
    assert "word" in text
    assert table.metrics()["coherence/word/k2"] == 1.0
    assert table.metrics()["classifier/dark"] == 1.0
    assert table.to_dicts()[0]["real_accuracy"] == 1.0


def test_mopoe_coherence_rows_valid(classifiers):
    card = label_card()
    recovery = build_recovery("mopoe", card, latent_dim=4, hidden_dim=16)
    labels = torch.arange(12) % 3
    table = coherence_table(recovery, classifiers, label_batch(labels), labels, seed=1)
    assert len(table.rows) == 6
    assert all(0.0 <= row.accuracy <= 1.0 for row in table.rows)
