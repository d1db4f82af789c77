"""What both demos' scenarios share: steps run in order, each narrated and checked.

A step says what it does (its docstring), does it through the public APIs and checks the
outcomes a user would care about; the first check that fails raises DemoFailed, so the demo
is also a smoke test of the whole system. ``Scenario`` (the sample VM's files) and
``QemuScenario`` (a running QEMU VM) add what their VM needs.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

from txnbackup.errors import TxnBackupError
from txnbackup.repository import Repository
from txnbackup.status import BackupStatus
from txnbackup_cli.demo.narration import Narrator, StatusSink, StepResult

if TYPE_CHECKING:
    from tasks.producer import Producer

VMID = "100"  # the demo's VM, whichever its drives
BACKUP_TIMEOUT = 120.0  # seconds any one backup of the demo may take


class DemoFailed(TxnBackupError):
    """demo step {} did not come out as expected: {}"""


@dataclass
class Walkthrough:
    narrator: Narrator
    producer: Producer
    repo: Path
    workdir: Path
    backups: list[str] = field(default_factory=list, kw_only=True)
    snapshots: list[str] = field(default_factory=list, kw_only=True)
    number: int = field(default=0, kw_only=True)  # the step running, from 1

    def run(self, steps: Sequence[tuple[str, Callable[[Self], None]]]) -> list[StepResult]:
        results = []
        for self.number, (title, step) in enumerate(steps, start=1):
            started = time.monotonic()
            # A step's docstring is what the demo says before doing it.
            self.narrator.step(self.number, len(steps), title, inspect.getdoc(step) or "")
            step(self)
            results.append(StepResult(self.number, title, time.monotonic() - started))
        return results

    def check(self, ok: bool, what: str, detail: object = "") -> None:
        if not ok:
            raise DemoFailed(self.number, f"{what}" + (f" ({detail})" if detail != "" else ""))
        self.narrator.ok(what)

    def follow(self, backup: str, on_update: StatusSink | None = None) -> BackupStatus:
        """Progress bars until the backup ends; ``on_update`` sees every status polled."""
        status = self.narrator.watch(self._wait, backup, on_update or (lambda _: None))
        self.check(not status.active, "the backup ended", status.status)
        return status

    def _wait(self, backup: str, sink: StatusSink) -> BackupStatus:
        return self.producer.wait(backup, timeout=BACKUP_TIMEOUT, interval=0.1, on_update=sink)

    def published(self) -> list[str]:
        return sorted(str(s) for s in Repository.open(self.repo).snapshots(VMID))
