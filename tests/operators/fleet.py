"""What operators run beside the workers, as real processes: metrics endpoints and Flower."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.fleet import WorkerProcess

READY_TIMEOUT = 60.0
BINDIR = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[2]
FLOWER_CONFIG = REPO_ROOT / "tasks" / "flowerconfig.py"

Samples = list[tuple[str, dict[str, str], float]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_log(proc: subprocess.Popen[bytes], log: Path, *needles: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not all(n in log.read_text(errors="replace") for n in needles):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{proc.args!r} did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


@dataclass
class MetricsWorker:
    """A worker serving /metrics on 127.0.0.1:``port``, its pool's files in ``directory``."""

    worker: WorkerProcess
    port: int
    directory: Path

    def scrape(self) -> Samples:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return [
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]


def metrics_worker_command(node: str, name: str, port: int, directory: Path) -> list[str]:
    """`txnbackup worker --metrics-port` for the default node, a plain `celery worker` with the
    environment variables for the others: both ways the README documents."""
    if node == "default":
        return [
            str(BINDIR / "txnbackup"),
            "worker",
            "--node",
            node,
            "--name",
            name,
            "--metrics-port",
            str(port),
            "--metrics-address",
            "127.0.0.1",
            "--metrics-dir",
            str(directory),
        ]
    queues = f"txnbackup,txnbackup.node.{node}"
    return [str(BINDIR / "celery"), "-A", "tasks", "worker", "-Q", queues, "--hostname", name]


def start_metrics_worker(node: str, env: dict[str, str], logdir: Path) -> MetricsWorker:
    name = f"ops-{node}-{uuid.uuid4().hex[:6]}@test"
    port = free_port()
    directory = logdir / f"metrics-{node}"
    log = logdir / f"worker-{node}.log"
    cmd = metrics_worker_command(node, name, port, directory)
    cmd += ["--concurrency", "2", "--without-gossip", "--without-mingle", "--loglevel", "info"]
    env = {**env, "TXNBACKUP_METRICS_ADDRESS": "127.0.0.1"}
    if node != "default":
        env |= {"TXNBACKUP_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    wait_for_log(proc, log, "revoke watcher started", "txnbackup metrics on")
    return MetricsWorker(WorkerProcess(node, name, log, proc), port, directory)


def metric(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        value
        for sample, have, value in samples
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


@dataclass
class FlowerProcess:
    """`celery -A tasks flower` with txnbackup's config and basic authentication."""

    proc: subprocess.Popen[bytes]
    port: int
    user: str
    password: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, path: str, method: str = "GET", auth: bool = True) -> tuple[int, str]:
        req = urllib.request.Request(
            f"{self.url}{path}", method=method, data=b"" if method == "POST" else None
        )
        if auth:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def api(self, path: str, method: str = "GET") -> Any:
        code, body = self.request(path, method)
        assert code == 200, f"{method} {path}: {code} {body[:200]}"
        return json.loads(body)

    def task(self, task_id: str) -> dict[str, Any] | None:
        code, body = self.request(f"/api/task/info/{task_id}")
        return json.loads(body) if code == 200 else None

    def revoke(self, task_id: str, terminate: bool = False) -> None:
        query = "?terminate=true" if terminate else ""
        self.api(f"/api/task/revoke/{task_id}{query}", method="POST")


def start_flower(env: dict[str, str], logdir: Path) -> FlowerProcess:
    port = free_port()
    password = uuid.uuid4().hex
    log = logdir / "flower.log"
    cmd = [
        str(BINDIR / "celery"),
        "-A",
        "tasks",
        "flower",
        f"--conf={FLOWER_CONFIG}",
        f"--port={port}",
        "--address=127.0.0.1",
        f"--basic-auth=ops:{password}",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    flower = FlowerProcess(proc, port, "ops", password, log)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            if flower.request("/healthcheck", auth=False)[0] == 200:
                return flower
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"flower did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def env_with(base: dict[str, str]) -> dict[str, str]:
    """This process's environment with every txnbackup and Prometheus variable replaced."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TXNBACKUP_", "PROMETHEUS_", "FLOWER_"))
    }
    return {**env, **base}
