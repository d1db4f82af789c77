"""Real worker processes and sample VMs for the pipeline tests."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqp.exceptions import ChannelError as AmqpChannelError
from celery import Celery
from kombu.exceptions import ChannelError

from tasks.queues import CONTROL_QUEUE
from txnbackup.drive import Drive
from txnbackup.status import BackupStatus
from txnbackup.tracker import Tracker

READY_TIMEOUT = 60.0


@dataclass
class WorkerProcess:
    node: str
    name: str
    log: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill_all(self) -> None:
        """SIGKILL the worker and its pool at once, as a host loss or the OOM killer would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def pool_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def worker_command(node: str, name: str) -> list[str]:
    """The default node runs plain `celery -A tasks worker`; others `txnbackup worker`."""
    bindir = Path(sys.executable).parent
    if node == "default":
        return [str(bindir / "celery"), "-A", "tasks", "worker", "-l", "info", "--hostname", name]
    return [str(bindir / "txnbackup"), "worker", "--node", node, "--name", name]


def start_worker(
    node: str, env: dict[str, str], logdir: Path, args: Sequence[str] = ()
) -> WorkerProcess:
    """``args``: more options (for `txnbackup worker`, so not on the default node)."""
    name = f"{node}-{uuid.uuid4().hex[:6]}@test"
    log = logdir / f"worker-{name.partition('@')[0]}.log"
    cmd = [*worker_command(node, name), *args]
    cmd += ["--concurrency", "2", "--without-gossip", "--without-mingle"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    worker = WorkerProcess(node, name, log, proc)
    deadline = time.monotonic() + READY_TIMEOUT
    while "revoke watcher started" not in worker.log_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            raise RuntimeError(f"worker {name} did not start:\n{worker.log_text()}")
        time.sleep(0.1)
    return worker


@dataclass
class SampleVM:
    """A VM whose drives are real raw files; writes are reported like a real writer would."""

    vmid: str
    root: Path
    tracker: Tracker
    drives: list[Drive] = field(default_factory=list)

    def add_drive(self, name: str, size: int, seed: int, node: str = "default") -> Drive:
        path = self.root / f"{self.vmid}-{name}.raw"
        path.write_bytes(sample_content(size, seed))
        drive = Drive(name, str(path), node)
        self.drives.append(drive)
        return drive

    def write(self, drive: str, offset: int, data: bytes) -> None:
        path = Path(self.path(drive))
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(data)
        self.tracker.mark_dirty(self.vmid, drive, offset, len(data))

    def path(self, drive: str) -> str:
        return next(d.path for d in self.drives if d.name == drive)

    def content(self, drive: str) -> bytes:
        return Path(self.path(drive)).read_bytes()


def sample_content(size: int, seed: int) -> bytes:
    """Half random, a quarter zeros, a quarter log-like text: all three chunk kinds."""
    rng = random.Random(seed)
    quarter = size // 4
    text = b"".join(b"%08d guest log line seed %d\n" % (i, seed) for i in range(size // 16))
    data = rng.randbytes(2 * quarter) + bytes(quarter) + text
    return data[:size]


def new_vmid() -> str:
    return f"vm{uuid.uuid4().hex[:10]}"


def wait_for(predicate: object, timeout: float = 30.0, what: str = "condition") -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def drive_state(status: BackupStatus, name: str) -> str:
    return next(d.state for d in status.drives if d.name == name)


def env_for_workers(base: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(base)
    return env


def control_queue_empty(app: Celery) -> bool:
    """No message waits in the control queue (commits and rollbacks) of the app's broker."""
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel  # the stubs' StdChannel lacks queue_declare
        try:
            _, waiting, _ = channel.queue_declare(CONTROL_QUEUE, passive=True)
        except (ChannelError, AmqpChannelError):  # a drained queue has no Redis key left
            return True
    return int(waiting) == 0
