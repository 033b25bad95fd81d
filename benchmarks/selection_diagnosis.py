"""Where DyMo gains and loses against discard: which recovered modalities it accepts, and why.

    python benchmarks/selection_diagnosis.py                  # registered models, random:0.8
    python benchmarks/selection_diagnosis.py --bundle models:/dymo-backbone/2 \\
        --recovery models:/dymo-recovery-polymnist/1 --protocol random:0.6
    python benchmarks/selection_diagnosis.py --calibration-split val   # other statistics

The split is masked and recovered exactly as `jobs/evaluate.py` does (same protocol mask and
recovery seeds), so with the same `--batch-size` (the recovery seed is drawn per batch) the
discard and DyMo accuracies equal that job's table. Each recovered
modality u is also classified alone by the backbone (subset {u}), and that prediction is
taken as the class the recovered sample shows: it "shows the true class" when it equals the
label.

With `--calibration-split`, the calibration statistics are computed again on every row of
that split (complete rows, true labels; `--limit` does not apply) in place of the bundle's,
which come from the training split, and the script first prints how the class spreads sigma
compare with the bundle's. It must differ from `--split`, whose labels would leak otherwise.

The script prints, one line each:
    - the accuracy of discard and DyMo, and the recovered modalities DyMo used per row;
    - the rows DyMo changed from right to wrong, and from wrong to right;
    - the share of recovered samples that show the true class: all, accepted, rejected;
    - in rows DyMo turned wrong: how often an accepted sample shows a wrong class, and how
      often DyMo predicts the class that an accepted sample shows;
    - at the first accepting step: the median Q of the base, Q of the accepted candidate
      and its calibration factor G, in rows turned wrong and in rows that stayed right;
    - the median discard confidence (max class probability): all rows, rows turned wrong.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from dymo_ray.bundle import ModelBundle, load_bundle  # noqa: E402
from dymo_ray.data.builders import ensure_dataset  # noqa: E402
from dymo_ray.data.io import SplitData, load_card  # noqa: E402
from dymo_ray.data.protocols import parse_protocol  # noqa: E402
from dymo_ray.evaluation import load_eval_split, recovery_seed  # noqa: E402
from dymo_ray.recovery import Recovery, load_recovery_model  # noqa: E402
from dymo_ray.selection import (  # noqa: E402
    SelectionConfig,
    StepTrace,
    compute_calibration_stats,
    discard_predict,
    select,
)
from dymo_ray.train.backbone_loop import batches  # noqa: E402


def positive_int(text: str) -> int:
    """Parse an integer >= 1 for argparse."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="polymnist", choices=["polymnist", "mdt"])
    parser.add_argument(
        "--bundle", default="models:/dymo-backbone@latest", help="bundle folder or models:/ URI"
    )
    parser.add_argument(
        "--recovery",
        default=None,
        help="models:/ URI, saved folder, zeros or noise (default: "
        "models:/dymo-recovery-<dataset>@latest)",
    )
    parser.add_argument("--protocol", default="random:0.8")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--calibration-split",
        default=None,
        help="compute the calibration statistics on every row of this split, which must "
        "differ from --split (default: use the bundle's)",
    )
    parser.add_argument(
        "--limit", type=positive_int, default=None, help="seeded random subset of rows"
    )
    parser.add_argument("--seed", type=int, default=0, help="protocol and recovery seed")
    parser.add_argument("--tau", type=float, default=0.1, help="selection temperature")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument(
        "--threads", type=positive_int, default=2, help="torch intra-op CPU threads"
    )
    return parser.parse_args()


def share(mask: torch.Tensor) -> str:
    """Format the share of True values of a bool tensor, or "-" when it is empty."""
    if mask.numel() == 0:
        return "-"
    return f"{mask.float().mean().item():.3f} of {mask.numel()}"


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.4f}" if values else "-"


def tensor_median(values: torch.Tensor) -> str:
    """Format the median of a 1-D tensor, or "-" when it is empty."""
    return f"{values.median():.4f}" if values.numel() else "-"


def first_acceptance(trace: list[StepTrace]) -> tuple[float, float, float] | None:
    """Return (Q base, Q accepted, G accepted) of the first step that accepted, or None."""
    for step in trace:
        if step.accepted is not None:
            position = step.candidates.index(step.accepted)
            return step.q_base, step.q_candidates[position], step.calibration_factors[position]
    return None


