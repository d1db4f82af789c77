"""The chord callback (commit) and the error path (rollback) of a backup.

Both claim their phase in the backup record first; only the claimant does anything, so any
number of deliveries of either task ends in exactly one outcome (txnbackup.record).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator

from celery import Task

from tasks.celeryapp import app
from tasks.queues import CONTROL_QUEUE
from tasks.runtime import Runtime, runtime
from txnbackup import transaction
from txnbackup.lease import Heartbeat
from txnbackup.record import DriveState, LeaseRole, Phase, drive_fields
from txnbackup.stats import DriveStats
from txnbackup.transaction import BackupPlan

log = logging.getLogger(__name__)
COMMIT_RETRIES = 5  # a published snapshot whose bitmap commit failed is retried, not undone


@app.task(name="txnbackup.commit", bind=True, max_retries=COMMIT_RETRIES)
def commit(self: Task, /, backup: str) -> str:  # type: ignore[type-arg]
    resume = bool(self.request.retries)
    try:
        return run_commit(runtime(), backup, resume=resume)
    except PublishedButNotCommitted as exc:
        raise self.retry(exc=exc, countdown=1) from exc


@app.task(name="txnbackup.rollback")
def rollback(backup: str, *_: object) -> str:
    return run_rollback(runtime(), backup)


def send_rollback(backup: str) -> None:
    rollback.apply_async((backup,), queue=CONTROL_QUEUE)


class PublishedButNotCommitted(Exception):
    """The snapshot is published; committing the bitmaps must be retried, never undone."""


def run_commit(rt: Runtime, backup: str, *, resume: bool = False) -> str:
    """Claim running -> committing (or resume a claimed commit) and complete it."""
    records = rt.records
    allowed = [Phase.RUNNING, Phase.COMMITTING] if resume else [Phase.RUNNING]
    claim = records.claim(backup, Phase.COMMITTING, frm=allowed, unless_cancelled=True)
    if not claim.won:
        if claim.previous is Phase.RUNNING:
            send_rollback(backup)  # a cancel was recorded first: it wins
        log.info("backup %s: commit skipped, backup is %s", backup, claim.previous)
        return f"skipped: {claim.previous}"
    with _finishing(rt, backup):
        return _commit(rt, backup)


def _commit(rt: Runtime, backup: str) -> str:
    records = rt.records
    plan = records.plan(backup)
    repo = rt.repository(records.field(backup, "repository"))
    try:
        snapshot = transaction.commit(repo, rt.bitmaps, plan, _blobs(rt, backup))
    except Exception as exc:
        if repo.find_backup(plan.vmid, backup) is not None:
            raise PublishedButNotCommitted(str(exc)) from exc
        records.record_error(backup, f"commit: {exc}")
        if records.claim(backup, Phase.ROLLING_BACK, frm=[Phase.COMMITTING]).won:
            roll_back(rt, backup, plan)  # the lease of this commit covers it
        raise
    records.set_fields(backup, {"snapshot": str(snapshot)})
    records.count(backup, "commit_runs")
    records.finish(backup, Phase.DONE, plan.vmid)
    log.info("vm %s backup %s: done, snapshot %s", plan.vmid, backup, snapshot)
    return str(snapshot)


def run_rollback(rt: Runtime, backup: str) -> str:
    claim = rt.records.claim(backup, Phase.ROLLING_BACK, frm=[Phase.RUNNING])
    if not claim.won:
        return f"skipped: {claim.previous}"
    with _finishing(rt, backup):
        return roll_back(rt, backup, rt.records.plan(backup))


def resume_rollback(rt: Runtime, backup: str) -> str:
    """Finish a rollback whose worker died part way (every step of it is idempotent)."""
    if rt.records.phase(backup) is not Phase.ROLLING_BACK:
        return "skipped"
    with _finishing(rt, backup):
        return roll_back(rt, backup, rt.records.plan(backup), resumed=True)


def abandon(rt: Runtime, backup: str, reason: str) -> str:
    """Roll back a running backup whose worker is gone or whose drive no worker takes."""
    records = rt.records
    records.record_error(backup, reason)
    records.delete_field(backup, "running")  # its worker will never report that it stopped
    return run_rollback(rt, backup)


@contextlib.contextmanager
def _finishing(rt: Runtime, backup: str) -> Iterator[None]:
    holder = f"{socket.gethostname()}:{os.getpid()}"
    with Heartbeat(rt.records, backup, LeaseRole.FINISH, holder, rt.settings.lease_ttl):
        yield


def roll_back(rt: Runtime, backup: str, plan: BackupPlan, *, resumed: bool = False) -> str:
    """Undo a claimed backup: wait for its running drive to stop, discard, return the bits."""
    records = rt.records
    records.count(backup, "rollback_resumed" if resumed else "rollback_runs")
    _wait_for_running_drive(rt, backup)
    _explain(rt, backup)
    repo = rt.repository(records.field(backup, "repository"))
    transaction.rollback(repo, rt.bitmaps, plan)
    raw = records.raw(backup)
    for d in plan.drives:
        live = drive_fields(raw, d.name)
        if live.get("state") == DriveState.PENDING:
            stats = DriveStats.from_dict(live)
            records.update_drive(backup, d.name, DriveState.SKIPPED, stats)
    final = Phase.ERROR if "error" in raw else Phase.CANCELLED
    if final is Phase.CANCELLED:
        records.set_fields(backup, {"cancel_reason": records.cancel_reason(backup) or "cancelled"})
    records.finish(backup, final, plan.vmid)
    log.info("vm %s backup %s: rolled back (%s)", plan.vmid, backup, final)
    return str(final)


def _explain(rt: Runtime, backup: str) -> None:
    """A rollback nobody asked for is an error: a drive task that died says nothing itself."""
    records = rt.records
    raw = records.raw(backup)
    if "error" in raw or records.cancel_reason(backup):
        return
    if running := raw.get("running"):
        records.record_error(backup, f"drive {running}: worker lost while copying")
        records.delete_field(backup, "running", only_if=running)
    else:
        records.record_error(backup, "a task of the backup failed without reporting why")


def _wait_for_running_drive(rt: Runtime, backup: str) -> None:
    deadline = time.monotonic() + rt.settings.rollback_wait
    while "running" in rt.records.raw(backup) and time.monotonic() < deadline:
        time.sleep(0.05)


def _blobs(rt: Runtime, backup: str) -> dict[str, bytes]:
    raw = rt.records.raw(backup).get("blobs")
    if not raw:
        return {}
    return {name: base64.b64decode(data) for name, data in json.loads(raw).items()}
