"""Begin a QEMU backup on the VM's node: find its drives, freeze them all at one instant
(FleeceSession.begin, one QMP transaction), decide each drive's action, record the plan.

The producer cannot reach the QMP socket, so it records the drives it was told (none when
they are to be discovered) and this step, the first of the backup's chain, writes the real
drives, sizes and actions into the record. The drives are recorded *before* QEMU is touched,
so a rollback that wins the race with begin knows every drive it may have to undo.

Our bitmap is named after the backup that started it (``txnbackup-<uuid>``): its bits are
usable only when that backup's snapshot is the VM's newest complete one here, with the drive
at the same size; otherwise the drive is read in full (``invalid``, with the reason).

Begin holds the copy lease and marks the record (``beginning``) while it works, and keeps
both (the lease still renewed) until its caller has put the next step in the broker
(``end_begin``), so a worker that dies anywhere between QEMU's transaction and the first
copy's message is found by the reaper once the lease expires, like a lost drive copy. A
second delivery of the same begin (its message redelivered after that death) recognises the
backup: once the plan was decided QEMU's session stands and nothing is redone; before that,
whatever the first delivery left is rolled back (which restores the bitmaps exactly) and
begin starts again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from txnbackup import trust
from txnbackup.action import BitmapAction, Decision
from txnbackup.drive import Drive
from txnbackup.errors import Cancelled, InvalidInput, NoCompleteSnapshot, TxnBackupError
from txnbackup.failpoints import failpoint
from txnbackup.latest import resolve
from txnbackup.lease import Heartbeat, LeaseRole
from txnbackup.names import check_backup_id, check_vmid, new_backup_id
from txnbackup.qemu import naming
from txnbackup.qemu.discover import QemuDrive, discover, explicit
from txnbackup.qemu.fleece import FleeceSession
from txnbackup.qemu.keeper import session
from txnbackup.qemu.nbd_drive import NbdDrive
from txnbackup.qemu.qmp import QmpClient
from txnbackup.qemu.vm import DRIVE_PREFIX, QemuVM, block_node
from txnbackup.record import BackupRecord
from txnbackup.repository import Repository
from txnbackup.runtime import Runtime
from txnbackup.snapshot import format_time
from txnbackup.staging import Staging
from txnbackup.transaction import BackupPlan, DrivePlan, check_drives
from txnbackup.verify import failed_verification

log = logging.getLogger(__name__)

# the begins of this process that returned and still renew their lease until their task
# handed the backup over (end_begin) or ended without (stop_renewing)
_handing: dict[tuple[str, str], Heartbeat] = {}
_handing_lock = threading.Lock()

CopyIds = Callable[[int], Sequence[str]]  # ids for n copy tasks the begin adds to the chain
WAITING = "waiting for QEMU's begin"  # the reason of every drive until begin decided it


def begin_backup(
    rt: Runtime, backup: str, copy_ids: CopyIds | None = None, holder: str = "begin"
) -> BackupPlan:
    """Begin ``backup`` in QEMU and record its plan; ``copy_ids`` when the drives were to be
    discovered (the caller then adds their copies to the chain). ``holder`` names this run
    in the lease."""
    record = rt.records.load(backup)
    if record.plan.qemu is None:
        raise TxnBackupError(f"backup {backup} is not a QEMU backup")
    trust.check_qemu(rt.settings, record)  # before QEMU is touched
    reason = rt.cancels.stop_reason(backup)
    if reason is not None:
        raise Cancelled(reason)
    with Heartbeat(rt.leases, backup, LeaseRole.COPY, holder, rt.settings.lease_ttl) as beat:
        if not rt.records.mark_begin(backup, holder):
            raise Cancelled(rt.cancels.stop_reason(backup) or "backup ended before begin")
        try:
            begun = _begin(rt, record, copy_ids)
        except Exception:
            rt.records.end_begin(backup)
            raise
        beat.keep(max(60.0, 10 * rt.settings.lease_ttl))  # the first copy is not sent yet
        with _handing_lock:
            _handing[(backup, holder)] = beat
    for d in begun.drives:
        log.info("vm %s backup %s drive %s: %s", begun.vmid, backup, d.name, _vzdump_words(d))
    return begun


def end_begin(rt: Runtime, backup: str, holder: str) -> None:
    """The next step of a begun backup is in the broker: a lost worker is no longer begin's."""
    stop_renewing(backup, holder)
    rt.records.end_begin(backup)
    rt.leases.drop(backup, LeaseRole.COPY, holder)


