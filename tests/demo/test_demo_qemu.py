"""``txnbackup demo --qemu`` end to end, as a user runs it: every step as expected (exit 0),
and nothing it started still running afterwards (QEMU, workers)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_REDIS_URL
from txnbackup_cli.demo.qemu.kit import guest_problem
from txnbackup_cli.demo.qemu.run import qemu_problem

TXNBACKUP = str(Path(sys.executable).parent / "txnbackup")


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def run_demo(workdir: Path, *args: str) -> str:
    env = {**os.environ, "TXNBACKUP_REDIS_URL": TEST_REDIS_URL}
    done = subprocess.run(
        [TXNBACKUP, "demo", "--workdir", str(workdir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = re.search(r"VM started in (\S+);", done.stdout)
    assert found, done.stdout[:3000]
    vmdir = found.group(1)  # QEMU's images and sockets: its command line names them
    assert not processes_mentioning(vmdir)
    assert not processes_mentioning(str(workdir))
    return done.stdout


@pytest.mark.skipif(qemu_problem() is not None, reason=str(qemu_problem()))
def test_the_qemu_demo_backs_up_a_daemon_with_a_writer(tmp_path: Path) -> None:
    out = run_demo(tmp_path / "work", "--qemu-daemon")
    assert "qemu-storage-daemon with a writer" in out
    assert "demo: 6 passed, 0 failed" in out


@pytest.mark.slow
@pytest.mark.skipif(
    (qemu_problem() or guest_problem()) is not None, reason=str(qemu_problem() or guest_problem())
)
def test_the_qemu_demo_backs_up_a_running_guest(tmp_path: Path) -> None:
    out = run_demo(tmp_path / "work", "--qemu")
    assert "a guest under" in out
    assert "one instant" in out
    assert "demo: 6 passed, 0 failed" in out
