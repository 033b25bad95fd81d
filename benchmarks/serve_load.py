"""Load test of the running prediction service: latency and throughput per concurrency level.

    serve run serve_configs/cpu.yaml                 # in one shell
    python benchmarks/serve_load.py                  # in another

Sends real PolyMNIST test samples, with modalities hidden by a missingness protocol
(default `random:0.6`), to `POST /v1/predict` (recovery + DyMo selection) and to the
reference `POST /v1/classify` (the same backbone on the observed modalities only). For each
endpoint and concurrency level, it sends a short warm-up, then a fixed number of requests
from a pool of `concurrency` async workers. It prints one table row per level: p50, p95 and
p99 latency, throughput, error count (anything but a 200) and degraded responses. Request
bodies are encoded once before timing, so the client's JSON encoding is not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dymo_ray.data.io import load_split  # noqa: E402
from dymo_ray.data.protocols import parse_protocol  # noqa: E402
from dymo_ray.data.text import decode_text  # noqa: E402
from dymo_ray.paths import data_dir  # noqa: E402
from dymo_ray.serve.decode import encode_png  # noqa: E402

ENDPOINTS = {"predict": "/v1/predict", "classify": "/v1/classify"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000",
                        help="base URL of the running app (default: %(default)s)")
    parser.add_argument("--data-dir", help="built polymnist folder (default: the run folder)")
    parser.add_argument("--split", default="test", help="split to draw samples from")
    parser.add_argument("--protocol", default="random:0.6",
                        help="missingness protocol applied to the samples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the protocol's mask")
    parser.add_argument("--requests", type=int, default=200,
                        help="timed requests per endpoint and concurrency level")
    parser.add_argument("--concurrency", default="1,8,32",
                        help="comma-separated concurrency levels (default: %(default)s)")
    parser.add_argument("--endpoints", default="predict,classify",
                        help=f"comma-separated, from {sorted(ENDPOINTS)}")
    parser.add_argument("--image-format", choices=("list", "png"), default="list",
                        help="send images as nested lists or base64 PNGs")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="client timeout per request")
    return parser.parse_args(argv)


def build_bodies(folder: Path, split: str, protocol: str, seed: int, count: int,
                 image_format: str) -> list[bytes]:
    """Encode `count` test rows as JSON request bodies, hiding the protocol's modalities."""
    data = load_split(folder, split, limit=count)
    present = parse_protocol(protocol, data.card.modality_names).apply(len(data), seed)
    bodies = []
    for row in range(len(data)):
        modalities = {}
        for index, spec in enumerate(data.card.modalities):
            if not bool(present[row, index]):
                continue
            values = data.inputs[spec.name][row]
            if spec.kind == "image" and image_format == "png" and values.shape[0] in (1, 3):
                modalities[spec.name] = encode_png(values.numpy())
            elif spec.kind == "text":
                modalities[spec.name] = decode_text(values, spec.alphabet).rstrip(" ")
            else:
                modalities[spec.name] = values.tolist()
        bodies.append(json.dumps({"modalities": modalities, "seed": row}).encode())
    return bodies


@dataclass
class LevelResult:
    endpoint: str
    concurrency: int
    latencies_s: list[float]
    errors: int
    degraded: int
    wall_s: float
    first_error: str | None


async def run_level(client: httpx.AsyncClient, path: str, bodies: list[bytes],
                    concurrency: int, total: int) -> LevelResult:
    """Send `total` requests from `concurrency` workers; time each one."""
    latencies: list[float] = []
    errors = 0
    degraded = 0
    first_error = None
    next_index = 0

    async def worker() -> None:
        nonlocal errors, degraded, first_error, next_index
        while next_index < total:
            body = bodies[next_index % len(bodies)]
            next_index += 1
            started = time.perf_counter()
            try:
                response = await client.post(
                    path, content=body, headers={"content-type": "application/json"}
                )
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    errors += 1
                    first_error = first_error or f"{response.status_code} {response.text[:200]}"
                    continue
                latencies.append(elapsed)
                degraded += bool(response.json().get("degraded"))
            except httpx.HTTPError as error:
                errors += 1
                first_error = first_error or f"{type(error).__name__}: {error}"

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return LevelResult(path, concurrency, latencies, errors, degraded, wall, first_error)


def format_row(result: LevelResult, endpoint: str, total: int) -> str:
    """Return one Markdown table row; latencies in milliseconds."""
    if result.latencies_s:
        percentiles = np.percentile(np.array(result.latencies_s) * 1000, [50, 95, 99])
        latency = [f"{value:.1f}" for value in percentiles]
    else:
        latency = ["-", "-", "-"]
    throughput = len(result.latencies_s) / result.wall_s if result.wall_s > 0 else 0.0
    cells = [endpoint, str(result.concurrency), str(total), *latency, f"{throughput:.1f}",
             str(result.errors), str(result.degraded)]
    return "| " + " | ".join(cells) + " |"


async def main_async(args: argparse.Namespace) -> int:
    folder = Path(args.data_dir).resolve() if args.data_dir else data_dir("polymnist")
    levels = [int(level) for level in args.concurrency.split(",") if level]
    endpoints = [name for name in args.endpoints.split(",") if name]
    unknown = sorted(set(endpoints) - set(ENDPOINTS))
    if unknown:
        raise SystemExit(f"unknown endpoints {unknown}; valid: {sorted(ENDPOINTS)}")
    bodies = build_bodies(folder, args.split, args.protocol, args.seed,
                          max(args.requests, 64), args.image_format)

    limits = httpx.Limits(max_connections=max(levels) + 4, max_keepalive_connections=max(levels))
    client = httpx.AsyncClient(base_url=args.url, timeout=args.timeout_s, limits=limits)
    async with client:
        model = (await client.get("/v1/model")).json()
        print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
              f"{os.cpu_count()} CPUs, {platform.python_version()}")
        print(f"# command: python {' '.join(sys.argv)}")
        print(f"# model {model['model_version']}, recovery {model['recovery_version']}, "
              f"data {folder} ({args.split}), protocol {args.protocol}, "
              f"images as {args.image_format}, {args.requests} timed requests per row")
        print()
        print("| endpoint | concurrency | requests | p50 ms | p95 ms | p99 ms | req/s "
              "| errors | degraded |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        failures = 0
        for name in endpoints:
            for concurrency in levels:
                # Warm-up, untimed: fills connection pools and lets batches settle.
                await run_level(client, ENDPOINTS[name], bodies, concurrency, 2 * concurrency)
                result = await run_level(client, ENDPOINTS[name], bodies, concurrency,
                                         args.requests)
                print(format_row(result, name, args.requests), flush=True)
                if result.first_error:
                    print(f"#   first error: {result.first_error}")
                failures += result.errors
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