def stop_renewing(backup: str, holder: str) -> None:
    """Begin's task ended without handing over (it failed after begin): its lease and mark
    stay until the lease expires, and the reaper judges the backup lost in begin."""
    with _handing_lock:
        beat = _handing.pop((backup, holder), None)
    if beat is not None:
        beat.release()


def begun(plan: BackupPlan) -> bool:
    """Whether a begin recorded its decisions (drives, sizes, actions) in the plan."""
    return bool(plan.drives) and all(d.reason != WAITING for d in plan.drives)


def _begin(rt: Runtime, record: BackupRecord, copy_ids: CopyIds | None) -> BackupPlan:
    plan, vm, backup = record.plan, record.plan.qemu, record.uuid
    assert vm is not None
    if begun(plan):
        log.info("vm %s backup %s: begin delivered again; QEMU's session stands", plan.vmid, backup)
        return plan
    repo = rt.repository(record.repository)
    with QmpClient(vm.qmp) as qmp:
        drives = _drives(qmp, plan)
        found = _with_drives(plan, vm, drives, WAITING)
        ids = None
        if copy_ids is not None and not plan.drives:  # else an earlier delivery recorded them
            ids = [*copy_ids(len(drives)), *record.task_ids]
        if not rt.records.replan(found, ids):
            raise Cancelled(rt.cancels.stop_reason(backup) or "backup ended before begin")
        fleece = session(vm, qmp, backup, drives, rt.settings.qemu)
        if record.beginning or fleece.started():
            log.warning(
                "vm %s backup %s: begin delivered again; undoing what the first delivery left",
                plan.vmid,
                backup,
            )
            fleece.rollback()
        qemu_side = fleece.begin()
        failpoint("begin.after_transaction")
        try:
            decided = _decided(repo, found, fleece, qemu_side)
        except BaseException:
            fleece.rollback()
            raise
        if not rt.records.replan(decided):
            fleece.rollback()
            raise Cancelled(rt.cancels.stop_reason(backup) or "backup ended during begin")
    return decided


def prepare_qemu(
    repo: Repository,
    vmid: str,
    vm: QemuVM,
    drives: Sequence[Drive],
    *,
    full: bool = False,
    backup: str | None = None,
) -> BackupPlan:
    """The producer's part: check what it can without QEMU, stage, plan the given drives
    (none: begin discovers them). Sizes and actions are begin's to fill in."""
    check_vmid(vmid)
    if drives:
        check_drives(drives)
    given = [QemuDrive(d.name, block_node(d.path), 0, "") for d in drives]
    start = format_time(datetime.now(UTC))
    plan = BackupPlan(check_backup_id(backup) if backup else new_backup_id(), vmid, start, ())
    plan = dataclasses.replace(_with_drives(plan, vm, given, WAITING), qemu=vm)
    plan = dataclasses.replace(plan, full=full)
    Staging(repo, plan.backup).create()
    return plan


def _drives(qmp: QmpClient, plan: BackupPlan) -> list[QemuDrive]:
    if not plan.drives:
        found = discover(qmp)
        if not found:
            raise InvalidInput(f"QEMU at {qmp.path} has no drive to back up")
        return found
    return explicit(qmp, {d.name: block_node(d.path) for d in plan.drives})


