"""A tiny random-weight bundle on real mdt rows, and helpers to call the served API."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import torch

from dymo_ray.bundle import ModelBundle
from dymo_ray.data.io import SplitData, load_split
from dymo_ray.data.text import decode_text
from dymo_ray.models.backbone import BackboneConfig, FusionBackbone
from dymo_ray.selection import compute_calibration_stats


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_tiny_bundle(data_dir: Path, folder: Path, seed: int = 0) -> Path:
    """Save a random-weight backbone with calibration statistics from the train split.

    The weights are redrawn with std 0.3: the default initialisation gives nearly the same
    output for every input and subset, so every reward would sit near 0 and selection
    would never use or reject anything.
    """
    train = load_split(data_dir, "train")
    torch.manual_seed(seed)
    config = BackboneConfig(width=16, heads=2, blocks=1, projection_dim=8, mlp_ratio=2)
    model = FusionBackbone(train.card, config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and "norm" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.eval()
    batches = [
        ({name: tensor[start:start + 64] for name, tensor in train.inputs.items()},
         train.labels[start:start + 64])
        for start in range(0, len(train), 64)
    ]
    stats = compute_calibration_stats(model, batches, train.card.num_classes)
    bundle = ModelBundle(model=model, card=train.card, stats=stats, train_config={"tiny": True})
    return bundle.save(folder)


def request_body(split: SplitData, row: int, present: list[bool], text_as_string: bool = True,
                 seed: int | None = None) -> dict[str, Any]:
    """Build a /v1/predict body for one row, sending only the modalities in `present`."""
    modalities: dict[str, Any] = {}
    for spec, seen in zip(split.card.modalities, present):
        if not seen:
            continue
        values = split.inputs[spec.name][row]
        if spec.kind == "text" and text_as_string:
            modalities[spec.name] = decode_text(values, spec.alphabet).rstrip(" ")
        else:
            modalities[spec.name] = values.tolist()
    body: dict[str, Any] = {"modalities": modalities}
    if seed is not None:
        body["seed"] = seed
    return body

