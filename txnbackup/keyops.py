"""What a user does with an encrypted repository's key: export it, import it, change its
passphrase. The master keys never change (every chunk id and sealed object depends on them);
only their protection does. A key file is replaced atomically, never edited in place.
"""

from __future__ import annotations

import os
from pathlib import Path

from txnbackup.crypto import Kind, MasterKeys, SealedCodec, Unsealable, manifest_identity
from txnbackup.errors import InvalidInput, KeyInvalid, NotFound, PassphraseMissing
from txnbackup.fsutil import DIR_MODE, create_new, read_file, write_atomic, write_error
from txnbackup.keyfile import KeyAccess, KeyMode, parse, protect, read_key, unlock
from txnbackup.manifest import MANIFEST_NAME
from txnbackup.repository import Repository


def export_key(repo: Repository, keys: KeyAccess, target: Path) -> Path:
    """Copy the repository's key file (still protected by its passphrase) to the new file
    ``target``; the key's location."""
    source = repo.key_path(keys)
    raw = read_key(source, repo.id)
    parse(raw, str(source), repo.id)
    try:
        fd = create_new(target)
    except FileExistsError:
        raise InvalidInput(f"{target} exists; not replacing it") from None
    except OSError as exc:
        raise write_error(target, exc) from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
    return source


def import_key(repo: Repository, keys: KeyAccess, source: Path) -> Path:
    """Install the exported key ``source`` where the repository's mode keeps its key, once
    the passphrase unlocks it and it opens the repository's newest manifest; where it went."""
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"key file {source}") from None
    except OSError as exc:
        raise InvalidInput(f"key file {source}: {exc.strerror or exc}") from None
    master = unlock(raw, str(source), repo.id, _passphrase(repo, keys))
    _check_against(repo, master, str(source))
    target = repo.key_path(keys)
    if repo.config.encryption is KeyMode.KEYFILE:
        target.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    write_atomic(target, raw)
    return target


def change_passphrase(repo: Repository, keys: KeyAccess, new: bytes) -> Path:
    """Protect the same master keys with ``new`` (fresh salt, same scrypt cost)."""
    target = repo.key_path(keys)
    raw = read_key(target, repo.id)
    document = parse(raw, str(target), repo.id)
    master = unlock(raw, str(target), repo.id, _passphrase(repo, keys))
    write_atomic(target, protect(master, repo.id, new, document.kdf))
    return target


def _passphrase(repo: Repository, keys: KeyAccess) -> bytes:
    if keys.passphrase is None:
        raise PassphraseMissing(str(repo.path))
    return keys.passphrase


def _check_against(repo: Repository, master: MasterKeys, where: str) -> None:
    """A key with the right repository id that does not open its objects is refused."""
    snapshots = repo.snapshots()
    if not snapshots:
        return
    newest = snapshots[0]
    try:
        raw = read_file(repo.snapshot_dir(newest) / MANIFEST_NAME)
    except OSError:
        return
    identity = manifest_identity(newest.vmid, newest.time)
    try:
        SealedCodec(master).open(Kind.MANIFEST, raw, identity)
    except Unsealable:
        raise KeyInvalid(where, f"does not open {newest} of this repository") from None
