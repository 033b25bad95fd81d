"""Train the DyMo backbone on Ray Train and register the bundle in MLflow.

    python jobs/train.py                         # full offline polymnist, local Ray
    python jobs/train.py --smoke                 # about a minute
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train.py

Prints one line per epoch, then a table of the test accuracy of the discard strategy (the
backbone on the observed modalities only) under several missingness protocols.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dymo_ray.config import (  # noqa: E402
    SMOKE_OVERRIDES,
    ConfigError,
    TrainConfig,
    config_to_dict,
    merge_job_config,
)

DISCARD_PROTOCOLS = ("complete", "random:0.2", "random:0.6", "random:0.8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="polymnist (default) or mdt")
    parser.add_argument("--config", help="YAML file of TrainConfig keys (e.g. a Tune best config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set temperature=0.2 (repeatable)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny preset: 1024 training rows, 2 epochs (about a minute)")
    parser.add_argument("--epochs", type=int, help="maximum number of epochs")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (0 runs in-process)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL")
    parser.add_argument("--data-dir", help="built dataset folder (default: the run folder)")
    parser.add_argument("--protocol-seed", type=int, default=0,
                        help="seed of the missingness protocols of the final table")
    return parser.parse_args(argv)


def build_train_config(args: argparse.Namespace) -> TrainConfig:
    """Merge, in order: defaults, --config YAML, --smoke, flags, --set overrides."""
    flags = {
        "dataset": args.dataset,
        "epochs": args.epochs,
        "num_workers": args.num_workers,
        "use_gpu": True if args.use_gpu else None,
        "data_dir": args.data_dir,
    }
    preset = SMOKE_OVERRIDES if args.smoke else None
    return merge_job_config(TrainConfig, preset, flags, args.set, args.config)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = parse_args(argv)
    try:
        cfg = build_train_config(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from dymo_ray.data.spec import CardError
    from dymo_ray.evaluation import evaluate_discard, format_table
    from dymo_ray.train.backbone_job import run_training
    from dymo_ray.train.common import ClusterTooSmallError, init_ray

    init_ray()
    try:
        outcome = run_training(cfg)
    except (ConfigError, CardError, ClusterTooSmallError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(f"\nMLflow run: {outcome.run_id}")
    print(f"registered: {outcome.model_uri} (bundle {outcome.bundle_dir})")
    print(f"best val acc (all subsets): {outcome.best_val_acc:.4f} at epoch {outcome.best_epoch}"
          f" of {outcome.epochs_run}")
    rows = evaluate_discard(
        outcome.bundle_dir, DISCARD_PROTOCOLS, seed=args.protocol_seed,
        data_dir=outcome.config.data_dir, limit=outcome.config.test_limit, run_id=outcome.run_id,
    )
    print("\nTest accuracy of discard (backbone on the observed modalities only):")
    print(format_table(rows, ["protocol", "rows", "accuracy"]))
    print(f"\nresolved config: {config_to_dict(outcome.config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
