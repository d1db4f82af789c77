"""`txnbackup reap` by hand: it ends a running QEMU VM's backup through the VM's QMP socket
only on the VM's own node (``--node``); anywhere else it never opens that socket.

The VM's node has no worker here (its begin waits in the queue until the queue timeout), and
the QMP socket is a listener of the test's own that counts connections and closes them (QEMU
gone, as far as the rollback can tell).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fleet import env_for_workers
from tests.fleet_plugin import Fleet
from txnbackup.qemu.vm import QemuVM
from txnbackup.repository import Repository

TXNBACKUP = str(Path(sys.executable).parent / "txnbackup")


class CountingSocket:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="txnb-reap-", dir="/tmp")
        self.path = f"{self.dir}/qmp.sock"
        self.accepted = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()
        Path(self.path).unlink(missing_ok=True)
        Path(self.dir).rmdir()


@pytest.fixture
def qmp_socket() -> Iterator[CountingSocket]:
    listener = CountingSocket()
    try:
        yield listener
    finally:
        listener.close()


def run_reap(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    env = env_for_workers(fleet.env)
    cmd = [TXNBACKUP, "reap", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)


def reap(fleet: Fleet, *nodes: str) -> dict[str, str]:
    done = run_reap(fleet, "--json", *(x for n in nodes for x in ("--node", n)))
    assert done.returncode == 0, done.stderr
    result: dict[str, str] = json.loads(done.stdout)
    return result


def test_reap_opens_the_qmp_socket_of_its_own_node_only(
    make_fleet: Callable[[dict[str, str]], Fleet], qmp_socket: CountingSocket, tmp_path: Path
) -> None:
    fleet = make_fleet({"TXNBACKUP_QUEUE_TIMEOUT": "1", "TXNBACKUP_LEASE_TTL": "1"})
    producer = fleet.producer
    repo = Repository.init(tmp_path / "repo", 64 * 1024)
    # Given a QEMU backup of node qnode that no worker took for longer than the queue timeout
    backup = producer.submit("100", [], repository=repo.path, qmp=QemuVM(qmp_socket.path, "qnode"))
    time.sleep(1.5)

    # When the reaper runs by hand on a host that is not qnode (no --node, or another one)
    assert reap(fleet) == {backup: "abandon"}
    # Then it records why and leaves QEMU to qnode: the socket was never opened
    assert qmp_socket.accepted == 0
    status = producer.status(backup)
    assert status.active and status.errmsg.startswith("no worker took the next drive")
    time.sleep(1.2)  # the first reaper's claim on the backup expires
    assert reap(fleet, "othernode") == {backup: "abandon"}
    assert qmp_socket.accepted == 0

    # When it runs on qnode, it rolls back there, through the VM's socket
    time.sleep(1.2)
    assert reap(fleet, "qnode") == {backup: "abandon"}
    assert qmp_socket.accepted == 1
    status = producer.status(backup)
    assert status.status == "error" and status.errmsg.startswith("no worker took the next drive")


def test_reap_refuses_a_bad_node_name(make_fleet: Callable[[dict[str, str]], Fleet]) -> None:
    fleet = make_fleet({})
    done = run_reap(fleet, "--node", "../x")
    assert done.returncode != 0
    assert "node '../x' must match" in done.stderr and "Traceback" not in done.stderr
