"""A job that starts its own local Ray: dashboard on 127.0.0.1, no state API warnings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Ray Train's placement group watcher logs this about once a second when the local Ray has
# no dashboard, because its controller check goes through the dashboard's state API.
STATE_API_WARNING = "Failed to query Ray Train Controller actor state"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_local_job_starts_dashboard(tiny_polymnist, tmp_path):
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["DYMO_RAY_HOME"] = str(tmp_path)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    command = [
        sys.executable, "jobs/train.py", "--smoke", "--num-workers", "1",
        "--data-dir", str(tiny_polymnist), "--set", "width=32", "--set", "heads=2",
        "--set", "torch_threads=1",
    ]

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400, cwd=REPO)
    output = result.stdout + result.stderr

    assert result.returncode == 0, output[-4000:]
    assert STATE_API_WARNING not in output, output[-4000:]
    assert "dashboard at http://127.0.0.1:" in output, output[-4000:]
    assert "Test accuracy of discard" in output, output[-4000:]
