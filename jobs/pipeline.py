"""Run the whole dymo_ray pipeline on the embedded defaults (what `make demo` runs).

Stages on polymnist: build the offline datasets and print their cards, train the MoPoE
recovery model and print its coherence table, train the backbone (both on Ray Train, tracked
and registered in MLflow) and print the discard table, then evaluate discard, impute-all,
DyMo and oracle under random missingness and print that table.

    python jobs/pipeline.py            # full run, see README for the time it takes
    python jobs/pipeline.py --smoke    # the same stages on tiny presets
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def banner(title: str) -> None:
    print(f"\n{'=' * 78}\n== {title}\n{'=' * 78}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny presets of every stage")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from dymo_ray.data.builders import describe_card, ensure_dataset
    from dymo_ray.data.io import load_card
    from dymo_ray.paths import run_dir
    from dymo_ray.tracking import tracking_uri

    started = time.perf_counter()
    print(f"run folder: {run_dir()}\nMLflow store: {tracking_uri()}")

    banner("1. datasets")
    for name in ("polymnist", "mdt"):
        folder = ensure_dataset(name)
        print(describe_card(load_card(folder), folder), flush=True)

    smoke = ["--smoke"] if args.smoke else []
    banner("2. recovery model: MoPoE (Ray Train, MLflow)")
    import evaluate  # jobs/evaluate.py, beside this script
    import train  # jobs/train.py
    import train_recovery  # jobs/train_recovery.py

    status = train_recovery.main(["--dataset", "polymnist", "--model", "mopoe"] + smoke)
    if status != 0:
        return status

    banner("3. backbone (Ray Train, MLflow)")
    status = train.main(["--dataset", "polymnist"] + smoke)
    if status != 0:
        return status

    banner("4. evaluation: discard, impute-all, DyMo, oracle")
    limit = ["--limit", "512", "--no-progress"] if args.smoke else ["--no-progress"]
    status = evaluate.main(["--dataset", "polymnist"] + limit)
    if status != 0:
        return status

    minutes = (time.perf_counter() - started) / 60
    banner(f"done in {minutes:.1f} min")
    print(f"browse the runs: mlflow ui --backend-store-uri {tracking_uri()}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
