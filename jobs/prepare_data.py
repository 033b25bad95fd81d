"""Build an offline dataset as Parquet splits with a dataset card.

    python jobs/prepare_data.py --dataset polymnist
    python jobs/prepare_data.py --dataset mdt --out /tmp/mdt --seed 1
    python jobs/prepare_data.py --dataset polymnist --mnist-dir ~/mnist      # full-size
    python jobs/prepare_data.py --dataset polymnist --polymnist-dir ~/PolyMNIST
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from dymo_ray import paths
from dymo_ray.data.builders import DATASETS, build_dataset, describe_card


def parse_multiplicity(text: str) -> dict[str, int]:
    """Parse "train=4,val=1,test=2" (any subset of the splits)."""
    out = {}
    for item in text.split(","):
        split, separator, value = item.partition("=")
        if not separator or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"invalid multiplicity {item!r}; expected split=count, e.g. train=4,test=2"
            )
        out[split.strip()] = int(value)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, default="polymnist", help="dataset to build")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <run folder>/data/<dataset>)"
    )
    parser.add_argument("--seed", type=int, default=0, help="build seed (default: 0)")

    parser.add_argument(
        "--multiplicity",
        type=parse_multiplicity,
        default=None,
        help="permutation rounds per split, e.g. train=4,val=1,test=2 (default: the dataset's)",
    )
    parser.add_argument(
        "--per-class-limit",
        type=int,
        default=None,
        help="use at most this many source images per class (small builds for trials)",
    )

    parser.add_argument(
        "--mnist-dir", type=Path, default=None, help="polymnist only: folder of MNIST IDX files (full size)"
    )
    parser.add_argument(
        "--polymnist-dir",
        type=Path,
        default=None,
        help="polymnist only: official PolyMNIST folder <split>/m<k>/<i>.<label>.png to convert",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    args = parser.parse_args(argv)
    if args.dataset != "polymnist" and (args.mnist_dir or args.polymnist_dir):
        parser.error("--mnist-dir and --polymnist-dir apply to --dataset polymnist only")
    if args.mnist_dir and args.polymnist_dir:
        parser.error("pass either --mnist-dir or --polymnist-dir, not both")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out_dir = (args.out if args.out is not None else paths.data_dir(args.dataset)).expanduser().resolve()

    options: dict[str, object] = {"progress": not args.no_progress}
    if args.multiplicity is not None:
        options["multiplicity"] = args.multiplicity
    if args.per_class_limit is not None:
        options["per_class_limit"] = args.per_class_limit
    if args.mnist_dir is not None:
        options["mnist_dir"] = args.mnist_dir.expanduser().resolve()
    if args.polymnist_dir is not None:
        options["polymnist_dir"] = args.polymnist_dir.expanduser().resolve()

    start = time.perf_counter()
    result = build_dataset(args.dataset, out_dir, args.seed, **options)
    elapsed = time.perf_counter() - start

    print(describe_card(result.card, result.out_dir))
    print(f"card: {result.out_dir / 'card.json'}")
    print(f"built in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
