"""Validation of the names users give: vmids, drive names, backup uuids, blob names."""

from __future__ import annotations

import re
import uuid

from txnbackup.errors import InvalidInput

VMID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DRIVE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
BLOB_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_vmid(vmid: str) -> str:
    if not VMID_RE.fullmatch(vmid):
        raise InvalidInput(f"vmid {vmid!r} must match {VMID_RE.pattern}")
    return vmid


def check_drive_name(name: str) -> str:
    if not DRIVE_RE.fullmatch(name):
        raise InvalidInput(f"drive name {name!r} must match {DRIVE_RE.pattern}")
    return name


def check_node(node: str) -> str:
    if not NODE_RE.fullmatch(node):
        raise InvalidInput(f"node {node!r} must match {NODE_RE.pattern}")
    return node


def check_blob_name(name: str) -> str:
    if not BLOB_RE.fullmatch(name) or ".." in name:
        raise InvalidInput(f"blob name {name!r} must match {BLOB_RE.pattern} without '..'")
    return name


def check_backup_id(backup_id: str) -> str:
    try:
        parsed = uuid.UUID(backup_id)
    except ValueError:
        raise InvalidInput(f"{backup_id!r} is not a backup uuid") from None
    if str(parsed) != backup_id.lower():
        raise InvalidInput(f"{backup_id!r} is not a backup uuid in canonical form")
    return str(parsed)


def new_backup_id() -> str:
    return str(uuid.uuid4())
