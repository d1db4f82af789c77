"""How a backup ends: commit (the chord callback), rollback (the error path), and what the
reaper does for a worker that died: abandon a running backup, resume a commit or rollback.

Every ending first claims its phase in the record (txnbackup.record); only the claimant acts,
so any number of deliveries of a commit or a rollback, from any trigger, ends the backup in
exactly one outcome. Whoever finishes holds the ``finish`` lease while it works, so a worker
dying part way leaves a phase the reaper resumes. The Celery layer only adapts these functions
to tasks and passes ``send_rollback``, the way a rollback is queued.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator

from txnbackup import transaction, trust
from txnbackup.errors import NotFound, Refused, TxnBackupError
from txnbackup.failpoints import failpoint
from txnbackup.lease import Heartbeat, LeaseRole
from txnbackup.record import BackupRecord, Field, Phase
from txnbackup.runtime import Runtime

log = logging.getLogger(__name__)

SendRollback = Callable[[str], None]


class PublishedButNotCommitted(Exception):
    """The snapshot is published; committing the bitmaps must be retried, never undone.

    ``.args``: the cause, the snapshot.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def commit(rt: Runtime, backup: str, send_rollback: SendRollback, *, resume: bool = False) -> str:
    """Claim running -> committing (or resume a claimed commit) and complete it.

    A commit that fails without rolling back (the repository cannot be opened, the bitmaps
    cannot be committed after the publishing rename) is retried: by the task, then by the
    reaper, which resumes it. Each claimed attempt is counted in the record; the one that
    reaches ``TXNBACKUP_COMMIT_ATTEMPTS`` ends the backup ``error`` instead (_give_up).
    """
    allowed = [Phase.RUNNING, Phase.COMMITTING] if resume else [Phase.RUNNING]
    failpoint("commit.before_claim")
    claim = rt.records.claim(
        backup, Phase.COMMITTING, frm=allowed, unless_cancelled=True, count=Field.COMMIT_ATTEMPTS
    )
    failpoint("commit.claimed")
    if not claim.won:
        if claim.previous is Phase.RUNNING:
            send_rollback(backup)  # a cancel was recorded first: it wins
        log.info("backup %s: commit skipped, backup is %s", backup, claim.previous)
        return f"skipped: {claim.previous}"
    assert claim.record is not None
    with _finishing(rt, backup):
        record = claim.record  # the attempt already counted by the claim
        attempt = record.commit_attempts
        try:
            return _commit(rt, record)
        except Exception as exc:
            if rt.records.phase(backup) is not Phase.COMMITTING:
                raise  # rolled back already (_commit)
            if attempt < rt.settings.commit_attempts:
                _retry_later(rt, record, attempt, exc)
                raise
            return _give_up(rt, record, attempt, exc)


def _commit(rt: Runtime, record: BackupRecord) -> str:
    records, plan = rt.records, record.plan
    if (refused := trust.refusal(rt.settings, record)) is not None:
        return _refuse_commit(rt, record, refused)
    try:
        repo = rt.repository(record.repository)
    except TxnBackupError as exc:  # perhaps for a moment (a mount): the commit is retried
        raise RepositoryUnavailable(f"cannot open repository: {exc}") from exc
    try:
        snapshot = transaction.commit(repo, rt.bitmaps, plan, record.blobs, rt.settings.qemu)
    except Exception as exc:
        published = repo.find_backup(plan.vmid, record.uuid)
        if published is not None:
            raise PublishedButNotCommitted(str(exc), str(published)) from exc
        records.record_error(record.uuid, f"commit: {exc}")
        if records.claim(record.uuid, Phase.ROLLING_BACK, frm=[Phase.COMMITTING]).won:
            _roll_back(rt, record)  # the lease of this commit covers it
        raise
    records.finish(record, Phase.DONE, snapshot=str(snapshot), count=Field.COMMIT_RUNS)
    log.info("vm %s backup %s: done, snapshot %s", plan.vmid, record.uuid, snapshot)
    return str(snapshot)


class RepositoryUnavailable(Exception):
    """The repository could not be opened; committing may work later, so it is retried."""


def _retry_later(rt: Runtime, record: BackupRecord, attempt: int, exc: Exception) -> None:
    cap = rt.settings.commit_attempts
    note = f"commit attempt {attempt} of {cap} failed: {exc}"
    rt.records.note_commit_failure(record.uuid, note)
    log.warning("vm %s backup %s: %s; retrying", record.vmid, record.uuid, note)


def _give_up(rt: Runtime, record: BackupRecord, attempt: int, exc: Exception) -> str:
    """The last attempt failed: end the backup ``error``, its bits back where they were."""
    records, plan = rt.records, record.plan
    message = f"commit failed after {attempt} attempts: {exc}"
    if isinstance(exc, PublishedButNotCommitted):
        snapshot = exc.args[1] if len(exc.args) > 1 else "the snapshot"
        message += (
            f" ({snapshot} is published and complete; its bitmaps were not committed, so the"
            " next backup reads every drive in full)"
        )
    log.error("vm %s backup %s: %s; rolling back", plan.vmid, record.uuid, message)
    records.note_commit_failure(record.uuid, message)
    records.record_error(record.uuid, message)
    if isinstance(exc, PublishedButNotCommitted):
        try:
            transaction.return_bits(rt.bitmaps, plan, rt.settings.qemu)
        except TxnBackupError as missed:
            if plan.qemu is not None:  # the VM's node's reapers end its session in QEMU
                log.warning(
                    "vm %s backup %s: QEMU left for the reaper: %s", plan.vmid, record.uuid, missed
                )
                rt.catalog.note_qemu_unended(record.uuid)
        records.finish(records.load(record.uuid), Phase.ERROR)
    elif records.claim(record.uuid, Phase.ROLLING_BACK, frm=[Phase.COMMITTING]).won:
        _roll_back(rt, record)
    return f"failed: {message}"


