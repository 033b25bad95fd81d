"""DyMo on real PolyMNIST: it must reject uninformative recoveries and use true ones.

A backbone is trained in one process (the training loop's "local" session, no Ray) on a
small real PolyMNIST build, calibrated on its training split, and then:
- with the `noise` recovery baseline, DyMo accepts few recovered modalities and its accuracy
  stays within 0.5 points of discard;
- with the true modalities in the missing slots (an oracle "recovery"), DyMo accepts many
  more of them and closes most of the accuracy gap between discard and the oracle.

In one run with these settings (random:0.6, 1,600 test rows), noise was accepted in 14 % of the
missing slots and DyMo scored 0.3 points below discard. True modalities were accepted in 26 %
of the slots, and DyMo scored 0.941 against 0.749 for discard and 0.953 for the oracle. The MTIR reward accepts only about a quarter of the true
modalities because G < 1 whenever the larger subset's embedding is less typical (lower ICS),
which happens for about half of the real candidates, and a confident base leaves little Q to
gain; one accepted modality is usually enough to reach the oracle's prediction.
docs/BENCHMARKS.md has the same comparison on the fully trained backbone.
"""

from __future__ import annotations

import pytest
import torch

from dymo_ray.bundle import ModelBundle
from dymo_ray.config import TrainConfig, config_to_dict
from dymo_ray.data.builders import build_polymnist
from dymo_ray.data.io import load_card, load_split
from dymo_ray.data.protocols import parse_protocol
from dymo_ray.evaluation import evaluate_strategies
from dymo_ray.models.backbone import FusionBackbone
from dymo_ray.recovery import build_recovery
from dymo_ray.selection import discard_predict, select
from dymo_ray.selection.calibration import compute_calibration_stats
from dymo_ray.train.backbone_job import backbone_config_for, resolve_config
from dymo_ray.train.backbone_loop import batches, train_backbone

PROTOCOL = "random:0.6"
PROTOCOL_SEED = 3


@pytest.fixture(scope="module")
def polymnist_bundle(tmp_path_factory):
    """A backbone trained for 12 epochs on 2,800 real PolyMNIST rows, with statistics."""
    data_dir = tmp_path_factory.mktemp("polymnist_behaviour")
    build_polymnist(
        data_dir, seed=2, multiplicity={"train": 4, "val": 2, "test": 8},
        per_class_limit=100, progress=False,
    )
    card = load_card(data_dir)
    cfg = resolve_config(
        TrainConfig(dataset="polymnist", data_dir=str(data_dir), epochs=12, batch_size=64, learning_rate=2e-3,
                    aux_start_epoch=1, num_workers=0, seed=0),
        card,
    )
    backbone_config = backbone_config_for(cfg, card)
    state = train_backbone({
        "train": config_to_dict(cfg),
        "data_dir": str(data_dir),
        "backbone": backbone_config.to_dict(),
        "session": "local",
    })
    model = FusionBackbone(card, backbone_config)
    model.load_state_dict(state["best_model"])
    model.eval()
    train = load_split(data_dir, "train")
    with torch.inference_mode():
        stats = compute_calibration_stats(model, batches(train, 256, generator=None), card.num_classes)
    bundle = ModelBundle(model=model, card=card, stats=stats, train_config=config_to_dict(cfg))
    return bundle, load_split(data_dir, "test")


def _accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predictions == labels).float().mean())


@pytest.mark.timeout(300)
def test_backbone_learned_the_task(polymnist_bundle):
    """Guard for the tests below: they mean nothing if the backbone is near chance."""
    bundle, test = polymnist_bundle
    present = torch.ones((len(test), bundle.card.num_modalities), dtype=torch.bool)
    result = discard_predict(bundle.model, test.inputs, present)
    assert _accuracy(result.predictions, test.labels) > 0.9


@pytest.mark.timeout(300)
def test_noise_recovery_is_rejected(polymnist_bundle):
    bundle, test = polymnist_bundle
    rows = evaluate_strategies(
        bundle, build_recovery("noise", bundle.card), test, [PROTOCOL], seed=PROTOCOL_SEED,
        progress=False,
    )
    by_strategy = {row["strategy"]: row for row in rows}
    dymo, discard = by_strategy["dymo"], by_strategy["discard"]
    assert dymo["used_per_row"] < 0.2 * dymo["missing_per_row"], dymo
    assert abs(dymo["accuracy"] - discard["accuracy"]) <= 0.005, (dymo, discard)
    # Fusing the noise blindly costs accuracy, which is what DyMo avoids.
    assert by_strategy["impute_all"]["accuracy"] < discard["accuracy"] - 0.02, rows


@pytest.mark.timeout(300)
def test_true_modalities_are_used(polymnist_bundle):
    bundle, test = polymnist_bundle
    card = bundle.card
    present = parse_protocol(PROTOCOL, card.modality_names).apply(len(test), PROTOCOL_SEED)
    # The missing slots contain the real modalities, as a perfect recovery would.
    result = select(bundle.model, bundle.stats, test.inputs, present, with_traces=False)
    noise = build_recovery("noise", card).recover(test.inputs, present, seed=PROTOCOL_SEED)
    noise_result = select(bundle.model, bundle.stats, noise, present, with_traces=False)

    missing = int((~present).sum())
    accepted = int(result.recovered_used.sum())
    assert not bool((result.recovered_used & present).any())  # only missing slots count
    assert accepted >= 0.2 * missing, f"accepted {accepted} of {missing} true modalities"
    assert accepted >= 0.5 * len(test), f"accepted {accepted} for {len(test)} rows"
    assert accepted > 1.5 * int(noise_result.recovered_used.sum())

    discard = _accuracy(discard_predict(bundle.model, test.inputs, present).predictions, test.labels)
    oracle_present = torch.ones_like(present)
    oracle = _accuracy(discard_predict(bundle.model, test.inputs, oracle_present).predictions, test.labels)
    dymo = _accuracy(result.predictions, test.labels)
    assert oracle - discard > 0.1, (discard, oracle)  # the missing modalities matter here
    assert dymo - discard >= 0.75 * (oracle - discard), (discard, dymo, oracle)