def load_inputs(
    args: argparse.Namespace, recovery_location: str
) -> tuple[ModelBundle, Recovery, SplitData, torch.Tensor, SelectionConfig]:
    """Load the bundle, recovery model and split, and draw the protocol's presence mask.

    Raises:
        ValueError: an argument is invalid, or names a bundle, recovery model or split
            that cannot be loaded or does not match the others.
    """
    config = SelectionConfig(tau=args.tau)
    bundle = load_bundle(args.bundle)
    if bundle.card.name != args.dataset:
        raise ValueError(
            f"bundle {args.bundle} was trained on {bundle.card.name!r}, not "
            f"{args.dataset!r}; pass --dataset {bundle.card.name}"
        )
    try:
        recovery = load_recovery_model(recovery_location, bundle.card)
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(
            f"cannot load the recovery model {recovery_location}: {error}. Train one with "
            "`python jobs/train_recovery.py` or pass --recovery noise"
        ) from error
    data_dir = ensure_dataset(args.dataset)
    data = load_eval_split(bundle, data_dir, args.split, args.limit)
    if args.calibration_split is not None:
        splits = load_card(data_dir).splits
        if args.calibration_split not in splits:
            raise ValueError(
                f"calibration split {args.calibration_split!r} not found in dataset "
                f"{data_dir}. Valid splits: {list(splits)}"
            )
        if args.calibration_split == args.split:
            raise ValueError(
                f"--calibration-split {args.calibration_split!r} is the diagnosed split, so the "
                "statistics would use its true labels; pick another split"
            )
        calibration_data = load_eval_split(bundle, data_dir, args.calibration_split, None)
        with torch.inference_mode():
            calibration_batches = batches(calibration_data, 512, generator=None)
            stats = compute_calibration_stats(
                bundle.model, calibration_batches, bundle.card.num_classes
            )
        ratio = (stats.sigma / bundle.stats.sigma).flatten()
        print(
            f"sigma on the {args.calibration_split} split against the bundle's, over subsets and "
            f"classes: median ratio {ratio.median():.3f}, wider in {share(ratio > 1)}"
        )
        bundle.stats = stats
    protocol = parse_protocol(args.protocol, bundle.card.modality_names)
    present = protocol.apply(len(data), args.seed)
    return bundle, recovery, data, present, config


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    recovery_location = args.recovery or f"models:/dymo-recovery-{args.dataset}@latest"
    try:
        bundle, recovery, data, present, config = load_inputs(args, recovery_location)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    card = bundle.card
    labels = data.labels

    discard_parts, confidence_parts, dymo_parts, single_parts = [], [], [], []
    used_parts, rejected_parts, traces = [], [], []
    model = bundle.model.eval()
    single_subsets = torch.eye(card.num_modalities, dtype=torch.bool)
    for batch_index, start in enumerate(range(0, len(data), args.batch_size)):
        stop = start + args.batch_size
        inputs = {name: tensor[start:stop] for name, tensor in data.inputs.items()}
        batch_present = present[start:stop]
        completed = recovery.recover(
            inputs, batch_present, seed=recovery_seed(args.seed, batch_index)
        )
        discard_result = discard_predict(model, completed, batch_present)
        discard_parts.append(discard_result.predictions)
        confidence_parts.append(discard_result.probabilities.max(dim=1).values)
        result = select(model, bundle.stats, completed, batch_present, config)
        dymo_parts.append(result.predictions)
        used_parts.append(result.recovered_used)
        rejected_parts.append(result.rejected)
        traces.extend(result.traces)
        with torch.no_grad():
            tokens = model.encode(completed)
            single = [model.fuse(tokens, subset)[0].argmax(dim=1) for subset in single_subsets]
        single_parts.append(torch.stack(single, dim=1))

    discard = torch.cat(discard_parts)
    dymo = torch.cat(dymo_parts)
    # (rows, M): the class each modality shows when the backbone classifies it alone.
    single_predictions = torch.cat(single_parts)
    used = torch.cat(used_parts)
    rejected = torch.cat(rejected_parts)
    missing = ~present
    shows_true = single_predictions == labels[:, None]
    discard_right = discard == labels
    dymo_right = dymo == labels
    turned_wrong = discard_right & ~dymo_right
    turned_right = ~discard_right & dymo_right

    print(
        f"{args.dataset} {args.split} split, {len(data)} rows, {args.protocol}, seed {args.seed}, "
        f"bundle {bundle.source}, recovery {recovery_location}"
    )
    statistics_source = (
        f"computed on the {args.calibration_split} split" if args.calibration_split
        else "the bundle's"
    )
    print(f"calibration statistics: {statistics_source}")
    print(
        f"accuracy: discard {discard_right.float().mean():.4f}, DyMo "
        f"{dymo_right.float().mean():.4f}; recovered modalities used per row "
        f"{used.sum(dim=1).float().mean():.2f}"
    )
    print(f"rows DyMo turned wrong: {int(turned_wrong.sum())}, turned right: {int(turned_right.sum())}")
    print(f"recovered samples showing the true class: {share(shows_true[missing])}")
    print(f"  accepted by DyMo: {share(shows_true[used])}")
    print(f"  rejected by DyMo: {share(shows_true[rejected])}")
    wrong_rows_used = used & turned_wrong[:, None]
    follows_accepted = ((single_predictions == dymo[:, None]) & used).any(dim=1)
    print(
        "in rows DyMo turned wrong: accepted samples showing a wrong class "
        f"{share(~shows_true[wrong_rows_used])}; prediction is an accepted sample's class "
        f"{share(follows_accepted[turned_wrong])}"
    )
    for name, rows in (("turned wrong", turned_wrong), ("stayed right", discard_right & dymo_right)):
        steps = [first_acceptance(traces[row]) for row in rows.nonzero().flatten().tolist()]
        steps = [step for step in steps if step is not None]
        print(
            f"first accepting step, rows {name} ({len(steps)}): median Q base "
            f"{median([s[0] for s in steps])}, Q accepted {median([s[1] for s in steps])}, "
            f"G accepted {median([s[2] for s in steps])}"
        )
    discard_confidence = torch.cat(confidence_parts)
    print(
        f"median discard confidence: all rows {tensor_median(discard_confidence)}, rows DyMo "
        f"turned wrong {tensor_median(discard_confidence[turned_wrong])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