def _with_drives(plan: BackupPlan, vm: QemuVM, drives: list[QemuDrive], why: str) -> BackupPlan:
    plans = tuple(
        DrivePlan(d.name, DRIVE_PREFIX + d.node, vm.node, d.size, BitmapAction.NEW, why, d.size)
        for d in drives
    )
    return dataclasses.replace(plan, drives=plans)


def _decided(
    repo: Repository, plan: BackupPlan, fleece: FleeceSession, qemu_side: dict[str, Decision]
) -> BackupPlan:
    drives = []
    for d, drive in zip(plan.drives, fleece.drives, strict=True):
        decision, base, dirty = qemu_side[d.name], "", d.size
        if decision.action is BitmapAction.NEW:
            decision = _lost(repo, plan, d) or decision
        if decision.action is BitmapAction.USED:
            view = fleece.view(drive)
            decision, base = _check_base(repo, plan, d, view.bitmap or "")
            if decision.action is BitmapAction.USED:
                with NbdDrive(d.name, view.uri, view.bitmap) as reader:
                    dirty = reader.dirty_bytes(repo.chunk_size)
        if plan.full and decision.action is not BitmapAction.NEW:
            decision, base = Decision(BitmapAction.NOT_USED, "full read requested"), ""
        if decision.action.full_read:
            dirty = d.size  # the bitmap's count, if any, no longer says what is read
        drives.append(
            dataclasses.replace(
                d, action=decision.action, reason=decision.reason, dirty=dirty, base=base
            )
        )
    return dataclasses.replace(plan, drives=tuple(drives))


def _check_base(
    repo: Repository, plan: BackupPlan, d: DrivePlan, bitmap: str
) -> tuple[Decision, str]:
    """QEMU's bitmap is usable: is the snapshot of the backup that started it our base?"""
    started_by = bitmap.removeprefix(naming.PREFIX)
    snapshot = repo.find_backup(plan.vmid, started_by)
    if snapshot is None:
        return _invalid(f"base missing: backup {started_by} has no snapshot in this repository")
    try:
        newest = resolve(repo, f"vm/{plan.vmid}/latest")
    except NoCompleteSnapshot:
        return _invalid(f"base {snapshot} is incomplete")
    if newest != snapshot:
        return _invalid(f"base {snapshot} is not the newest complete snapshot ({newest})")
    entry = repo.complete_drive(snapshot, d.name)
    if entry is None:
        return _invalid(f"base {snapshot} has no complete drive {d.name}")
    if entry.size != d.size:
        return _invalid(f"drive size changed ({entry.size} -> {d.size} bytes)")
    if failed_verification(repo, snapshot):
        return _invalid(f"base {snapshot} failed verification")
    return Decision(BitmapAction.USED, f"relative to {snapshot}"), str(snapshot)


def _lost(repo: Repository, plan: BackupPlan, d: DrivePlan) -> Decision | None:
    """No bitmap of ours in QEMU, yet a snapshot here has the drive: QEMU lost the bitmap
    (restarted, killed, or a drive whose format keeps none across restarts)."""
    try:
        newest = resolve(repo, f"vm/{plan.vmid}/latest")
    except NoCompleteSnapshot:
        return None
    if repo.complete_drive(newest, d.name) is None:
        return None
    return Decision(
        BitmapAction.INVALID,
        f"no bitmap in QEMU since snapshot {newest} (QEMU restarted or lost it)",
    )


def _invalid(reason: str) -> tuple[Decision, str]:
    return Decision(BitmapAction.INVALID, reason), ""


def _vzdump_words(d: DrivePlan) -> str:
    if d.action is BitmapAction.USED:
        return f"using fast incremental mode (dirty bitmap), {d.dirty} bytes dirty"
    if d.action is BitmapAction.NEW:
        return "created new bitmap"
    if d.action is BitmapAction.INVALID:
        return f"bitmap invalid: {d.reason}; created new bitmap"
    return f"bitmap not used: {d.reason}"
