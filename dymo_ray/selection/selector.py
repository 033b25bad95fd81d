"""Batched DyMo selection: greedily add recovered modalities whose MTIR reward is positive.

Per sample, with observed set O and missing set Mis:
    S = O, Bad = {}
    repeat:
        candidates = Mis - S - Bad; stop if there are none
        compute R(u | S) for every candidate u
        add every u with R < 0 to Bad (it is never evaluated again)
        stop if max R <= 0, else add argmax R to S (ties go to the lowest modality index)
    predict softmax(z_S)
The label is never an input.

The batch runs the loop together. The encoders run once, the base pass of every row runs in
one `fuse` call, and each step runs every (row, candidate) pair of every unfinished row in
one more `fuse` call with a subset per pair. The winner's pass becomes the next base, so a
sample with k missing modalities costs at most 1 + k (k + 1) / 2 fused rows and no encoder
pass beyond the first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from dymo_ray.selection.calibration import CalibrationStats
from dymo_ray.selection.inputs import check_inputs, check_present
from dymo_ray.selection.reward import (
    CALIBRATION_FORMS,
    calibration_factor,
    ics,
    mtir_reward,
    prototype_confidence,
)
from dymo_ray.subsets import subset_index

logger = logging.getLogger(__name__)

# Default calibration form per metric, as in the authors' released code for PolyMNIST.
DEFAULT_CALIBRATION = {"cosine": "log-ratio", "euclidean": "ratio"}


@dataclass
class SelectionConfig:
    """Settings of DyMo selection.

    Attributes:
        tau: Selection temperature of the prototype confidence Q, > 0.
        calibration: "ratio", "log-ratio", or None for the metric's default ("log-ratio" in
            cosine mode, "ratio" in euclidean mode).
        max_steps: Maximum number of greedy steps per sample (None: no limit, so at most one
            step per missing modality). 0 keeps the observed set.
    """

    tau: float = 0.1
    calibration: str | None = None
    max_steps: int | None = None

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid selection config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """List what is wrong with this config (empty when valid)."""
        problems = []
        tau_is_number = isinstance(self.tau, (int, float)) and not isinstance(self.tau, bool)
        if not tau_is_number or not math.isfinite(self.tau) or self.tau <= 0:
            problems.append(f"tau must be a finite number > 0, got {self.tau!r}")
        if self.calibration is not None and self.calibration not in CALIBRATION_FORMS:
            problems.append(
                f"calibration {self.calibration!r} is not one of "
                f"{list(CALIBRATION_FORMS)} or None (the metric's default)"
            )
        if self.max_steps is not None:
            step_is_int = isinstance(self.max_steps, int) and not isinstance(self.max_steps, bool)
            if not step_is_int or self.max_steps < 0:
                problems.append(
                    f"max_steps must be None or an integer >= 0, got {self.max_steps!r}"
                )
        return problems

    def calibration_form(self, metric: str) -> str:
        """Return the calibration form in use for `metric`."""
        if self.calibration is not None:
            return self.calibration
        if metric not in DEFAULT_CALIBRATION:
            raise ValueError(
                f"unknown metric {metric!r}; valid metrics: {list(DEFAULT_CALIBRATION)}"
            )
        return DEFAULT_CALIBRATION[metric]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SelectionConfig:
        """Build a config from a dict, rejecting unknown keys.

        Raises:
            ValueError: a key is unknown or a value is invalid.
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown selection config keys {unknown}; valid keys: {known}")
        return cls(**data)


