"""Throughput of DyMo selection: batched selector vs the literal reference vs the plain backbone.

    python benchmarks/selection_throughput.py --threads 2

Setup: a random-weight FusionBackbone with the PolyMNIST defaults (5 modalities of 3x28x28
uint8, 10 classes, cosine metric). Calibration statistics come from random images with
balanced random labels. Each row of the random uint8 inputs misses k of the 5 modalities,
drawn at random. Recovery is not part of the timing.

For every batch size and k the script times:
    reference  the literal per-sample selection of tests/selection/literal_selection.py
               (two full backbone passes per candidate). It runs on the first
               --reference-samples rows only; its samples/s is extrapolated from that.
    dymo       `select` on the whole batch (encoders once, one fusion call per step).
    plain      `model(inputs, present)`, the backbone on the observed modalities.
Targets: dymo >= 10x the reference at batch 256 with 4 missing, and dymo <= 2x plain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "selection"))

from literal_selection import reference_select  # noqa: E402

from dymo_ray.data.spec import DatasetCard, ModalitySpec  # noqa: E402
from dymo_ray.models.backbone import BackboneConfig, FusionBackbone  # noqa: E402
from dymo_ray.selection import SelectionConfig, compute_calibration_stats, select  # noqa: E402

NUM_MODALITIES = 5
NUM_CLASSES = 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device of the backbone")
    parser.add_argument("--batch-sizes", default="1,32,256", help="comma-separated batch sizes")
    parser.add_argument(
        "--missing", default="1,2,3,4", help="comma-separated k, the modalities missing per row"
    )
    parser.add_argument(
        "--reference-samples",
        type=int,
        default=8,
        help="rows timed with the reference per configuration (its samples/s is extrapolated)",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=1.0,
        help="seconds to time dymo and plain for (at least 3 runs each); the median is reported",
    )
    parser.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    parser.add_argument("--no-traces", action="store_true", help="time select without traces")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def polymnist_card() -> DatasetCard:
    modalities = [
        ModalitySpec(f"m{i}", "image", (3, 28, 28), "uint8") for i in range(NUM_MODALITIES)
    ]
    return DatasetCard("polymnist", modalities, [str(digit) for digit in range(NUM_CLASSES)])


def random_images(batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"m{i}": torch.randint(0, 256, (batch, 3, 28, 28), generator=generator, dtype=torch.uint8)
        for i in range(NUM_MODALITIES)
    }


def random_present(batch: int, missing: int, generator: torch.Generator) -> torch.Tensor:
    """Bool (batch, M), True = observed, with exactly `missing` modalities missing per row."""
    order = torch.rand(batch, NUM_MODALITIES, generator=generator).argsort(dim=1)
    return order >= missing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(functions: dict, device: torch.device, min_seconds: float) -> dict:
    """Return the median wall time in seconds of each function, after one warm-up call each.

    The functions run in turn, round after round, so that a change in machine load affects
    all of them alike and their ratio stays meaningful on a shared machine.
    """
    for function in functions.values():
        function()
    synchronize(device)
    durations: dict = {name: [] for name in functions}
    started = time.perf_counter()
    rounds = 0
    while rounds < 3 or time.perf_counter() - started < min_seconds:
        for name, function in functions.items():
            begin = time.perf_counter()
            function()
            synchronize(device)
            durations[name].append(time.perf_counter() - begin)
        rounds += 1
    return {name: statistics.median(values) for name, values in durations.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch_sizes = [int(value) for value in args.batch_sizes.split(",")]
    missing_counts = [int(value) for value in args.missing.split(",")]
    load_before = os.getloadavg()

    # ------------------------------------------------------------------ model and statistics
    torch.manual_seed(args.seed)
    card = polymnist_card()
    model = FusionBackbone(card, BackboneConfig.for_card(card, metric=args.metric))
    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(args.seed)
    calibration_rows = 20 * NUM_CLASSES
    labels = torch.arange(calibration_rows) % NUM_CLASSES
    calibration_inputs = random_images(calibration_rows, generator)
    stats = compute_calibration_stats(model, [(calibration_inputs, labels)], NUM_CLASSES)
    config = SelectionConfig()
    form = config.calibration_form(stats.metric)
    with_traces = not args.no_traces

    print(
        f"# selection throughput: PolyMNIST-default backbone ({args.metric}, random weights), "
        f"device {device}, {args.threads} threads, traces {'on' if with_traces else 'off'}"
    )
    print(
        f"# reference: first {args.reference_samples} rows of each batch, samples/s extrapolated "
        "from their per-sample time; dymo and plain: median over >= 3 interleaved runs of the "
        "whole batch"
    )
    header = (
        f"{'batch':>5} {'missing':>7} {'ref samp/s':>11} {'dymo samp/s':>12} {'speedup':>8} "
        f"{'plain ms':>9} {'dymo ms':>9} {'dymo/plain':>10} {'rows/sample':>11} {'same':>5}"
    )
    print(header)
    print("-" * len(header))

    for batch in batch_sizes:
        for missing in missing_counts:
            inputs = random_images(batch, generator)
            present = random_present(batch, missing, generator)
            device_inputs = {name: value.to(device) for name, value in inputs.items()}
            device_present = present.to(device)

            def run_plain() -> None:
                with torch.no_grad():
                    model(device_inputs, device_present)

            def run_dymo():
                return select(
                    model, stats, device_inputs, device_present, config, with_traces=with_traces
                )

            medians = time_interleaved(
                {"plain": run_plain, "dymo": run_dymo}, device, args.min_seconds
            )
            plain_seconds, dymo_seconds = medians["plain"], medians["dymo"]
            result = run_dymo()

            # The reference runs on the CPU copy of the first rows, one sample at a time.
            rows = min(batch, args.reference_samples)
            reference_inputs = {name: value[:rows] for name, value in device_inputs.items()}
            begin = time.perf_counter()
            outcomes = reference_select(
                model, stats, reference_inputs, present[:rows], config.tau, form
            )
            synchronize(device)
            reference_per_sample = (time.perf_counter() - begin) / rows
            same = all(
                outcome.selected == result.selected[row].tolist()
                and outcome.rejected == result.rejected[row].tolist()
                for row, outcome in enumerate(outcomes)
            )

            dymo_rate = batch / dymo_seconds
            reference_rate = 1.0 / reference_per_sample
            print(
                f"{batch:>5} {missing:>7} {reference_rate:>11.1f} {dymo_rate:>12.1f} "
                f"{dymo_rate / reference_rate:>7.1f}x {plain_seconds * 1e3:>9.2f} "
                f"{dymo_seconds * 1e3:>9.2f} {dymo_seconds / plain_seconds:>9.2f}x "
                f"{result.fused_rows / batch:>11.2f} {'yes' if same else 'NO':>5}",
                flush=True,
            )

    load_after = os.getloadavg()
    print(
        f"# load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}, "
        f"on {os.cpu_count()} CPUs; rows/sample = rows fused per sample, the base pass included"
    )


if __name__ == "__main__":
    main()
