"""Literal DyMo selection, for equivalence tests and the throughput benchmark.

Written from the definition with no batching and no caching: one sample at a time, and for
every candidate of every step two full `model.forward` passes (the current subset S and
S + u) on that single sample. Q, ICS and G are computed in float64 with numpy, scipy and
math, independently of `dymo_ray.selection.reward`:
    Q(h)   = max_c softmax_c(s(h, Pbar_c) / tau), s = <h, P> (cosine) or -||h - P||^2
    ICS    = 2 (1 - Phi(d / sigma)) under the subset's prototype of the predicted class,
             d = 1 - <h, P> (cosine) or ||h - P|| (euclidean)
    G      = 1 if g' >= g, else g'/g (ratio) or log g / log g' (log-ratio)
    R(u|S) = Q(h_S+u) G - Q(h_S)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import norm

from dymo_ray.subsets import all_subsets


@dataclass
class ReferenceStep:
    """One step of one sample: the candidates, their rewards and the decision."""

    candidates: list[int]
    rewards: dict[int, float]
    accepted: int | None
    rejected: list[int]


@dataclass
class ReferenceOutcome:
    """Result of the literal selection for one sample."""

    selected: list[bool]
    rejected: list[bool]
    prediction: int
    probabilities: np.ndarray
    logits: np.ndarray
    steps: list[ReferenceStep] = field(default_factory=list)
    forward_passes: int = 0


def _forward(model, sample: dict[str, torch.Tensor], subset: set[int], num_modalities: int):
    mask = torch.tensor([m in subset for m in range(num_modalities)], dtype=torch.bool)
    with torch.no_grad():
        logits, embedding = model(sample, mask)
    return logits[0].double().cpu().numpy(), embedding[0].double().cpu().numpy()


def _confidence(h: np.ndarray, overall: np.ndarray, metric: str, tau: float) -> float:
    if metric == "cosine":
        scores = overall @ h
    else:
        scores = -np.sum((h[None, :] - overall) ** 2, axis=1)
    logits = scores / tau
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    return float(probabilities.max())


def _ics(h, logits, subset, stats_arrays, subset_ids, metric, num_modalities) -> float:
    prototypes, sigma = stats_arrays
    key = tuple(m in subset for m in range(num_modalities))
    subset_id = subset_ids[key]
    predicted = int(np.argmax(logits))
    prototype = prototypes[subset_id, predicted]
    if metric == "cosine":
        distance = 1.0 - float(h @ prototype)
    else:
        distance = float(np.sqrt(np.sum((h - prototype) ** 2)))
    return float(2.0 * norm.sf(distance / sigma[subset_id, predicted]))


def _calibration(g: float, g_new: float, form: str) -> float:
    if g_new >= g:
        return 1.0
    if form == "ratio":
        return g_new / g
    if g_new == 0.0:
        return 0.0  # the limit of log g / log g' as g' -> 0
    return math.log(g) / math.log(g_new)


def reference_select(
    model,
    stats,
    inputs: dict[str, torch.Tensor],
    present: torch.Tensor,
    tau: float,
    calibration: str,
    max_steps: int | None = None,
) -> list[ReferenceOutcome]:
    """Select and predict sample by sample, as literally as the definition reads.

    Args:
        model: Backbone called as `model(inputs, subset)` -> (logits, embedding).
        stats: CalibrationStats of the backbone.
        inputs: One tensor (B, *shape) per modality, observed and recovered values.
        present: Bool (B, M), True = observed.
        tau: Selection temperature.
        calibration: "ratio" or "log-ratio".
        max_steps: Maximum number of steps per sample (None: no limit).

    Returns:
        One ReferenceOutcome per sample.
    """
    model.eval()
    num_modalities = present.shape[1]
    metric = stats.metric
    subset_ids = {
        tuple(bool(v) for v in row.tolist()): index
        for index, row in enumerate(all_subsets(num_modalities))
    }
    stats_arrays = (stats.prototypes.double().numpy(), stats.sigma.double().numpy())
    overall = stats.overall_prototypes.double().numpy()

    outcomes = []
    for row in range(present.shape[0]):
        sample = {name: tensor[row : row + 1] for name, tensor in inputs.items()}
        observed = {m for m in range(num_modalities) if bool(present[row, m])}
        missing = set(range(num_modalities)) - observed
        chosen = set(observed)
        bad: set[int] = set()
        steps = []
        passes = 0
        while max_steps is None or len(steps) < max_steps:
            candidates = sorted(missing - chosen - bad)
            if not candidates:
                break
            rewards = {}
            for u in candidates:
                logits, h = _forward(model, sample, chosen, num_modalities)
                new_logits, new_h = _forward(model, sample, chosen | {u}, num_modalities)
                passes += 2
                q = _confidence(h, overall, metric, tau)
                q_new = _confidence(new_h, overall, metric, tau)
                g = _ics(h, logits, chosen, stats_arrays, subset_ids, metric, num_modalities)
                g_new = _ics(
                    new_h,
                    new_logits,
                    chosen | {u},
                    stats_arrays,
                    subset_ids,
                    metric,
                    num_modalities,
                )
                rewards[u] = q_new * _calibration(g, g_new, calibration) - q
            rejected_now = [u for u in candidates if rewards[u] < 0]
            bad.update(rejected_now)
            best = max(rewards.values())
            accepted = None
            if best > 0:
                accepted = min(u for u in candidates if rewards[u] == best)
                chosen.add(accepted)
            steps.append(ReferenceStep(candidates, rewards, accepted, rejected_now))
            if accepted is None:
                break

        logits, _ = _forward(model, sample, chosen, num_modalities)
        passes += 1
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        outcomes.append(
            ReferenceOutcome(
                selected=[m in chosen for m in range(num_modalities)],
                rejected=[m in bad for m in range(num_modalities)],
                prediction=int(np.argmax(logits)),
                probabilities=probabilities,
                logits=logits,
                steps=steps,
                forward_passes=passes,
            )
        )
    return outcomes