@dataclass
class StepTrace:
    """One greedy step of one sample. Modalities are indices in card order.

    Attributes:
        step: Step number, from 0.
        candidates: Modalities evaluated at this step, in increasing order.
        rewards: MTIR reward R(u | S) of each candidate.
        q_base: Prototype confidence Q of the current subset S.
        q_candidates: Q of S + u for each candidate.
        ics_base: ICS of S under its predicted class (g).
        ics_candidates: ICS of S + u under its predicted class (g') for each candidate.
        calibration_factors: Calibration factor G of each candidate.
        accepted: Modality added to S at this step, or None when the selection stopped.
        rejected: Candidates with R < 0, marked harmful and never evaluated again.
        left_out: Candidates neither accepted nor rejected (R >= 0 but not added).
    """

    step: int
    candidates: list[int]
    rewards: list[float]
    q_base: float
    q_candidates: list[float]
    ics_base: float
    ics_candidates: list[float]
    calibration_factors: list[float]
    accepted: int | None
    rejected: list[int]
    left_out: list[int]

    def to_dict(self, modality_names: list[str]) -> dict[str, Any]:
        """Return a JSON-friendly dict that names modalities instead of indexing them."""
        candidates = []
        for position, modality in enumerate(self.candidates):
            candidates.append(
                {
                    "modality": modality_names[modality],
                    "reward": self.rewards[position],
                    "q": self.q_candidates[position],
                    "ics": self.ics_candidates[position],
                    "calibration_factor": self.calibration_factors[position],
                }
            )
        accepted = None if self.accepted is None else modality_names[self.accepted]
        return {
            "step": self.step,
            "q_base": self.q_base,
            "ics_base": self.ics_base,
            "candidates": candidates,
            "accepted": accepted,
            "rejected": [modality_names[m] for m in self.rejected],
            "left_out": [modality_names[m] for m in self.left_out],
        }


@dataclass
class SelectionResult:
    """Predictions and selection outcome of a batch. Tensors are on the CPU.

    Attributes:
        predictions: Long (B,), argmax of the logits.
        probabilities: Float (B, C), softmax of the logits.
        logits: Float (B, C), the backbone's logits z_S on the final subset.
        selected: Bool (B, M), the final subset S, True = used.
        recovered_used: Bool (B, M), selected & ~present: recovered modalities that were used.
        rejected: Bool (B, M), recovered modalities marked harmful (R < 0).
        traces: Per sample, its steps in order (an empty list when no step ran), or None when
            traces were not requested.
        fused_rows: Rows passed through `fuse` in total, the base pass included.
    """

    predictions: torch.Tensor
    probabilities: torch.Tensor
    logits: torch.Tensor
    selected: torch.Tensor
    recovered_used: torch.Tensor
    rejected: torch.Tensor
    traces: list[list[StepTrace]] | None
    fused_rows: int

    def to_dict(self, modality_names: list[str]) -> list[dict[str, Any]]:
        """Return one JSON-friendly dict per sample, naming modalities.

        Each dict has the prediction, the class probabilities, the observed, recovered-used
        and rejected modalities, and the trace (None when traces were not requested).
        """
        observed = self.selected & ~self.recovered_used
        samples = []
        for row in range(len(self.predictions)):
            trace = None
            if self.traces is not None:
                trace = [step.to_dict(modality_names) for step in self.traces[row]]
            samples.append(
                {
                    "prediction": int(self.predictions[row]),
                    "probabilities": self.probabilities[row].tolist(),
                    "observed": _names(observed[row], modality_names),
                    "recovered_used": _names(self.recovered_used[row], modality_names),
                    "rejected": _names(self.rejected[row], modality_names),
                    "trace": trace,
                }
            )
        return samples


def _names(mask: torch.Tensor, modality_names: list[str]) -> list[str]:
    return [name for name, used in zip(modality_names, mask.tolist()) if used]


# ------------------------------------------------------------------------- batched selection


@dataclass
class _StepRecord:
    # Device tensors of one step, turned into StepTrace objects after the loop.
    step: int
    pair_rows: torch.Tensor
    pair_modalities: torch.Tensor
    rewards: torch.Tensor
    q_new: torch.Tensor
    ics_new: torch.Tensor
    factors: torch.Tensor
    q_base: torch.Tensor
    ics_base: torch.Tensor
    accepted_rows: torch.Tensor
    accepted_modalities: torch.Tensor