def rollback(rt: Runtime, backup: str) -> str:
    claim = rt.records.claim(backup, Phase.ROLLING_BACK, frm=[Phase.RUNNING])
    if not claim.won:
        return f"skipped: {claim.previous}"
    assert claim.record is not None
    with _finishing(rt, backup):
        return _roll_back(rt, claim.record)


def resume_rollback(rt: Runtime, backup: str) -> str:
    """Finish a rollback whose worker died part way (every step of it is idempotent)."""
    if rt.records.phase(backup) is not Phase.ROLLING_BACK:
        return "skipped"
    with _finishing(rt, backup):
        return _roll_back(rt, rt.records.load(backup), resumed=True)


def abandon(rt: Runtime, backup: str, reason: str) -> str:
    """Roll back a running backup whose worker is gone or whose drive no worker takes.

    A cancel recorded before stays the cause: a terminated drive's worker dies because of it.
    """
    if rt.cancels.reason(backup) is None:
        rt.records.record_error(backup, reason)
    return rollback(rt, backup)


@contextlib.contextmanager
def _finishing(rt: Runtime, backup: str) -> Iterator[None]:
    holder = f"{socket.gethostname()}:{os.getpid()}"
    with Heartbeat(rt.leases, backup, LeaseRole.FINISH, holder, rt.settings.lease_ttl):
        yield


def _roll_back(rt: Runtime, record: BackupRecord, *, resumed: bool = False) -> str:
    """Undo a claimed backup: wait for its running drive to stop, discard, return the bits."""
    records = rt.records
    records.count(record.uuid, Field.ROLLBACK_RESUMED if resumed else Field.ROLLBACK_RUNS)
    record = _wait_for_running_drive(rt, record)
    if (refused := trust.refusal(rt.settings, record)) is not None:
        _refuse_discard(rt, record, refused)
    else:
        _discard(rt, record)
    cancel = rt.cancels.reason(record.uuid)
    if not cancel and not record.error:
        records.record_error(record.uuid, _unexplained(record))
    record = records.load(record.uuid)
    final = Phase.ERROR if record.error else Phase.CANCELLED
    records.finish(record, final, cancel or "cancelled" if final is Phase.CANCELLED else "")
    log.info("vm %s backup %s: rolled back (%s)", record.vmid, record.uuid, final)
    return str(final)


def _discard(rt: Runtime, record: BackupRecord) -> None:
    """Delete the staging area and return the bits; a repository that cannot be opened keeps
    its staging area (the reaper sweeps it once the repository is back), the bits go back."""
    try:
        repo = rt.repository(record.repository)
    except TxnBackupError as exc:
        log.warning(
            "vm %s backup %s: staging area left to the reaper: %s", record.vmid, record.uuid, exc
        )
        transaction.return_bits(rt.bitmaps, record.plan, rt.settings.qemu)
        return
    transaction.rollback(repo, rt.bitmaps, record.plan, rt.settings.qemu)


def _unexplained(record: BackupRecord) -> str:
    """A rollback nobody asked for is an error: a drive task that died says nothing itself."""
    if record.running:
        return f"worker lost while copying drive {record.running}"
    return "a task of the backup failed without reporting why"


def _wait_for_running_drive(rt: Runtime, record: BackupRecord) -> BackupRecord:
    """Nothing may be written to a backup after its rollback: give the running drive, which
    sees the cancel within a fraction of a second, time to stop (a killed one never does).
    A QEMU begin in progress is waited for the same way: it undoes its own work when it
    finds the backup ended, and the rollback then finds QEMU as it was."""
    if not _busy(record) or not rt.leases.holder(record.uuid, LeaseRole.COPY):
        return record
    deadline = time.monotonic() + rt.settings.rollback_wait
    while _busy(record) and time.monotonic() < deadline:
        time.sleep(0.05)
        record = rt.records.load(record.uuid)
    return record


def _busy(record: BackupRecord) -> bool:
    return bool(record.running or record.beginning)


def _refuse_commit(rt: Runtime, record: BackupRecord, refused: Refused) -> str:
    """A record this worker may not act on is never published: it is rolled back."""
    log.error("vm %s backup %s: commit refused: %s", record.vmid, record.uuid, refused)
    rt.records.record_error(record.uuid, str(refused))
    if rt.records.claim(record.uuid, Phase.ROLLING_BACK, frm=[Phase.COMMITTING]).won:
        _roll_back(rt, record)
    return f"refused: {refused}"


def _refuse_discard(rt: Runtime, record: BackupRecord, refused: Refused) -> None:
    """Roll back without touching a repository the record may have forged: the bits, kept in
    Redis under the backup's uuid, go back; a staging area left behind is the reaper's."""
    log.error(
        "vm %s backup %s: rollback leaves the repository: %s", record.vmid, record.uuid, refused
    )
    rt.records.record_error(record.uuid, str(refused))
    with contextlib.suppress(NotFound):  # a record forged whole froze no bits
        rt.bitmaps.rollback(record.uuid)
