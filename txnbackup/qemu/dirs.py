"""The directories a QEMU backup keeps files in on the VM's node (settings ``QemuDirs``).

Each backup gets a private directory (mode 0700) in the run root for its NBD socket and one
in the scratch root for its fleecing overlays; both are named after the backup
(naming.run_dir), so any process of the node finds them. A root must be a real directory
owned by us or root, and when others may write to it, sticky (as /tmp is), so nobody else can
replace or plant what we create there; the per-backup directory must then be ours alone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from txnbackup.errors import QemuDirUnusable
from txnbackup.qemu import naming
from txnbackup.settings import QemuDirs

SOCKET_PATH_MAX = 107  # bytes: sun_path holds 108, NUL included


def run_dir(dirs: QemuDirs, backup: str) -> Path:
    return naming.run_dir(backup, dirs.run)


def scratch_dir(dirs: QemuDirs, backup: str) -> Path:
    return naming.run_dir(backup, dirs.scratch or dirs.run)


def nbd_socket(dirs: QemuDirs, backup: str) -> str:
    return str(run_dir(dirs, backup) / "nbd.sock")


def problems(dirs: QemuDirs) -> list[str]:
    """What is wrong with the roots, for a worker's start-up warnings."""
    found = []
    for kind, root in (("run", dirs.run), ("scratch", dirs.scratch)):
        if root is not None:
            try:
                check_root(kind, root)
            except QemuDirUnusable as exc:
                found.append(str(exc))
    probe = nbd_socket(dirs, "00000000-0000-0000-0000-000000000000")
    if len(probe.encode()) > SOCKET_PATH_MAX:
        found.append(f"QEMU run directory {dirs.run}: too long for unix sockets ({probe})")
    return found


def check_root(kind: str, root: Path) -> None:
    try:
        info = root.lstat()
    except OSError as exc:
        raise QemuDirUnusable(kind, str(root), exc.strerror or str(exc)) from None
    if stat.S_ISLNK(info.st_mode):
        raise QemuDirUnusable(kind, str(root), "is a symbolic link")
    if not stat.S_ISDIR(info.st_mode):
        raise QemuDirUnusable(kind, str(root), "is not a directory")
    if info.st_uid not in (0, os.getuid()):
        raise QemuDirUnusable(kind, str(root), f"is owned by uid {info.st_uid}")
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise QemuDirUnusable(
            kind,
            str(root),
            f"is writable by others and not sticky (mode {info.st_mode & 0o7777:o})",
        )
    if not os.access(root, os.W_OK | os.X_OK):
        raise QemuDirUnusable(kind, str(root), "is not writable by us")


def make_private(kind: str, path: Path) -> None:
    """Create ``path`` (mode 0700) in its checked root, or accept it only when it is a
    directory already ours alone (a second delivery of the same begin)."""
    check_root(kind, path.parent)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise QemuDirUnusable(kind, str(path), "exists and is not private to us") from None
    except OSError as exc:
        raise QemuDirUnusable(kind, str(path), exc.strerror or str(exc)) from None