class _DeviceStats:
    """Calibration statistics on the model's device, in float64, for the reward."""

    def __init__(self, stats: CalibrationStats, device: torch.device) -> None:
        self.metric = stats.metric
        self.prototypes = stats.prototypes.to(device=device, dtype=torch.float64)
        self.sigma = stats.sigma.to(device=device, dtype=torch.float64)
        self.overall_prototypes = stats.overall_prototypes.to(device=device, dtype=torch.float64)

    def ics(self, h: torch.Tensor, logits: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
        """ICS (B,) of embeddings h (B, D) under their subsets (B, M) and predicted classes."""
        subset_ids = subset_index(subsets)
        predicted = logits.argmax(dim=1)
        return ics(
            h,
            self.prototypes[subset_ids, predicted],
            self.sigma[subset_ids, predicted],
            self.metric,
        )


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel keeps the backbone (and its card and config) in `.module`.
    return getattr(model, "module", model)


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # Switch to eval mode and back only when needed: `train()` walks every submodule and
    # costs about a millisecond, a large share of a batch-1 selection.
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _check_batch(
    backbone: nn.Module, inputs: Mapping[str, torch.Tensor], present: torch.Tensor
) -> None:
    batch_size = check_inputs(backbone.card, inputs)
    check_present(present, batch_size, backbone.card.num_modalities)


def select(
    model: nn.Module,
    stats: CalibrationStats | None,
    inputs: Mapping[str, torch.Tensor],
    present: torch.Tensor,
    config: SelectionConfig | None = None,
    *,
    with_traces: bool = True,
) -> SelectionResult:
    """Run DyMo selection and predict for a completed batch.

    Args:
        model: The backbone (`encode`, `fuse`, `card`, `config.metric`). It runs in eval mode
            under no_grad; its training mode is restored afterwards.
        stats: Calibration statistics of this backbone.
        inputs: One tensor (B, *shape) per modality of the card, in storage dtype. Observed
            modalities contain the real values, missing ones the recovered values.
        present: Bool (B, M), True = observed. Every row observes at least one modality.
        config: Selection settings (default: SelectionConfig()).
        with_traces: Build the per-sample traces. Without them the result is the same, and
            no Python work per sample is done.

    Returns:
        SelectionResult on the CPU.

    Raises:
        ValueError: `stats` is None or belongs to another backbone (fingerprint, shapes or
            metric differ), modality names, shapes or dtypes differ from the card, a float
            input contains NaN or inf, or a row of `present` observes nothing.
    """
    config = config if config is not None else SelectionConfig()
    backbone = _unwrap(model)
    _check_batch(backbone, inputs, present)
    if stats is None:
        raise ValueError(
            "no calibration statistics: DyMo selection needs the statistics of this backbone; "
            "compute them with compute_calibration_stats"
        )
    stats.validate(backbone)
    form = config.calibration_form(stats.metric)
    device = _model_device(backbone)
    device_stats = _DeviceStats(stats, device)

    with _eval_mode(backbone), torch.no_grad():
        device_inputs = {name: inputs[name].to(device) for name in backbone.card.modality_names}
        tokens = backbone.encode(device_inputs)
        result, records = _greedy_selection(
            backbone, tokens, present.to(device), device_stats, config, form, with_traces
        )
    if with_traces:
        result.traces = _build_traces(records, len(present))
    return result


def _greedy_selection(
    backbone: nn.Module,
    tokens: torch.Tensor,
    present: torch.Tensor,
    stats: _DeviceStats,
    config: SelectionConfig,
    form: str,
    with_traces: bool,
) -> tuple[SelectionResult, list[_StepRecord]]:
    batch_size, num_modalities = present.shape
    subset = present.clone()
    bad = torch.zeros_like(present)

    # Base pass: every row on its observed set. `logits`, `q` and `g` always describe the
    # current subset of each row, and an accepted candidate's pass replaces them (the cache).
    logits, h = backbone.fuse(tokens, subset)
    q = prototype_confidence(h, stats.overall_prototypes, stats.metric, config.tau)
    g = stats.ics(h, logits, subset)
    fused_rows = batch_size

    active = (~present).any(dim=1)
    records = []
    step = 0
    while config.max_steps is None or step < config.max_steps:
        # Mis - S - Bad for unfinished rows; ~subset is within Mis because S contains O.
        candidates = ~subset & ~bad & active[:, None]
        if not bool(candidates.any()):
            break
        pair_rows, pair_modalities = candidates.nonzero(as_tuple=True)  # row-major order
        pair_count = len(pair_rows)
        pair_subsets = subset.index_select(0, pair_rows)
        pair_subsets[torch.arange(pair_count, device=present.device), pair_modalities] = True

        # One fusion call for every (row, candidate) pair of the step.
        pair_logits, pair_h = backbone.fuse(tokens.index_select(0, pair_rows), pair_subsets)
        fused_rows += pair_count
        q_new = prototype_confidence(pair_h, stats.overall_prototypes, stats.metric, config.tau)
        g_new = stats.ics(pair_h, pair_logits, pair_subsets)
        factors = calibration_factor(g.index_select(0, pair_rows), g_new, form)
        rewards = mtir_reward(q_new, factors, q.index_select(0, pair_rows))

        harmful = rewards < 0
        bad[pair_rows[harmful], pair_modalities[harmful]] = True

        # argmax returns the first maximal index, so ties go to the lowest modality index.
        reward_table = torch.full(
            (batch_size, num_modalities), -math.inf, dtype=torch.float64, device=present.device
        )
        reward_table[pair_rows, pair_modalities] = rewards
        best_modality = reward_table.argmax(dim=1)
        best_reward = reward_table.gather(1, best_modality[:, None]).squeeze(1)
        accept = best_reward > 0  # rows without candidates contain -inf

        pair_position = torch.full_like(reward_table, -1, dtype=torch.long)
        pair_position[pair_rows, pair_modalities] = torch.arange(pair_count, device=present.device)
        accepted_rows = accept.nonzero().flatten()
        accepted_modalities = best_modality.index_select(0, accepted_rows)
        winners = pair_position[accepted_rows, accepted_modalities]

        if with_traces:
            records.append(
                _StepRecord(
                    step=step,
                    pair_rows=pair_rows,
                    pair_modalities=pair_modalities,
                    rewards=rewards,
                    q_new=q_new,
                    ics_new=g_new,
                    factors=factors,
                    q_base=q.index_select(0, pair_rows),
                    ics_base=g.index_select(0, pair_rows),
                    accepted_rows=accepted_rows,
                    accepted_modalities=accepted_modalities,
                )
            )

        subset[accepted_rows, accepted_modalities] = True
        logits[accepted_rows] = pair_logits.index_select(0, winners)
        q[accepted_rows] = q_new.index_select(0, winners)
        g[accepted_rows] = g_new.index_select(0, winners)
        active = accept
        step += 1

    logits = logits.float().cpu()
    selected = subset.cpu()
    present = present.cpu()
    result = SelectionResult(
        predictions=logits.argmax(dim=1),
        probabilities=torch.softmax(logits, dim=1),
        logits=logits,
        selected=selected,
        recovered_used=selected & ~present,
        rejected=bad.cpu(),
        traces=None,
        fused_rows=fused_rows,
    )
    return result, records


def _build_traces(records: list[_StepRecord], batch_size: int) -> list[list[StepTrace]]:
    traces: list[list[StepTrace]] = [[] for _ in range(batch_size)]
    for record in records:
        rows = record.pair_rows.tolist()
        modalities = record.pair_modalities.tolist()
        rewards = record.rewards.tolist()
        q_new = record.q_new.tolist()
        ics_new = record.ics_new.tolist()
        factors = record.factors.tolist()
        q_base = record.q_base.tolist()
        ics_base = record.ics_base.tolist()
        accepted = dict(zip(record.accepted_rows.tolist(), record.accepted_modalities.tolist()))

        step_of_row: dict[int, StepTrace] = {}
        for position, row in enumerate(rows):
            trace = step_of_row.get(row)
            if trace is None:
                trace = StepTrace(
                    step=record.step,
                    candidates=[],
                    rewards=[],
                    q_base=q_base[position],
                    q_candidates=[],
                    ics_base=ics_base[position],
                    ics_candidates=[],
                    calibration_factors=[],
                    accepted=accepted.get(row),
                    rejected=[],
                    left_out=[],
                )
                step_of_row[row] = trace
                traces[row].append(trace)
            modality = modalities[position]
            trace.candidates.append(modality)
            trace.rewards.append(rewards[position])
            trace.q_candidates.append(q_new[position])
            trace.ics_candidates.append(ics_new[position])
            trace.calibration_factors.append(factors[position])
            if rewards[position] < 0:
                trace.rejected.append(modality)
            elif modality != trace.accepted:
                trace.left_out.append(modality)
    return traces


# ------------------------------------------------------------------------- baselines


def _predict_fixed(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    subset: torch.Tensor,
    present: torch.Tensor,
) -> SelectionResult:
    backbone = _unwrap(model)
    device = _model_device(backbone)
    with _eval_mode(backbone), torch.no_grad():
        device_inputs = {name: inputs[name].to(device) for name in backbone.card.modality_names}
        logits, _ = backbone.fuse(backbone.encode(device_inputs), subset.to(device))
    logits = logits.float().cpu()
    selected = subset.cpu()
    return SelectionResult(
        predictions=logits.argmax(dim=1),
        probabilities=torch.softmax(logits, dim=1),
        logits=logits,
        selected=selected,
        recovered_used=selected & ~present.cpu(),
        rejected=torch.zeros_like(selected),
        traces=[[] for _ in range(len(selected))],
        fused_rows=len(selected),
    )


def discard_predict(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], present: torch.Tensor
) -> SelectionResult:
    """Predict with the observed modalities only (the discard baseline, S = O).

    Args:
        model: The backbone.
        inputs: One tensor (B, *shape) per modality, as for `select`. Missing slots may contain
            any finite value (zeros, or recovered values): masking makes them irrelevant.
        present: Bool (B, M), True = observed.

    Returns:
        SelectionResult on the CPU with selected = present and nothing recovered or rejected.

    Raises:
        ValueError: as for `select`, except that no statistics are needed.
    """
    backbone = _unwrap(model)
    _check_batch(backbone, inputs, present)
    return _predict_fixed(backbone, inputs, present, present)


def impute_all_predict(
    model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    present: torch.Tensor | None = None,
) -> SelectionResult:
    """Predict with every modality, observed or recovered (the impute-all baseline, S = all).

    With the true values of every modality as `inputs`, this is the oracle baseline.

    Args:
        model: The backbone.
        inputs: One tensor (B, *shape) per modality, observed or recovered.
        present: Optional bool (B, M), True = observed; it only sets `recovered_used`
            (None: every modality counts as observed).

    Returns:
        SelectionResult on the CPU with every modality selected.

    Raises:
        ValueError: as for `select`, except that no statistics are needed.
    """
    backbone = _unwrap(model)
    batch_size = check_inputs(backbone.card, inputs)
    num_modalities = backbone.card.num_modalities
    if present is None:
        present = torch.ones(batch_size, num_modalities, dtype=torch.bool)
    check_present(present, batch_size, num_modalities)
    everything = torch.ones(batch_size, num_modalities, dtype=torch.bool)
    return _predict_fixed(backbone, inputs, everything, present)
