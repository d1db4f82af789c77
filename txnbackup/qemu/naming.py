"""The names of everything txnbackup creates in QEMU, derived from the backup uuid alone.

Any worker of the VM's node can thus find, finish or undo a backup's objects from the QMP
socket, the backup uuid and the drive list, without state kept elsewhere. Everything starts
with PREFIX, which is how leftovers of any backup are recognised.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PREFIX = "txnbackup-"


def bitmap_name(backup: str) -> str:
    """The bitmap a backup starts: it records every write after that backup's begin."""
    return f"{PREFIX}{backup}"


def is_ours(name: str) -> bool:
    return name.startswith(PREFIX)


def export_name(backup: str, drive: str) -> str:
    return f"{PREFIX}{backup}-{drive}"


def job_id(backup: str, drive: str) -> str:
    return f"{PREFIX}{backup}-{drive}"


def _node_stem(backup: str, drive: str) -> str:
    # QEMU refuses node names of 32 bytes or more, too short for a uuid and a drive name.
    return PREFIX + hashlib.sha256(f"{backup}/{drive}".encode()).hexdigest()[:12]


def overlay_node(backup: str, drive: str) -> str:
    return f"{_node_stem(backup, drive)}-ovl"


def filter_node(backup: str, drive: str) -> str:
    return f"{_node_stem(backup, drive)}-cbw"


def run_dir(backup: str, root: Path) -> Path:
    """Private to the backup (its NBD socket, its overlays); short, since unix socket paths
    must stay under 108 bytes."""
    return root / f"{PREFIX}qemu-{backup}"


def overlay_file(scratch: Path, backup: str, drive: str) -> Path:
    return scratch / f"{PREFIX}{backup}-{drive}.qcow2"
