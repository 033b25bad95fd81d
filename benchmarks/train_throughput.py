"""Training throughput of encode-once subset training against re-encoding per subset.

    python benchmarks/train_throughput.py --threads 2

Single process. Each training step draws A subsets, computes the incomplete-simulation loss
(cross-entropy plus the prototype loss, switched on), backpropagates and takes an Adam step.
Three ways to compute the same loss run on the same batches and the same subsets, each from
the same initial weights:

* re-encode, all tokens: per subset, encode the batch and run the fusion on all N + 1 tokens
  with masked keys (what the authors' code does);
* re-encode, kept tokens: per subset, `model(inputs, subset)`, which drops the tokens
  outside the subset but still re-encodes;
* encode once: `subset_loss`, which encodes once and fuses the kept tokens per subset.

The methods take turns step by step, and samples/s is the batch size over the median step
time, so that the load of a busy machine weighs less and falls on all methods alike. With
`--clock cpu` a step is timed by the CPU time of this process instead, which shows the work
of each method even when other processes share the cores. NOTE: idle OpenMP threads may
spin, so CPU time on a busy machine overstates the work somewhat.

The first-step losses of the three methods are compared as a check that they compute the
same thing. The data is the built polymnist train split when it exists under the run folder
(or `--data`), else random uint8 images of the same shape.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from dymo_ray.data.spec import DatasetCard, ModalitySpec
from dymo_ray.models.backbone import BackboneConfig, FusionBackbone
from dymo_ray.models.losses import sample_subsets, subset_loss, subset_loss_reencode
from dymo_ray.paths import data_dir

METHODS = ("re-encode, all tokens", "re-encode, kept tokens", "encode once")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps", type=int, default=5, help="timed training steps per method and A"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per batch")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    parser.add_argument(
        "--subsets", default="1,2,5", help="comma-separated numbers of subsets per batch (A)"
    )
    parser.add_argument(
        "--data", default=None, help="built polymnist folder (default: <run folder>/data/polymnist)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, batches and subsets")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="time steps by wall clock, or by this process's CPU time (all threads together), "
        "which other processes on a busy machine disturb less",
    )
    return parser.parse_args()


def polymnist_card() -> DatasetCard:
    modalities = [ModalitySpec(f"m{i}", "image", (3, 28, 28), "uint8") for i in range(5)]
    return DatasetCard("polymnist", modalities, [str(digit) for digit in range(10)])


def load_batches(args: argparse.Namespace, count: int) -> tuple[DatasetCard, list, str]:
    """Return the card, `count` batches of (inputs, labels) and a note on where they came from."""
    folder = Path(args.data) if args.data else data_dir("polymnist")
    rows = count * args.batch_size
    if (folder / "card.json").exists():
        from dymo_ray.data.io import load_split

        split = load_split(folder, "train", limit=rows)
        if len(split) == rows:
            batches = []
            for start in range(0, rows, args.batch_size):
                rows_of_batch = slice(start, start + args.batch_size)
                inputs = {name: tensor[rows_of_batch] for name, tensor in split.inputs.items()}
                batches.append((inputs, split.labels[rows_of_batch]))
            return split.card, batches, f"built data {folder} (train split, {rows} rows)"

    card = polymnist_card()
    generator = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(count):
        inputs = {
            spec.name: torch.randint(
                0, 256, (args.batch_size, *spec.shape), generator=generator, dtype=torch.uint8
            )
            for spec in card.modalities
        }
        labels = torch.randint(0, card.num_classes, (args.batch_size,), generator=generator)
        batches.append((inputs, labels))
    return card, batches, "random uint8 images of polymnist shape (no built data found)"


def loss_function(method: str):
    if method == "encode once":
        return subset_loss
    if method == "re-encode, kept tokens":
        return lambda *args, **kwargs: subset_loss_reencode(*args, **kwargs, token_dropping=True)
    return subset_loss_reencode


def run_methods(
    card: DatasetCard,
    batches: list,
    subsets: list[torch.Tensor],
    prototypes: torch.Tensor,
    warmup: int,
    seed: int,
    clock,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Train one model per method on every batch, the methods taking turns step by step.

    Taking turns spreads the load of a shared machine evenly over the methods. Returns the
    timed step durations and the first-step loss of each method.
    """
    models, optimizers = {}, {}
    for method in METHODS:
        torch.manual_seed(seed)  # the same initial weights for every method
        models[method] = FusionBackbone(card, BackboneConfig.for_card(card)).train()
        optimizers[method] = torch.optim.Adam(models[method].parameters(), lr=1e-3)
    durations: dict[str, list[float]] = {method: [] for method in METHODS}
    first_losses: dict[str, float] = {}

    for step, ((inputs, labels), step_subsets) in enumerate(zip(batches, subsets)):
        for method in METHODS:
            start = clock()
            output = loss_function(method)(
                models[method], inputs, labels, step_subsets, prototypes,
                aux_weight=1.0, temperature=0.1, aux_enabled=True,
            )
            optimizers[method].zero_grad(set_to_none=True)
            output.loss.backward()
            optimizers[method].step()
            elapsed = clock() - start
            if step == 0:
                first_losses[method] = output.loss.item()
            if step >= warmup:
                durations[method].append(elapsed)
    return durations, first_losses


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    counts = [int(value) for value in args.subsets.split(",")]
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    load_before = os.getloadavg()

    card, batches, source = load_batches(args, args.warmup + args.steps)
    generator = torch.Generator().manual_seed(args.seed + 1)
    # Random unit prototypes stand in for class means, so the prototype loss is on and
    # contributes gradients as it does from the aux start epoch on.
    projection_dim = BackboneConfig.for_card(card).projection_dim
    prototypes = torch.nn.functional.normalize(
        torch.randn(card.num_classes, projection_dim, generator=generator), dim=-1
    )

    print(f"data: {source}")
    print(
        f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up, "
        f"torch threads {torch.get_num_threads()}, {args.clock} clock, "
        f"load average before {load_before[0]:.2f}"
    )
    unit = "samples/s" if args.clock == "wall" else "samples per CPU second"
    method_columns = " | ".join(f"{method} ({unit})" for method in METHODS)
    header = (
        f"| A | {method_columns} | speed-up vs all tokens | vs kept tokens "
        "| max first-loss diff |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for count in counts:
        subsets = [sample_subsets(card.num_modalities, count, generator) for _ in batches]
        durations, losses = run_methods(
            card, batches, subsets, prototypes, args.warmup, args.seed, clock
        )
        rates = {m: args.batch_size / statistics.median(durations[m]) for m in METHODS}
        loss_gap = max(abs(losses[m] - losses["encode once"]) for m in METHODS)
        cells = " | ".join(f"{rates[m]:.0f}" for m in METHODS)
        print(
            f"| {count} | {cells} | {rates['encode once'] / rates[METHODS[0]]:.2f}x "
            f"| {rates['encode once'] / rates[METHODS[1]]:.2f}x | {loss_gap:.1e} |"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f} (1-minute)")


if __name__ == "__main__":
    main()
