"""The reaper: no backup stays active forever, no frozen bit and no staging area is orphaned.

Every worker runs one in its main process (a thread, every TXNBACKUP_REAPER_INTERVAL s);
`txnbackup reap` runs one pass by hand. For each active backup without a live lease
(txnbackup.lease) it decides, from the record alone, what the dead worker left:

| phase        | what it finds                                 | what it does                  |
|--------------|-----------------------------------------------|-------------------------------|
| running      | a drive marked running, no lease              | roll back: worker lost        |
| running      | a QEMU begin marked, no lease                 | roll back: lost during begin  |
| running      | a leased drive, no progress > stall timeout   | roll back: stalled; terminate |
| running      | no drive running, idle > the queue timeout    | roll back: no worker took it  |
| committing   | no lease                                      | finish the commit (capped)    |
| rolling_back | no lease                                      | finish the rollback           |
| error        | its commit gave up on QEMU's monitor          | end its session in QEMU       |

The queue timeout is the backup's own (``backup --timeout``), else TXNBACKUP_QUEUE_TIMEOUT; the
stall timeout is TXNBACKUP_STALL_TIMEOUT; a commit gets TXNBACKUP_COMMIT_ATTEMPTS attempts.

Only one reaper acts on a backup at a time, and every action is a claim on the record, so a
reaper racing a slow but live worker changes nothing the worker did not already decide.

A running QEMU VM's backup is ended in QEMU by its own node only: a reaper serving other nodes
(``nodes``; `txnbackup reap` serves those given with ``--node``, none by default) never opens
its QMP socket. It records why the backup is lost and sends the rollback to the VM's node
queue, and leaves a commit or rollback to resume to that node's reapers.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from txnbackup import ending
from txnbackup.bitmap import TxnState
from txnbackup.ending import SendRollback
from txnbackup.errors import InvalidInput, TxnBackupError
from txnbackup.names import check_backup_id
from txnbackup.qemu.vm import QemuVM
from txnbackup.record import BackupRecord, Phase
from txnbackup.repository import Repository
from txnbackup.runtime import Runtime

log = logging.getLogger(__name__)


class Verdict(StrEnum):
    ALIVE = "alive"
    FORGET = "forget"
    ABANDON = "abandon"
    STALLED = "stalled"
    RESUME_COMMIT = "resume-commit"
    RESUME_ROLLBACK = "resume-rollback"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str = ""


def judge(
    record: BackupRecord | None,
    leased: bool,
    now: float,
    queue_timeout: float,
    stall_timeout: float = math.inf,
) -> Judgement:
    """What the reaper must do with one backup; a pure function of what Redis holds.

    A lease proves the worker lives, not that its drive moves: a read stuck in the kernel or
    on a dead NFS server renews it forever. A running drive must also report progress at
    least every ``stall_timeout`` s.
    """
    if record is None or record.phase.final:
        return Judgement(Verdict.FORGET)
    if leased:
        return _stall(record, now, stall_timeout)
    if record.phase is Phase.COMMITTING:
        return Judgement(Verdict.RESUME_COMMIT, "commit lost its worker")
    if record.phase is Phase.ROLLING_BACK:
        return Judgement(Verdict.RESUME_ROLLBACK, "rollback lost its worker")
    if record.running:
        return Judgement(Verdict.ABANDON, f"worker lost while copying drive {record.running}")
    if record.beginning:
        return Judgement(Verdict.ABANDON, "worker lost during begin in QEMU")
    idle = now - (record.last_activity or now)
    if idle > (record.queue_timeout or queue_timeout):
        return Judgement(Verdict.ABANDON, f"no worker took the next drive for {idle:.0f} s")
    return Judgement(Verdict.ALIVE)


def _stall(record: BackupRecord, now: float, stall_timeout: float) -> Judgement:
    if record.phase is not Phase.RUNNING or not record.running or not record.progress_at:
        return Judgement(Verdict.ALIVE)
    still = now - record.progress_at
    if still <= stall_timeout:
        return Judgement(Verdict.ALIVE)
    return Judgement(
        Verdict.STALLED, f"drive {record.running} stalled: no progress for {still:.0f} s"
    )


class ActionSink(Protocol):
    """Told of every action (metrics); ``backup`` when it ended one, to count its outcome."""

    def __call__(self, kind: str, backup: str | None = None) -> None: ...


class Reaper:
    def __init__(
        self,
        rt: Runtime,
        send_rollback: SendRollback,
        on_action: ActionSink | None = None,
        nodes: frozenset[str] = frozenset(),
        stop_task: Callable[[str], None] | None = None,
    ) -> None:
        """``nodes``: the nodes whose queues this worker serves, the only ones whose QEMU it
        may reach; a file backup is anyone's to end. ``stop_task``: terminates a Celery
        task, wherever it runs (a stalled drive's)."""
        self.rt = rt
        self.send_rollback = send_rollback
        self.stop_task = stop_task or (lambda task_id: None)
        self.expected_id = rt.settings.repository_id
        self._told: set[str] = set()
        self._own_repository()  # pins the expected id as the repository is now
        self.on_action: ActionSink = on_action or (lambda kind, backup=None: None)
        self.nodes = nodes

    def run_once(self) -> dict[str, Verdict]:
        """One pass over active backups, unrecorded freezes and staging areas."""
        acted = {b: v for b in self.rt.catalog.active() if (v := self._reap(b)) is not None}
        self._qemu_unended()
        self._orphan_freezes()
        self._orphan_staging()
        return acted

    def _reap(self, backup: str) -> Verdict | None:
        s = self.rt.settings
        record, leased = self.rt.records.load_leased(backup)
        judgement = judge(record, leased, time.time(), s.queue_timeout, s.stall_timeout)
        if judgement.verdict is Verdict.ALIVE:
            return None
        if judgement.verdict is Verdict.FORGET:
            if record is None:
                self.rt.catalog.forget_active(backup)
            return None
        foreign = self._foreign(record)
        if foreign and judgement.verdict not in (Verdict.ABANDON, Verdict.STALLED):
            return None  # a commit or rollback to resume: the VM's node's reapers do it
        if not self.rt.leases.start_reaping(backup, s.lease_ttl):
            return None
        log.warning("reaper: backup %s: %s -> %s", backup, judgement.reason, judgement.verdict)
        self._act(backup, record, judgement, foreign)
        self.on_action(str(judgement.verdict), backup)
        return judgement.verdict

    def _act(
        self, backup: str, record: BackupRecord | None, judgement: Judgement, foreign: bool
    ) -> None:
        try:
            if foreign:
                self._abandon_elsewhere(backup, judgement.reason)
            else:
                self._actions()[judgement.verdict](backup, judgement.reason)
        except (ending.RepositoryUnavailable, ending.PublishedButNotCommitted) as exc:
            # One more counted commit attempt (ending.commit logged it); the next pass resumes.
            log.debug("reaper: backup %s: %s", backup, exc)
        if judgement.verdict is Verdict.STALLED and record is not None and record.running_task:
            self.stop_task(record.running_task)  # after the error is recorded: it is the cause

    def _foreign(self, record: BackupRecord | None) -> bool:
        """A QEMU VM's backup on a node this worker does not serve: it cannot reach QEMU."""
        vm = record.plan.qemu if record else None
        return vm is not None and vm.node not in self.nodes

    def _abandon_elsewhere(self, backup: str, reason: str) -> None:
        if self.rt.cancels.reason(backup) is None:
            self.rt.records.record_error(backup, reason)
        self.send_rollback(backup)  # routed to the VM's node queue

    def _actions(self) -> dict[Verdict, Callable[[str, str], object]]:
        rt = self.rt
        return {
            Verdict.ABANDON: lambda b, why: ending.abandon(rt, b, why),
            Verdict.STALLED: lambda b, why: ending.abandon(rt, b, why),
            Verdict.RESUME_COMMIT: lambda b, why: ending.commit(
                rt, b, self.send_rollback, resume=True
            ),
            Verdict.RESUME_ROLLBACK: lambda b, why: ending.resume_rollback(rt, b),
        }

    def _qemu_unended(self) -> None:
        """End in QEMU the sessions of ended backups of this worker's nodes whose commit gave
        up on QEMU's monitor (txnbackup.qemu.cleanup); tried every pass until QEMU answers."""
        catalog = self.rt.catalog
        for backup in catalog.qemu_unended() if self.nodes else []:
            record = self.rt.records.load_or_none(backup)
            vm = record.plan.qemu if record else None
            if vm is None:
                catalog.forget_qemu_unended(backup)  # expired: qemu-clean lists it
            elif vm.node in self.nodes:
                self._end_in_qemu(backup, vm)

    def _end_in_qemu(self, backup: str, vm: QemuVM) -> None:
        from txnbackup.qemu.cleanup import Verdict, end_session  # noqa: PLC0415 - libnbd

        try:
            outcome = end_session(self.rt, vm, backup)
        except TxnBackupError as exc:
            log.debug("reaper: backup %s: QEMU still unreachable: %s", backup, exc)
            return
        if outcome.verdict == Verdict.RUNNING:
            return  # another backup of the VM holds its lock: the next pass
        self.rt.catalog.forget_qemu_unended(backup)
        what = outcome.ending if outcome.verdict == Verdict.ENDED else outcome.reason
        log.warning("reaper: backup %s: its session in QEMU: %s", backup, what)
        self.on_action("qemu-unended")

    def _orphan_freezes(self) -> None:
        """Give back bits frozen by a producer that died before recording its backup."""
        bitmaps, records = self.rt.bitmaps, self.rt.records
        for backup in bitmaps.pending_since(time.time() - self.rt.settings.orphan_grace):
            state = bitmaps.state(backup)
            if state is TxnState.FROZEN and not records.exists(backup):
                log.warning("reaper: backup %s was never recorded; returning its bits", backup)
                bitmaps.rollback(backup)
                self.on_action("orphan-freeze")
            elif state is not TxnState.FROZEN:
                bitmaps.forget(backup)

    def _orphan_staging(self) -> None:
        """Delete staging areas of backups that ended or never started (I1).

        Only in this worker's own repository (``TXNBACKUP_REPOSITORY``; nothing in Redis
        names where to delete), only when the path opens as a repository with the expected
        id (_own_repository), only uuid-named directories in its ``staging`` directory, and
        no link is followed.
        """
        records = self.rt.records
        cutoff = time.time() - self.rt.settings.orphan_grace
        repo = self._own_repository()
        if repo is not None:
            for staging in _staging_dirs(repo):
                phase = records.phase(staging.name)
                ended = phase is None or phase.final
                if ended and staging.stat(follow_symlinks=False).st_mtime < cutoff:
                    log.warning("reaper: removing orphaned staging area %s", staging)
                    shutil.rmtree(staging, ignore_errors=True)  # refuses a link itself
                    self.on_action("orphan-staging")

    def _own_repository(self) -> Repository | None:
        """The worker's repository, if the path opens as one with the expected id: the
        ``TXNBACKUP_REPOSITORY_ID``, else the id it had when this reaper first opened it."""
        own = self.rt.settings.repository
        if own is None:
            return None
        try:
            repo = Repository.open(own)
        except TxnBackupError as exc:
            log.debug("reaper: not sweeping %s: %s", own, exc)
            return None
        if self.expected_id is None:
            self.expected_id = repo.id
        if repo.id != self.expected_id:
            if repo.id not in self._told:
                log.warning(
                    "reaper: not sweeping %s: its id is %s, not %s", own, repo.id, self.expected_id
                )
                self._told.add(repo.id)
            return None
        return repo


def _staging_dirs(repo: Repository) -> list[Path]:
    top = repo.path / "staging"
    if top.is_symlink():
        return []
    try:
        with os.scandir(top) as entries:
            return [
                Path(e.path)
                for e in entries
                if e.is_dir(follow_symlinks=False) and _is_backup_id(e.name)
            ]
    except OSError:
        return []


def _is_backup_id(name: str) -> bool:
    try:
        return check_backup_id(name) == name
    except InvalidInput:
        return False


class ReaperThread(threading.Thread):
    def __init__(
        self, reaper: Reaper, interval: float, heartbeat: Callable[[], None] | None = None
    ) -> None:
        """``heartbeat``: run at start and before every pass (the worker's presence)."""
        super().__init__(name="txnbackup-reaper", daemon=True)
        self.reaper = reaper
        self.interval = interval
        self.heartbeat = heartbeat or (lambda: None)
        self.stopping = threading.Event()

    def run(self) -> None:
        self._beat()
        while not self.stopping.wait(self.interval):
            self._beat()
            try:
                self.reaper.run_once()
            except Exception:
                log.exception("reaper: pass failed; retrying in %s s", self.interval)

    def _beat(self) -> None:
        try:
            self.heartbeat()
        except Exception:
            log.warning("reaper: announcing this worker failed; retrying in %s s", self.interval)
