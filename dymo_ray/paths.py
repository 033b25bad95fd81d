"""Where dymo_ray writes its outputs: one run folder, resolved to an absolute path.

Ray Train workers, Tune trials and `ray job submit --working-dir` all change the working
directory, so every path is resolved in the driver and passed on as an absolute path.
"""

from __future__ import annotations

import os
from pathlib import Path

RUN_DIR_ENV = "DYMO_RAY_HOME"


def project_root() -> Path:
    """Return the folder above the installed `dymo_ray` package (the repository root)."""
    return Path(__file__).resolve().parent.parent


def run_dir() -> Path:
    """Return the absolute run folder: `$DYMO_RAY_HOME`, else `<repository>/runs`."""
    configured = os.environ.get(RUN_DIR_ENV)
    root = Path(configured).expanduser() if configured else project_root() / "runs"
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_dir(dataset: str) -> Path:
    """Return the default folder of a built dataset: `<run folder>/data/<dataset>`."""
    return run_dir() / "data" / dataset
