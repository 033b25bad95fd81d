"""Training primitives for recovery models in plain PyTorch, and a PNG grid of recoveries.

The Ray Train worker loop calls these, and nothing here imports Ray.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from dymo_ray.data.spec import ModalitySpec
from dymo_ray.recovery.base import Recovery
from dymo_ray.recovery.codec import to_model_form


def train_recovery_epoch(
    recovery: Recovery,
    batches: Iterable[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    model: nn.Module | None = None,
) -> dict[str, float]:
    """Run one pass of gradient steps over complete training batches.

    Args:
        recovery: A trainable recovery model (one with a `loss` method, e.g. MoPoE).
        batches: Complete storage-form batches. Each dict contains a tensor (B, *shape) per
            modality of the card, and other keys (labels, ids) are ignored.
        optimizer: Optimizer over the model's parameters.
        model: The module to run in place of `recovery.model`, e.g. the same model wrapped
            for data-parallel training.

    Returns:
        Each loss term averaged over samples: "loss", plus model-specific terms such as
        "recon/<modality>" and "kl" for MoPoE.

    Raises:
        TypeError: `recovery` has no trainable model (the zeros and noise baselines).
        FloatingPointError: a loss is NaN or infinite; the message gives the batch index.
        ValueError: no batch was given.
    """
    if not hasattr(recovery, "loss"):
        raise TypeError(f"recovery model {recovery.name!r} has no parameters to train")
    module = model or recovery.model
    module.train()
    names = recovery.card.modality_names
    sums: dict[str, float] = {}
    num_samples = 0
    for step, batch in enumerate(batches):
        missing_keys = [name for name in names if name not in batch]
        if missing_keys:
            raise ValueError(f"training batch {step} lacks modalities {missing_keys}")
        inputs = {name: batch[name] for name in names}
        batch_size = len(inputs[names[0]])
        loss, terms = recovery.loss(inputs, model=module)
        if not math.isfinite(terms["loss"]):
            raise FloatingPointError(
                f"recovery loss is {terms['loss']} at batch {step}; lower the learning rate "
                "or check the inputs of that batch"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value * batch_size
        num_samples += batch_size
    if num_samples == 0:
        raise ValueError("train_recovery_epoch got no batches")
    return {key: total / num_samples for key, total in sums.items()}


# ----- sample grid ----------------------------------------------------------------------

_BORDER = 2
_OBSERVED_COLOUR = (60, 160, 60)
_RECOVERED_COLOUR = (210, 40, 40)
_HEADER_HEIGHT = 14


def recovered_sample_grid(
    recovery: Recovery,
    inputs: dict[str, torch.Tensor],
    present: torch.Tensor,
    seed: int | None = 0,
) -> np.ndarray:
    """Render the completed batch as an RGB grid: one row per sample, one column per modality.

    Observed cells have a green frame and recovered cells a red one. Images are scaled to the
    largest image side (at least 28 px) by nearest neighbour, text is drawn as its characters,
    and tabular vectors as a grey strip. A header row names the modalities.

    Args:
        recovery: The recovery model.
        inputs: Storage-form batch (B, *shape) per modality; keep B small (about 8).
        present: Bool (B, M), True = observed.
        seed: Seed of the recovery.

    Returns:
        uint8 array (height, width, 3).
    """
    completed = recovery.recover(inputs, present, seed=seed)
    specs = recovery.card.modalities
    image_sides = [max(spec.shape[1:]) for spec in specs if spec.kind == "image"]
    cell_height = max([28, *image_sides])
    widths = [_cell_width(spec, cell_height) for spec in specs]
    frame_width = [width + 2 * _BORDER for width in widths]
    batch_size = present.shape[0]
    canvas = Image.new(
        "RGB",
        (sum(frame_width), _HEADER_HEIGHT + batch_size * (cell_height + 2 * _BORDER)),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()

    left = 0
    for column, spec in enumerate(specs):
        draw.text((left + _BORDER, 1), spec.name, fill="black", font=font)
        values = completed[spec.name].detach().to("cpu")
        for row in range(batch_size):
            top = _HEADER_HEIGHT + row * (cell_height + 2 * _BORDER)
            colour = _OBSERVED_COLOUR if bool(present[row, column]) else _RECOVERED_COLOUR
            draw.rectangle(
                [left, top, left + frame_width[column] - 1, top + cell_height + 2 * _BORDER - 1],
                fill=colour,
            )
            cell = _render_cell(spec, values[row], widths[column], cell_height, font)
            canvas.paste(cell, (left + _BORDER, top + _BORDER))
        left += frame_width[column]
    return np.asarray(canvas, dtype=np.uint8).copy()


def write_png(grid: np.ndarray, path: str | Path) -> Path:
    """Write an RGB uint8 array (H, W, 3) as a PNG file and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path, format="PNG")
    return path


def _cell_width(spec: ModalitySpec, cell_height: int) -> int:
    if spec.kind == "text":
        return max(cell_height, 7 * spec.shape[0] + 4)
    return cell_height


def _render_cell(
    spec: ModalitySpec, values: torch.Tensor, width: int, height: int, font: ImageFont.ImageFont
) -> Image.Image:
    if spec.kind == "text":
        cell = Image.new("RGB", (width, height), "white")
        alphabet = spec.alphabet or ""
        text = "".join(alphabet[int(i)] for i in values).replace("\n", " ")
        ImageDraw.Draw(cell).text((2, height // 2 - 6), text, fill="black", font=font)
        return cell
    scaled = to_model_form(spec, values.unsqueeze(0))[0].clamp(0.0, 1.0)
    if spec.kind == "tabular":
        scaled = scaled.reshape(1, 1, -1)
    pixels = (scaled * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if pixels.shape[2] != 3:
        # Grey (or any non-RGB) images are shown as the mean over channels.
        grey = pixels.mean(axis=2, keepdims=True).round().astype(np.uint8)
        pixels = np.repeat(grey, 3, axis=2)
    return Image.fromarray(pixels).resize((width, height), Image.NEAREST)
