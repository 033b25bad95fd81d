"""Compare discard, impute-all, DyMo and oracle on the test split under missingness protocols.

    python jobs/evaluate.py                                   # polymnist, registered models
    python jobs/evaluate.py --dataset mdt                     # every drop: pattern of mdt
    python jobs/evaluate.py --recovery noise --protocols random:0.6

Prints the accuracy table, writes a CSV and an accuracy plot, and logs all of it to an
MLflow run in the experiment "dymo-eval".
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def positive_int(text: str) -> int:
    """Parse an integer >= 1 for argparse."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="polymnist", choices=["polymnist", "mdt"])
    parser.add_argument("--bundle", default="models:/dymo-backbone@latest",
                        help="bundle folder or models:/ URI (default: the newest registered)")
    parser.add_argument("--recovery", default=None,
                        help="models:/ URI, a saved folder, or a baseline: zeros, noise "
                             "(default: models:/dymo-recovery-<dataset>@latest)")
    parser.add_argument("--protocols", default=None,
                        help="comma-separated protocols (default: random:0.2,...,0.8 for "
                             "polymnist, every drop: pattern for mdt)")
    parser.add_argument("--data-dir", help="built dataset folder (default: the run folder)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, help="evaluate a seeded random subset of rows")
    parser.add_argument("--seed", type=int, default=0, help="protocol and recovery seed")
    parser.add_argument("--tau", type=float, default=0.1, help="selection temperature tau")
    parser.add_argument("--calibration", choices=["ratio", "log-ratio"],
                        help="calibration form (default: log-ratio for cosine, ratio for euclidean)")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="rows per selection batch; the recovery seed is drawn per batch")
    parser.add_argument("--out", help="folder for the CSV and the plot (default: a new folder in the run folder)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)

    from dymo_ray.bundle import BundleError, load_bundle
    from dymo_ray.data.builders import ensure_dataset
    from dymo_ray.data.protocols import default_protocols
    from dymo_ray.evaluation import (
        compare_dymo, evaluate_strategies, format_table, load_eval_split, pivot_accuracy,
        plot_accuracy, write_csv,
    )
    from dymo_ray.paths import run_dir
    from dymo_ray.recovery import load_recovery_model
    from dymo_ray.selection import SelectionConfig
    from dymo_ray.tracking import MlflowRunLogger

    try:
        bundle = load_bundle(args.bundle)
        selection = SelectionConfig(tau=args.tau, calibration=args.calibration)
    except (BundleError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if bundle.card.name != args.dataset:
        print(f"error: bundle {args.bundle} was trained on {bundle.card.name!r}, not "
              f"{args.dataset!r}; pass --dataset {bundle.card.name}", file=sys.stderr)
        return 2
    recovery_location = args.recovery or f"models:/dymo-recovery-{args.dataset}@latest"
    try:
        recovery = load_recovery_model(recovery_location, bundle.card)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: cannot load the recovery model {recovery_location}: {error}; "
              "train one with `python jobs/train_recovery.py` or pass --recovery noise",
              file=sys.stderr)
        return 2

    data_dir = Path(args.data_dir) if args.data_dir else ensure_dataset(args.dataset)
    try:
        data = load_eval_split(bundle, data_dir, args.split, args.limit)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.protocols is None:
        protocols = default_protocols(bundle.card)
    else:
        protocols = [name.strip() for name in args.protocols.split(",")]
        repeated = sorted({name for name in protocols if protocols.count(name) > 1})
        if repeated:
            print(f"error: invalid --protocols: {repeated} repeated; list each protocol once",
                  file=sys.stderr)
            return 2
    # Create a given output folder now, so that a bad --out does not waste the evaluation.
    out = Path(args.out) if args.out else None
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(f"error: failed to create the --out folder {out}: {error}; pass a folder path",
                  file=sys.stderr)
            return 2
    started = time.perf_counter()
    try:
        rows = evaluate_strategies(bundle, recovery, data, protocols, seed=args.seed,
                                   batch_size=args.batch_size, selection_config=selection,
                                   progress=not args.no_progress)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started

    if out is None:
        out = Path(tempfile.mkdtemp(prefix="eval-", dir=run_dir()))

    csv_path = write_csv(rows, out / f"eval_{args.dataset}.csv")
    plot_path = plot_accuracy(rows, out / f"eval_{args.dataset}.png",
                              f"{args.dataset}: accuracy by strategy ({recovery.name} recovery)")
    run = MlflowRunLogger.start("dymo-eval", f"eval-{args.dataset}", tags={"stage": "evaluate"})
    run.log_params({"bundle": bundle.source, "bundle_version": bundle.version,
                    "recovery": recovery_location, "protocols": ",".join(protocols),
                    "seed": args.seed, "rows": len(data), **selection.to_dict()})
    run.log_metrics({f"eval/{r['protocol']}/{r['strategy']}/acc": r["accuracy"] for r in rows})
    run.log_metrics({f"eval/{r['protocol']}/{r['strategy']}/auc": r["auc"] for r in rows
                     if r["auc"] is not None})
    run.log_artifact(csv_path)
    run.log_artifact(plot_path)
    run.end()

    print(f"\n{args.dataset} {args.split} split, {len(data)} rows, seed {args.seed}, "
          f"bundle {bundle.source} (version {bundle.version}), recovery {recovery_location}")
    columns = ["protocol", "missing", "discard", "impute_all", "dymo", "oracle",
               "dymo_used", "dymo_rejected"]
    pivot = pivot_accuracy(rows)
    print(format_table(pivot, columns))
    print("(missing, dymo_used, dymo_rejected: mean modalities per row)\n")
    print("\n".join(compare_dymo(pivot)))
    print(f"\nCSV: {csv_path}\nplot: {plot_path}\nMLflow run: {run.run_id}\n"
          f"evaluated in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
