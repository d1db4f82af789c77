"""Ending in QEMU what a backup that already ended left there (``txnbackup qemu-clean``).

A backup's ending removes its session from QEMU; when QEMU's monitor stayed unreachable
through every attempt (the commit's retries ran out), the backup ended in Redis with its
exports, block jobs, overlays and both bitmaps still in QEMU, and the VM's next begin
refuses. This finds such sessions and ends each one as its record says, through the
keeper's own idempotent endings: a backup whose snapshot is published (``done``, or ``error``
after its commit published it) is committed (that snapshot is the base of the new bitmap),
any other is rolled back (the new bitmap merged into the frozen one, whose snapshot is
still in the repository). A backup still in progress is left to its own
ending or the reaper; one whose record expired is reported, for an operator to remove by
hand (docs/qemu.md, "Cleaning up after an ending QEMU missed").

The reapers of the VM's node do the same for every backup whose commit gave up on QEMU
(``Catalog.qemu_unended``), once its monitor answers again; the command is for what they
cannot know of (a session from before, or the set lost with Redis).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass

from txnbackup import trust
from txnbackup.errors import BackupRunning, Refused, TxnBackupError
from txnbackup.qemu.bitmaps import node_bitmaps
from txnbackup.qemu.keeper import QemuKeeper
from txnbackup.qemu.leftovers import find_leftovers
from txnbackup.qemu.naming import PREFIX
from txnbackup.qemu.qmp import QmpClient
from txnbackup.qemu.vm import QemuVM
from txnbackup.record import BackupRecord, Phase
from txnbackup.runtime import Runtime

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
NAMED = re.compile(rf"{re.escape(PREFIX)}({UUID})")


class Verdict:
    ENDED = "ended"  # the ending ran in QEMU now
    WOULD_END = "would end"  # --dry-run
    RUNNING = "running"  # the backup is still in progress: not ours to end
    NO_RECORD = "no record"  # expired or never in this fleet's Redis: by hand
    REFUSED = "refused"  # the record is not for this VM, or not trusted by this node


@dataclass(frozen=True)
class Outcome:
    backup: str
    verdict: str
    seen: tuple[str, ...]  # what of the backup was found in QEMU
    ending: str = ""  # commit or rollback
    phase: str = ""  # the record's phase
    reason: str = ""  # why not ended


def sessions(qmp: QmpClient) -> dict[str, list[str]]:
    """Backups with a session in this QEMU: their exports and jobs, and a recording bitmap of
    ours on a node that also holds a frozen one (begin froze it; no ending has yet). Run
    directories are not looked at: the node's other VMs have theirs in the same place, and
    the ending of a session found here removes its own."""
    found: dict[str, list[str]] = defaultdict(list)
    for name, what in [*_objects(qmp), *_bitmaps(qmp)]:
        if m := NAMED.match(name):
            found[m[1]].append(what)
    return dict(found)


def _objects(qmp: QmpClient) -> list[tuple[str, str]]:
    left = find_leftovers(qmp)
    return [(n, f"export {n}") for n in left.exports] + [(n, f"job {n}") for n in left.jobs]


def _bitmaps(qmp: QmpClient) -> list[tuple[str, str]]:
    return [
        (b.name, f"bitmap {b.name} on {node}")
        for node, bitmaps in node_bitmaps(qmp).items()
        if any(not b.recording for b in bitmaps)
        for b in bitmaps
        if b.recording
    ]


def clean(rt: Runtime, vm: QemuVM, *, dry_run: bool = False) -> list[Outcome]:
    """End in QEMU every ended backup's session found in ``vm`` (run on the VM's node)."""
    with QmpClient(vm.qmp) as qmp:
        found = sessions(qmp)
    return [
        end_session(rt, vm, backup, tuple(seen), dry_run=dry_run)
        for backup, seen in sorted(found.items())
    ]


def end_session(
    rt: Runtime, vm: QemuVM, backup: str, seen: tuple[str, ...] = (), *, dry_run: bool = False
) -> Outcome:
    """End ``backup``'s session in ``vm`` as its record says (what ``clean`` and the reaper
    of the VM's node do for each); raises when QEMU cannot be reached, to be tried again."""
    raw = rt.records.raw_or_none(backup)
    if raw is None:
        days = rt.settings.state_ttl / 86400
        why = (
            f"no record of it in Redis (one is kept {days:g} days after its backup ends):"
            " remove its objects by hand (docs/qemu.md)"
        )
        return Outcome(backup, Verdict.NO_RECORD, seen, reason=why)
    try:
        record = BackupRecord.parse(raw)
    except (KeyError, ValueError, TypeError, TxnBackupError) as exc:
        why = f"its record cannot be read ({exc!r}); refusing to act on it"
        return Outcome(backup, Verdict.REFUSED, seen, reason=why)
    phase = str(record.phase)
    if (refused := _refusal(rt, vm, record)) is not None:
        return Outcome(backup, Verdict.REFUSED, seen, phase=phase, reason=refused)
    if not record.phase.final:
        why = f"still {phase}: its own ending, or the reaper of node {vm.node}, ends it"
        return Outcome(backup, Verdict.RUNNING, seen, phase=phase, reason=why)
    ending = _ending(rt, record)
    if dry_run:
        return Outcome(backup, Verdict.WOULD_END, seen, ending, phase)
    holder = f"qemu-clean-{backup}"
    try:
        rt.locks.lock(record.vmid, holder)  # no backup of the VM begins meanwhile
    except BackupRunning as exc:
        why = f"backup {exc.args[0]} of VM {record.vmid} is running; try again after it"
        return Outcome(backup, Verdict.RUNNING, seen, ending, phase, why)
    try:
        keeper = QemuKeeper(record.plan.qemu or vm, rt.settings.qemu)
        if ending == "commit":
            keeper.commit(record.plan, record.snapshot, record.repository)
        else:
            keeper.rollback(record.plan)
    finally:
        rt.locks.unlock(record.vmid, holder)
    return Outcome(backup, Verdict.ENDED, seen, ending, phase)


def _ending(rt: Runtime, record: BackupRecord) -> str:
    """Commit where the backup's snapshot is published (``done``, or an ``error`` whose
    commit published it and then could not reach QEMU): the new bitmap records since that
    snapshot's instant. Else roll back: the frozen bitmap's snapshot is still the base."""
    if record.phase is Phase.DONE:
        return "commit"
    try:
        published = rt.repository(record.repository).find_backup(record.plan.vmid, record.uuid)
    except TxnBackupError:
        return "rollback"  # always right: the older snapshot, or a full read where it is gone
    return "rollback" if published is None else "commit"


def _refusal(rt: Runtime, vm: QemuVM, record: BackupRecord) -> str | None:
    """Why this record must not be acted on for ``vm``: Redis is shared, so the record must
    be one this node trusts and name this very QEMU process."""
    try:
        trust.check_qemu(rt.settings, record)
    except Refused as exc:
        return str(exc)
    theirs = record.plan.qemu
    if theirs is None or os.path.realpath(theirs.qmp) != os.path.realpath(vm.qmp):
        return f"its record names another QMP socket ({theirs.qmp if theirs else 'none'})"
    return None
