"""What a worker believes of a backup record: only what it can check against its own
configuration (docs/security.md, "The fleet").

A record comes from Redis, which anyone with access to it can write. Before a worker reads a
drive or touches a repository for a record, it checks, from its own settings only: the seal
(txnbackup.seal) when it has the fleet secret, every name again (txnbackup.names), the
repository against its ``TXNBACKUP_REPOSITORY``, and the drive's real path against its
``TXNBACKUP_DRIVE_ROOTS`` (directories, or patterns such as ``/dev/vg0/*``).
"""

from __future__ import annotations

import os
from pathlib import PurePath

from txnbackup.errors import (
    DriveNotAllowed,
    InvalidInput,
    RecordNotAuthentic,
    Refused,
    RepositoryNotAllowed,
    UntrustedRecord,
)
from txnbackup.names import check_backup_id, check_drive_name, check_vmid
from txnbackup.qemu import dirs
from txnbackup.record import BackupRecord
from txnbackup.seal import is_sealed
from txnbackup.settings import Settings

GLOB_CHARS = frozenset("*?[")


def check_step(settings: Settings, record: BackupRecord, drive: str) -> None:
    """Raise Refused unless this worker may copy ``drive`` of ``record``."""
    refused = refusal(settings, record)
    if refused is not None:
        raise refused
    if drive not in record.drives:
        raise UntrustedRecord(record.uuid, f"drive {drive!r} is not in the plan")
    if record.plan.qemu is not None:
        check_qemu(settings, record)
    else:
        check_drive_path(settings, drive, record.plan.drive(drive).path)


def check_qemu(settings: Settings, record: BackupRecord) -> None:
    """A QEMU backup's drives are block nodes of one QEMU process: the worker's drive roots
    must allow its QMP socket (the one thing the worker opens on the record's word)."""
    refused = refusal(settings, record)
    if refused is not None:
        raise refused
    vm = record.plan.qemu
    if vm is not None:
        check_drive_path(settings, "(QMP socket)", vm.qmp)


def refusal(settings: Settings, record: BackupRecord) -> Refused | None:
    """Why this worker must not act on ``record`` (commit, roll back, copy), or None."""
    if settings.secret is not None:
        if not record.seal:
            return RecordNotAuthentic(record.uuid, "it is not sealed")
        if not is_sealed(settings.secret, record.sealed, record.seal):
            return RecordNotAuthentic(record.uuid, "its seal does not match")
    try:
        check_backup_id(record.uuid)
        check_vmid(record.vmid)
        check_vmid(record.plan.vmid)
        for d in record.plan.drives:
            check_drive_name(d.name)
    except InvalidInput as exc:
        return UntrustedRecord(record.uuid, str(exc))
    return repository_refusal(settings, record.repository)


def repository_refusal(settings: Settings, repository: str) -> Refused | None:
    if settings.repository is None:
        return None
    if os.path.realpath(repository) != os.path.realpath(settings.repository):
        return RepositoryNotAllowed(repository, str(settings.repository))
    return None


def check_drive_path(settings: Settings, drive: str, path: str) -> None:
    if settings.drive_roots and not any(_allows(root, path) for root in settings.drive_roots):
        raise DriveNotAllowed(drive, path, ":".join(settings.drive_roots))


def _allows(root: str, path: str) -> bool:
    real = os.path.realpath(path)
    if GLOB_CHARS.isdisjoint(root):
        top = os.path.realpath(root)
        return real == top or real.startswith(top.rstrip("/") + "/")
    if PurePath(real).match(root):
        return True
    # A device link (/dev/vg0/vm-100-disk-0 -> ../dm-3) matches by the name it has in a
    # directory that is itself no link: whoever may change that directory owns the device.
    given = PurePath(path)
    parent = str(given.parent)
    return (
        given.is_absolute()
        and ".." not in given.parts
        and os.path.realpath(parent) == parent
        and given.match(root)
    )


def warnings(settings: Settings) -> list[str]:
    """What a worker says at start when it trusts more than it should."""
    found = []
    if not settings.drive_roots:
        found.append("drives are not restricted: set TXNBACKUP_DRIVE_ROOTS")
    if settings.repository is None:
        found.append(
            "the repository is not pinned and orphaned staging areas are not swept:"
            " set TXNBACKUP_REPOSITORY"
        )
    if settings.secret is None:
        found.append(
            "records are not authenticated: set TXNBACKUP_SECRET_FILE (or TXNBACKUP_SECRET)"
        )
    found += dirs.problems(settings.qemu)  # QEMU backups of this node would fail at begin
    return found
