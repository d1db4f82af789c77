"""`txnbackup watch` and `backup --wait`: live progress, the final status, and Ctrl-C.

The real command in a subprocess; a pseudo-terminal where the bars are the point.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import threading
from typing import IO

from tasks.producer import Producer
from tests.fleet import SampleVM, wait_for
from tests.operators.conftest import OpsFleet
from tests.operators.fleet import BINDIR
from txnbackup.repository import Repository

MIB = 1024 * 1024
TXNBACKUP = str(BINDIR / "txnbackup")
SLOW = "1M"  # bytes per second: a 4 MiB drive takes about 4 s


def cli(fleet: OpsFleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TXNBACKUP, *args], capture_output=True, text=True, timeout=120, env=fleet.env, check=False
    )


def drive_args(vm: SampleVM) -> list[str]:
    return [f"--drive={d.name}={d.path}@{d.node}" for d in vm.drives]


def submit_slow(fleet: OpsFleet, vm: SampleVM, repo: Repository) -> str:
    vm.add_drive("scsi0", 4 * MIB, seed=1)
    vm.add_drive("scsi1", MIB, seed=2, node="node2")
    done = cli(
        fleet, "backup", vm.vmid, *drive_args(vm), "--repo", str(repo.path), "--speed-limit", SLOW
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Watching:
    """The command running with pipes; its output (stdout and stderr) read as it comes."""

    def __init__(self, fleet: OpsFleet, *args: str) -> None:
        env = {**fleet.env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [TXNBACKUP, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [self._reader(self.proc.stdout), self._reader(self.proc.stderr)]

    def _reader(self, stream: IO[bytes]) -> threading.Thread:
        def pump() -> None:
            while data := os.read(stream.fileno(), 4096):
                with self._lock:
                    self._chunks.append(data)

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        return thread

    @property
    def output(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode(errors="replace")

    def wait_for_text(self, text: str, timeout: float = 30) -> None:
        wait_for(lambda: text in self.output, timeout, repr(text))

    def answer(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.close()

    def finish(self) -> int:
        code = self.proc.wait(timeout=60)
        for thread in self._readers:
            thread.join(timeout=10)
        return code


def test_watch_follows_a_backup_to_its_end(
    ops_fleet: OpsFleet, ops_vm: SampleVM, ops_repo: Repository, ops_producer: Producer
) -> None:
    # Given a backup under way
    backup = submit_slow(ops_fleet, ops_vm, ops_repo)
    # When it is watched without a terminal
    watched = cli(ops_fleet, "watch", backup)
    # Then each drive's changes are lines, the end is the status table, the exit code 0
    assert watched.returncode == 0, watched.stderr
    out = watched.stdout
    for name in ("scsi0", "scsi1"):
        assert f"drive {name} (new, size " in out
    assert "drive scsi0 (new, size 4.0 MiB): running" in out
    assert "drive scsi0 (new, size 4.0 MiB): done, 4.0 MiB of 4.0 MiB dirty" in out
    assert re.search(r"^status +done", out, re.MULTILINE)
    # and --json prints exactly what `status --json` prints
    as_json = cli(ops_fleet, "watch", backup, "--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout) == json.loads(
        cli(ops_fleet, "status", backup, "--json").stdout
    )
    assert ops_producer.status(backup).status == "done"


def test_backup_wait_on_a_terminal_shows_a_bar_per_drive(
    ops_fleet: OpsFleet, ops_vm: SampleVM, ops_repo: Repository
) -> None:
    # Given a terminal
    ops_vm.add_drive("scsi0", 4 * MIB, seed=3)
    ops_vm.add_drive("scsi1", MIB, seed=4, node="node2")
    primary, secondary = pty.openpty()
    env = {**ops_fleet.env, "TERM": "xterm-256color", "COLUMNS": "200", "LINES": "40"}
    args = ["backup", ops_vm.vmid, *drive_args(ops_vm), "--repo", str(ops_repo.path)]
    # When a backup is run with --wait
    proc = subprocess.Popen(
        [TXNBACKUP, *args, "--speed-limit", "2M", "--wait"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    screen = _read_all(primary)
    # Then it drew one bar per drive, the running one marked, and ended with the table
    assert proc.wait(timeout=60) == 0, screen
    assert "▶ scsi0" in screen and "▶ scsi1" in screen
    assert "✓ scsi0" in screen and "✓ scsi1" in screen
    assert "of 4.0 MiB dirty, drive 4.0 MiB" in screen
    assert "of 1.0 MiB dirty, drive 1.0 MiB" in screen
    assert "/s" in screen  # throughput
    assert screen.rindex("status") > screen.rindex("✓ scsi1")


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the other side closed: the command ended
            break
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def test_ctrl_c_then_cancel_cancels_the_whole_backup(
    ops_fleet: OpsFleet, ops_vm: SampleVM, ops_repo: Repository, ops_producer: Producer
) -> None:
    # Given `backup --wait` following a slow backup
    ops_vm.add_drive("scsi0", 4 * MIB, seed=5)
    ops_vm.add_drive("scsi1", MIB, seed=6, node="node2")
    args = [*drive_args(ops_vm), "--repo", str(ops_repo.path), "--speed-limit", SLOW]
    watching = Watching(ops_fleet, "backup", ops_vm.vmid, *args, "--wait")
    watching.wait_for_text("drive scsi0 (new, size 4.0 MiB): running")
    # When the user presses Ctrl-C and answers "cancel"
    watching.proc.send_signal(signal.SIGINT)
    watching.wait_for_text("Cancel backup")
    watching.answer("cancel\n")
    # Then the whole backup is cancelled, the final status shown, the exit code 9
    assert watching.finish() == 9, watching.output
    assert re.search(r"^status +cancelled", watching.output, re.MULTILINE)
    backup = next(b for b in ops_producer.recent(50) if b.vmid == ops_vm.vmid)
    assert backup.status == "cancelled" and "Ctrl-C" in backup.errmsg
    assert [d.state for d in backup.drives] == ["cancelled", "skipped"]
    assert ops_producer.rt.locks.holder(ops_vm.vmid) is None


def test_ctrl_c_then_stop_watching_leaves_the_backup_running(
    ops_fleet: OpsFleet, ops_vm: SampleVM, ops_repo: Repository, ops_producer: Producer
) -> None:
    # Given `watch` following a slow backup
    backup = submit_slow(ops_fleet, ops_vm, ops_repo)
    watching = Watching(ops_fleet, "watch", backup)
    watching.wait_for_text("drive scsi0 (new, size 4.0 MiB): running")
    # When the user presses Ctrl-C and just presses Enter (the default: stop watching)
    watching.proc.send_signal(signal.SIGINT)
    watching.wait_for_text("Cancel backup")
    watching.answer("\n")
    # Then watching stops with exit code 130 and the backup goes on to the end
    assert watching.finish() == 130, watching.output
    assert f"stopped watching; backup {backup} goes on" in watching.output
    assert re.search(r"^status +active", watching.output, re.MULTILINE)
    assert ops_producer.wait(backup, 60).status == "done"


def test_watching_an_unknown_backup_is_an_error(ops_fleet: OpsFleet) -> None:
    unknown = cli(ops_fleet, "watch", "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 3 and "not found" in unknown.stderr
