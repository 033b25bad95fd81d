"""Train a recovery model on Ray Train, register it in MLflow and report its coherence.

    python jobs/train_recovery.py                          # MoPoE on the offline polymnist
    python jobs/train_recovery.py --dataset mdt --model cmvae
    python jobs/train_recovery.py --smoke                  # about a minute
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train_recovery.py

Prints one line per epoch, then the coherence table: per modality, the accuracy of a
unimodal classifier on real test data ("real") and on the modality recovered from k
observed modalities ("k=1", "k=2", ...). The model is registered as
`dymo-recovery-<dataset>`; load it with
`dymo_ray.recovery.load_registered_recovery("models:/dymo-recovery-<dataset>@latest")`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dymo_ray.config import (  # noqa: E402
    ConfigError,
    config_to_dict,
    merge_job_config,
)
from dymo_ray.train.recovery_loop import SMOKE_OVERRIDES, RecoveryTrainConfig  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", help="polymnist (default) or mdt")
    parser.add_argument("--model", help="mopoe (default), mmvae_plus or cmvae")
    parser.add_argument("--config", help="YAML file of RecoveryTrainConfig keys")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set latent_dim=512 (repeatable)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny preset: 1024 training rows, 1 epoch (about a minute)")
    parser.add_argument("--epochs", type=int, help="number of training epochs")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (0 runs in-process)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL")
    parser.add_argument("--data-dir", help="built dataset folder (default: the run folder)")
    return parser.parse_args(argv)


def build_recovery_config(args: argparse.Namespace) -> RecoveryTrainConfig:
    """Merge, in order: defaults, --config YAML, --smoke, flags, --set overrides."""
    flags = {
        "dataset": args.dataset,
        "model": args.model,
        "epochs": args.epochs,
        "num_workers": args.num_workers,
        "use_gpu": True if args.use_gpu else None,
        "data_dir": args.data_dir,
    }
    preset = SMOKE_OVERRIDES if args.smoke else None
    return merge_job_config(RecoveryTrainConfig, preset, flags, args.set, args.config)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = parse_args(argv)
    try:
        cfg = build_recovery_config(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from dymo_ray.data.spec import CardError
    from dymo_ray.train.common import ClusterTooSmallError, init_ray
    from dymo_ray.train.recovery_job import run_recovery_training

    init_ray()
    try:
        outcome = run_recovery_training(cfg)
    except (ConfigError, CardError, ClusterTooSmallError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(f"\nMLflow run: {outcome.run_id}")
    print(f"registered: {outcome.model_uri} (files in {outcome.recovery_dir})")
    print(f"final training loss: {outcome.final_loss:.2f} after {outcome.epochs_run} epochs")
    print(f"\nCoherence of recovered modalities (accuracy %, {outcome.config.model}):")
    print(outcome.coherence.format())
    print(f"\nresolved config: {config_to_dict(outcome.config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
