"""`ray job submit` of jobs/train.py to a real Ray head started by the test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def ray_head():
    """A separate Ray head (1 CPU) with a dashboard on 127.0.0.1; stopped after the test."""
    # Ray's socket paths must stay short, so the temp folder is directly under /tmp.
    temp_dir = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")
    dashboard_port = free_port()
    env = dict(os.environ)
    # The job's `python` comes from the head's PATH: put this environment's first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
            "--num-cpus=1", f"--port={free_port()}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}",
            # The session's own local Ray already uses the default agent port (52365); a
            # head whose agent cannot bind it rejects jobs with "No available agent".
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
        ],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", dashboard_port), timeout=1):
                break
        except OSError:
            if head.poll() is not None:
                raise RuntimeError(f"ray start failed: {head.stdout.read().decode()[-2000:]}")
            time.sleep(1)
    else:
        head.terminate()
        raise RuntimeError("the Ray dashboard did not open within 90 s")
    yield address, env
    # SIGTERM makes `ray start --block` stop every process of this head, and only those.
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_job_submit_trains_and_registers(ray_head, tiny_polymnist, tmp_path):
    from mlflow.tracking import MlflowClient

    address, env = ray_head
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": store, "DYMO_RAY_HOME": str(tmp_path)}}
    # Ray 2.60 heads require a token; clients send ~/.ray/auth_token when RAY_AUTH_MODE=token.
    env["RAY_AUTH_MODE"] = "token"
    command = [
        str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address,
        "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
        "python", "jobs/train.py", "--smoke", "--num-workers", "1",
        "--data-dir", str(tiny_polymnist), "--set", "width=32", "--set", "heads=2",
        "--set", "torch_threads=1",
    ]
    # The dashboard port opens before the head's job agent is ready, which the first
    # submissions can meet as "No available agent to submit job": retry those only.
    for _ in range(20):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=450, cwd=REPO)
        output = result.stdout + result.stderr
        if "No available agent" not in output:
            break
        time.sleep(3)
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output, output[-4000:]
    assert "Test accuracy of discard" in output, output[-4000:]

    versions = MlflowClient(store).search_model_versions("name='dymo-backbone'")
    assert len(versions) == 1
