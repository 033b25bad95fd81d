"""Sweep the prototype-loss temperature t and the subsets per batch A with Ray Tune.

    python jobs/tune.py --smoke                              # 4 tiny trials, a few minutes
    python jobs/tune.py --num-samples 8 --epochs 4 --set train_limit=4000
    python jobs/tune.py --objective val_dymo --tune-tau      # rank trials by DyMo's accuracy
    python jobs/tune.py --resume --name sweep-polymnist-...  # continue an interrupted sweep

Each trial runs the training loop of jobs/train.py in one process and logs to an MLflow
child run of the sweep's parent run. At the end the job prints a table of the trials, writes
the best config as YAML for `jobs/train.py --config`, plots validation accuracy against t,
and registers the best trial's bundle as dymo-backbone with the alias `tuned`.
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
    build_config,
    config_to_dict,
    merge_job_config,
)
from dymo_ray.tune.settings import (  # noqa: E402
    OBJECTIVES,
    SCHEDULERS,
    SEARCHERS,
    SMOKE_SWEEP_OVERRIDES,
    SweepConfig,
)

EXIT_INVALID = 2
EXIT_INTERRUPTED = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--name", help="sweep name, also the folder <run folder>/tune/<name>")
    sweep.add_argument("--resume", action="store_true",
                       help="continue the interrupted sweep --name with the settings saved at "
                            "its start (other flags are ignored)")
    sweep.add_argument("--num-samples", type=int, help="number of trials (default 8)")
    sweep.add_argument("--max-concurrent", type=int,
                       help="trials at once (default: as many as the cluster's CPUs fit)")
    sweep.add_argument("--cpus-per-trial", type=float, help="CPUs reserved per trial (default 1)")
    sweep.add_argument("--scheduler", help=f"one of {list(SCHEDULERS)} (default asha)")
    sweep.add_argument("--grace-period", type=int,
                       help="ASHA: epochs before a trial can be stopped (default 1)")
    sweep.add_argument("--search", help=f"one of {list(SEARCHERS)} (default random; optuna "
                                        "needs the `tune` extra)")
    sweep.add_argument("--search-seed", type=int, help="seed of the searcher (default 0)")
    sweep.add_argument("--objective", help=f"one of {list(OBJECTIVES)} (default val_acc)")
    sweep.add_argument("--protocol", help="missingness protocol of val_dymo (default random:0.6)")
    sweep.add_argument("--recovery",
                       help="recovery model of val_dymo: a models:/ URI, zeros or noise "
                            "(default models:/dymo-recovery-<dataset>@latest)")
    sweep.add_argument("--temperature-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="log-uniform range of the temperature t (default 0.02 1.0)")
    sweep.add_argument("--subsets-range", type=int, nargs=2, metavar=("LOW", "HIGH"),
                       help="integer range of subsets_per_batch, inclusive (default 1 2^M-1)")
    sweep.add_argument("--tune-tau", action="store_true",
                       help="also sample the selection temperature tau (val_dymo only)")
    sweep.add_argument("--tau-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="log-uniform range of tau (default 0.02 1.0)")
    sweep.add_argument("--tau", type=float, help="selection temperature when not sampled (default 0.1)")
    sweep.add_argument("--smoke", action="store_true",
                       help="tiny preset: 4 trials of 2 epochs on 1,024 training rows")

    train = parser.add_argument_group("training settings shared by every trial")
    train.add_argument("--dataset", help="polymnist (default) or mdt")
    train.add_argument("--config", help="YAML file of TrainConfig keys")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one TrainConfig key, e.g. --set train_limit=4000 (repeatable)")
    train.add_argument("--epochs", type=int, help="epochs per trial (ASHA's max_t)")
    train.add_argument("--data-dir", help="built dataset folder (default: the run folder)")
    return parser.parse_args(argv)


def build_configs(args: argparse.Namespace) -> tuple[SweepConfig, TrainConfig]:
    """Merge defaults, --config, --smoke, flags and --set into the two configs."""
    flags = {"dataset": args.dataset, "epochs": args.epochs, "data_dir": args.data_dir}
    preset = SMOKE_OVERRIDES if args.smoke else None
    train_cfg = merge_job_config(TrainConfig, preset, flags, args.set, args.config)

    sweep_values: dict = dict(SMOKE_SWEEP_OVERRIDES) if args.smoke else {}
    sweep_flags = {
        "name": args.name,
        "num_samples": args.num_samples,
        "max_concurrent": args.max_concurrent,
        "cpus_per_trial": args.cpus_per_trial,
        "scheduler": args.scheduler,
        "grace_period": args.grace_period,
        "search": args.search,
        "search_seed": args.search_seed,
        "objective": args.objective,
        "protocol": args.protocol,
        "recovery": args.recovery,
        "temperature_range": args.temperature_range,
        "subsets_range": args.subsets_range,
        "tune_tau": True if args.tune_tau else None,
        "tau_range": args.tau_range,
        "tau": args.tau,
    }
    sweep_values.update({k: v for k, v in sweep_flags.items() if v is not None})
    return build_config(SweepConfig, sweep_values), train_cfg


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = parse_args(argv)
    if args.resume and not args.name:
        print("error: --resume needs --name, the sweep to continue", file=sys.stderr)
        return EXIT_INVALID
    try:
        sweep, train_cfg = build_configs(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID

    from dymo_ray.data.spec import CardError
    from dymo_ray.train.common import ClusterTooSmallError, init_ray
    from dymo_ray.tune.driver import resume_sweep, run_sweep

    init_ray()
    try:
        outcome = resume_sweep(args.name) if args.resume else run_sweep(sweep, train_cfg)
    except (ConfigError, CardError, ClusterTooSmallError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID

    print(f"\nsweep {outcome.name}: Tune state in {outcome.path}")
    print(f"MLflow parent run: {outcome.parent_run_id}")
    print(outcome.table())
    if outcome.interrupted:
        print(f"\ninterrupted; resume with: python jobs/tune.py --resume --name {outcome.name}")
        return EXIT_INTERRUPTED
    best = outcome.best
    print(f"\nbest trial {best.trial_id}: temperature {best.temperature:.4g}, subsets_per_batch "
          f"{best.subsets_per_batch}, tau {best.tau:.4g}, {outcome.objective} {best.objective:.4f}")
    print(f"best config: {config_to_dict(outcome.best_config)}")
    print(f"best config YAML: {outcome.best_config_path}")
    print(f"  train it with: python jobs/train.py --config {outcome.best_config_path}")
    print(f"plot: {outcome.plot_path}")
    print(f"registered: {outcome.model_uri} (load it as {outcome.alias_uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
