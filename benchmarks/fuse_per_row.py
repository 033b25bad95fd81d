"""Fusion time with one subset per row: token dropping grouped by kept-token count vs masking.

    python benchmarks/fuse_per_row.py --threads 2

Selection and evaluation fuse batches whose rows use different subsets. `fuse` groups the
rows by how many tokens they keep and runs each group on its kept tokens only, while
`_fuse_full_masked` runs every row on all N + 1 tokens with masked keys. Both give the same
output up to float rounding. The script prints the median time of each (PolyMNIST backbone,
random weights, no gradient) and the max absolute difference of the logits.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from dymo_ray.data.spec import DatasetCard, ModalitySpec
from dymo_ray.models.backbone import FusionBackbone
from dymo_ray.subsets import all_subsets


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per case")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and subsets")
    return parser.parse_args()


def median_ms(function, *args, repeats: int) -> float:
    function(*args)  # warm-up
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args)
        durations.append(time.perf_counter() - start)
    return 1000 * statistics.median(durations)


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    modalities = [ModalitySpec(f"m{i}", "image", (3, 28, 28), "uint8") for i in range(5)]
    card = DatasetCard("polymnist", modalities, [str(digit) for digit in range(10)])
    model = FusionBackbone(card).eval()
    subsets = all_subsets(5)
    generator = torch.Generator().manual_seed(args.seed)
    cases = {
        "any of 31 subsets": (0, 31),
        "one of 5 single modalities": (0, 5),
        "one of 5 four-modality subsets": (25, 30),
    }

    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    print("| batch | rows use | grouped token dropping (ms) | full masked (ms) | max logit diff |")
    print("|---|---|---|---|---|")
    for batch in (1, 32, 256):
        images = {
            spec.name: torch.randint(0, 256, (batch, *spec.shape), dtype=torch.uint8)
            for spec in card.modalities
        }
        with torch.no_grad():
            tokens = model.encode(images)
            for case, (low, high) in cases.items():
                rows = subsets[torch.randint(low, high, (batch,), generator=generator)]
                grouped = median_ms(model.fuse, tokens, rows, repeats=args.repeats)
                full = median_ms(model._fuse_full_masked, tokens, rows, repeats=args.repeats)
                gap = (model.fuse(tokens, rows)[0] - model._fuse_full_masked(tokens, rows)[0]).abs()
                print(f"| {batch} | {case} | {grouped:.1f} | {full:.1f} | {gap.max().item():.1e} |")


if __name__ == "__main__":
    main()
