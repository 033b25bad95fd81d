"""Loading a model bundle whose files are damaged: each case raises BundleError naming it."""

from __future__ import annotations

import json

import pytest
import torch

from dymo_ray.bundle import BundleError, ModelBundle, load_bundle
from dymo_ray.data.io import load_card
from dymo_ray.models.backbone import BackboneConfig, FusionBackbone


@pytest.fixture()
def bundle_dir(tiny_mdt, tmp_path):
    """Save a small random-weight mdt bundle without calibration statistics."""
    card = load_card(tiny_mdt)
    config = BackboneConfig(width=16, heads=2, blocks=1, projection_dim=8, mlp_ratio=2)
    model = FusionBackbone(card, config).eval()
    return ModelBundle(model=model, card=card, stats=None, train_config={}).save(tmp_path / "b")


def test_intact_bundle_loads(bundle_dir):
    bundle = load_bundle(bundle_dir, require_stats=False)

    assert bundle.stats is None
    assert bundle.card.name == "mdt"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "bundle.json is not readable JSON"),
        ("[]", "bundle.json must contain a JSON object"),
    ],
)
def test_unreadable_meta_rejected(bundle_dir, text, message):
    (bundle_dir / "bundle.json").write_text(text)

    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir, require_stats=False)


def test_meta_without_card_rejected(bundle_dir):
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    del meta["card"]
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))

    with pytest.raises(BundleError, match=r"bundle.json is missing the keys \['card'\]"):
        load_bundle(bundle_dir, require_stats=False)


def test_corrupt_weights_rejected(bundle_dir):
    (bundle_dir / "weights.pt").write_bytes(b"not a torch file")

    with pytest.raises(BundleError, match="weights.pt is not a readable torch file"):
        load_bundle(bundle_dir, require_stats=False)


def test_missing_weights_rejected(bundle_dir):
    (bundle_dir / "weights.pt").unlink()

    with pytest.raises(BundleError, match="weights.pt is missing"):
        load_bundle(bundle_dir, require_stats=False)


def test_weights_of_wrong_type_rejected(bundle_dir):
    torch.save([1, 2, 3], bundle_dir / "weights.pt")

    with pytest.raises(BundleError, match="the weights do not fit the backbone config"):
        load_bundle(bundle_dir, require_stats=False)
