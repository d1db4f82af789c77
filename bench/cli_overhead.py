"""What the ``txnbackup backup --wait`` command adds to the API path, on a tiny 2-drive VM.

The VM's two drives (one 64 KiB chunk each) sit on the two nodes of the multi-node case.
Samples alternate: the API path (submit, poll every ``POLL`` seconds) and the command (its
process timed from start to exit), each after fresh guest writes so that both copy two
chunks. Beside them the command's start-up alone: a Python process importing what the
command imports before it submits (the program, its `backup` verb as the group loads it, and
the producer with Celery), and its exit.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.fleet import NODES, Fleet
from bench.measure import Samples, timed
from bench.tools import Txnbackup, TxnbackupCli
from txnbackup.drive import Drive
from txnbackup.repository import Repository

TINY = 64 * 1024  # bytes per drive: one chunk
# What `txnbackup backup` loads before it submits (tests/cli/test_startup.py holds the list),
# then the end of the process as the command ends it (txnbackup_cli.main: no collection of
# what the imports made).
STARTUP = (
    "import click, gc; from txnbackup_cli.main import txnbackup; "
    "txnbackup.get_command(click.Context(txnbackup), 'backup'); import tasks.producer; "
    "gc.freeze()"
)


@dataclass(frozen=True)
class CliOverhead:
    api: Samples
    cli: Samples
    startup: Samples

    @property
    def overhead(self) -> float:
        """Median of the per-sample differences (each pair ran back to back)."""
        return statistics.median(
            c - a for a, c in zip(self.api.values, self.cli.values, strict=True)
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "api": self.api.to_dict(),
            "cli": self.cli.to_dict(),
            "startup": self.startup.to_dict(),
            "overhead": self.overhead,
        }


def measure_cli_overhead(fleet: Fleet, workdir: Path, samples: int) -> CliOverhead:
    root = workdir / "tiny-cli"
    root.mkdir()
    drives = []
    for i, node in enumerate(NODES):
        path = root / f"disk-{i}.raw"
        path.write_bytes(os.urandom(TINY))
        drives.append(Drive(f"scsi{i}", str(path), node))
    repo = root / "repo"
    Repository.init(repo)
    api = Txnbackup(fleet, drives, "tiny-cli")
    cli = TxnbackupCli(fleet, drives, "tiny-cli")
    measured = CliOverhead(Samples("s"), Samples("s"), Samples("s"))
    for _ in range(max(1, samples)):
        for tool, into in ((api, measured.api), (cli, measured.cli)):
            _guest_writes(fleet, drives)
            into.add(timed(tool.backup, repo))
        measured.startup.add(timed(_startup, fleet.env))
    return measured


def _guest_writes(fleet: Fleet, drives: list[Drive]) -> None:
    for d in drives:
        Path(d.path).write_bytes(os.urandom(TINY))
        fleet.tracker.mark_dirty("tiny-cli", d.name, 0, TINY)


def _startup(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-c", STARTUP], env=env, check=True)
