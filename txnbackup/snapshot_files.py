"""The files of snapshot directories as they lie on disk, whatever their manifest says.

Used by gc and check, which must see every snapshot directory, also one whose manifest is
damaged or renamed away by an interrupted removal (txnbackup.removal).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from txnbackup.errors import InvalidInput
from txnbackup.manifest import MANIFEST_NAME
from txnbackup.repository import Repository
from txnbackup.snapshot import parse_time

TMP_PREFIX = ".tmp-"
INDEX_SUFFIX = ".fidx"


def snapshot_dirs(repo: Repository, vmid: str | None = None) -> Iterator[Path]:
    """Every ``vm/<vmid>/<time>/`` directory (of one VM, when given), published, damaged or
    half-removed."""
    vmdirs = [repo.path / "vm" / vmid] if vmid else _subdirs(repo.path / "vm")
    for vmdir in vmdirs:
        for directory in _subdirs(vmdir):
            if _is_time(directory.name):
                yield directory


def being_removed(directory: Path) -> bool:
    return not (directory / MANIFEST_NAME).exists()


def snapshot_indexes(directory: Path) -> Iterator[tuple[Path, str | None]]:
    """Each index of the snapshot with its expected SHA-256: every one its manifest lists,
    then every other index file found (expected None), also when the manifest is unreadable.
    A listed index may be missing: the caller decides what that means."""
    listed = _listed_indexes(directory)
    for name, sha256 in listed.items():
        yield directory / name, sha256
    for path in _files(directory):
        stray = path.name.startswith(TMP_PREFIX) or path.name in listed
        if path.suffix == INDEX_SUFFIX and not stray:
            yield path, None


def _listed_indexes(directory: Path) -> dict[str, str]:
    try:
        raw = json.loads((directory / MANIFEST_NAME).read_bytes())
        drives = raw["drives"]
        return {_plain_name(str(d["index"])): str(d["index_sha256"]) for d in drives}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _plain_name(name: str) -> str:
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"index name {name!r} leaves the snapshot directory")
    return name


def _is_time(name: str) -> bool:
    try:
        parse_time(name)
    except InvalidInput:
        return False
    return True


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _files(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_file() and not p.is_symlink())
    except (FileNotFoundError, NotADirectoryError):
        return []
