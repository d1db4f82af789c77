"""What a fleet exposes on the network: Flower only with authentication and on 127.0.0.1 unless
told otherwise; a worker's metrics on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.fleet_plugin import FLEET_ENV
from tests.operators.fleet import BINDIR, FLOWER_CONFIG, env_with, free_port, stop_process
from workers.metrics import MetricsConfig


def listening_addresses(port: int) -> set[str]:
    """The local IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def flower(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [str(BINDIR / "celery"), "-A", "tasks", "flower", f"--conf={FLOWER_CONFIG}"]
    proc = subprocess.Popen(
        [*cmd, f"--port={port}", *args],
        env=env_with({**FLEET_ENV, **env}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, port


def test_flower_refuses_to_start_without_authentication() -> None:
    proc, _ = flower({})
    try:
        output, _ = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert proc.returncode != 0
    assert b"refuses to start without authentication" in output
    assert b"FLOWER_BASIC_AUTH" in output


def test_flower_listens_on_localhost_unless_told_otherwise() -> None:
    proc, port = flower({"FLOWER_BASIC_AUTH": "ops:secret-password"})
    try:
        deadline = time.monotonic() + 60
        while not listening_addresses(port) and proc.poll() is None:
            assert time.monotonic() < deadline, "flower did not start"
            time.sleep(0.1)
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        stop_process(proc)


def test_metrics_are_served_on_localhost_by_default() -> None:
    config = MetricsConfig.from_env({"TXNBACKUP_METRICS_PORT": "9808"})
    assert config is not None and config.address == "127.0.0.1"
    help_text = subprocess.run(
        [str(BINDIR / "txnbackup"), "worker", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "default: 127.0.0.1" in help_text
