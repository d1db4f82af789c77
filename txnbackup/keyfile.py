"""The key of an encrypted repository: its master keys, protected by a passphrase.

A key file is JSON (docs/format.md, "Key file"): the master keys (txnbackup.crypto) sealed
with AES-256-GCM under a key derived from the passphrase by scrypt, with the repository id as
associated data, so a key unlocks only the repository it was made for. Where it lives is the
repository's key mode, chosen at ``init``:

- ``repokey``: ``<repository>/key``, beside the data (the passphrase alone protects it);
- ``keyfile``: outside the repository, ``TXNBACKUP_KEY_FILE`` or
  ``$XDG_CONFIG_HOME/txnbackup/keys/<repository id>`` (the disk alone is not enough).

The passphrase comes from the environment (Settings), never the command line. scrypt is slow
by design, so each process unlocks a key once: ``unlock`` keeps what it derived, keyed by the
key file's bytes and the passphrase.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from txnbackup.aead import Aead, Forged, scrypt
from txnbackup.crypto import CIPHER, KEY_SIZE, NONCE_SIZE, MasterKeys
from txnbackup.errors import InvalidInput, KeyInvalid, KeyMissing, WrongPassphrase

KEY_FILE_VERSION = 1
REPOKEY_NAME = "key"
SALT_SIZE = 32


class KeyMode(StrEnum):
    REPOKEY = "repokey"
    KEYFILE = "keyfile"


@dataclass(frozen=True)
class KdfParams:
    """scrypt's cost: 128 * r * n bytes of memory (128 MiB by default) and as much work."""

    n: int = 2**17
    r: int = 8
    p: int = 1

    def derive(self, passphrase: bytes, salt: bytes) -> bytes:
        return scrypt(passphrase, salt, KEY_SIZE, self.n, self.r, self.p)


@dataclass(frozen=True)
class KeyAccess:
    """What a process knows about keys: the passphrase and where keyfile-mode keys lie."""

    passphrase: bytes | None = None
    key_file: Path | None = None  # TXNBACKUP_KEY_FILE: the key of the one repository used
    key_dir: Path | None = None  # keyfile-mode keys, one file per repository id
    # TXNBACKUP_PLAIN_REPOSITORIES: where a plain repository is expected despite a key
    plain_ok: tuple[Path, ...] = ()

    def location(self, repo_path: Path, repo_id: str, mode: KeyMode) -> Path:
        if mode is KeyMode.REPOKEY:
            return repo_path / REPOKEY_NAME
        if self.key_file is not None:
            return self.key_file
        if self.key_dir is None:
            raise InvalidInput("no key directory: set TXNBACKUP_KEY_FILE or HOME")
        return self.key_dir / repo_id

    def expects_encryption(self, repo_path: Path, repo_id: str) -> str | None:
        """Why this process expects the repository to be encrypted (a passphrase is
        configured, or it holds a keyfile-mode key of that id), or None: what refuses a
        repository whose config.json was set back to plain text (Repository.open)."""
        real = repo_path.resolve()
        if any(real == p or p in real.parents for p in self.plain_ok):
            return None
        if self.passphrase is not None:
            return "a passphrase is configured (TXNBACKUP_PASSPHRASE[_FILE])"
        for path in (self.key_file, self.key_dir / repo_id if self.key_dir else None):
            if path is not None and _is_key_of(path, repo_id):
                return f"the key {path} is of that repository"
        return None


def _is_key_of(path: Path, repo_id: str) -> bool:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("repository") == repo_id


@dataclass(frozen=True)
class NewKey:
    """What ``init`` needs to create an encrypted repository's key."""

    mode: KeyMode
    passphrase: bytes
    access: KeyAccess = KeyAccess()  # where a keyfile-mode key is written
    kdf: KdfParams = KdfParams()


def protect(keys: MasterKeys, repo_id: str, passphrase: bytes, kdf: KdfParams) -> bytes:
    """A new key file holding ``keys`` (fresh salt and nonce)."""
    salt, nonce = os.urandom(SALT_SIZE), os.urandom(NONCE_SIZE)
    wrapping = Aead(kdf.derive(passphrase, salt))
    sealed = wrapping.encrypt(nonce, keys.to_bytes(), _aad(repo_id))
    document = {
        "txnbackup_key": KEY_FILE_VERSION,
        "repository": repo_id,
        "kdf": {"algorithm": "scrypt", "n": kdf.n, "r": kdf.r, "p": kdf.p, "salt": _b64(salt)},
        "cipher": CIPHER,
        "nonce": _b64(nonce),
        "keys": _b64(sealed),
    }
    return json.dumps(document, indent=2).encode() + b"\n"


_unlocked: dict[tuple[bytes, bytes], MasterKeys] = {}
_unlock_lock = threading.Lock()


def unlock(raw: bytes, where: str, repo_id: str, passphrase: bytes) -> MasterKeys:
    """The master keys in the key file ``raw`` (read from ``where``), derived once per
    process. KeyInvalid for a file that is not a key of this repository, WrongPassphrase."""
    cache_key = (hashlib.sha256(raw).digest(), hashlib.sha256(passphrase).digest())
    with _unlock_lock:
        if cache_key in _unlocked:
            return _unlocked[cache_key]
        keys = _unwrap(parse(raw, where, repo_id), where, repo_id, passphrase)
        _unlocked[cache_key] = keys
        return keys


@dataclass(frozen=True)
class KeyDocument:
    kdf: KdfParams
    salt: bytes
    nonce: bytes
    sealed: bytes


def parse(raw: bytes, where: str, repo_id: str) -> KeyDocument:
    """A key file's fields, checked (KeyInvalid naming ``where``)."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("txnbackup_key") != KEY_FILE_VERSION:
            raise KeyInvalid(where, f"not a txnbackup key file of version {KEY_FILE_VERSION}")
        if doc.get("repository") != repo_id:
            raise KeyInvalid(where, f"is the key of repository {doc.get('repository')}")
        if doc.get("cipher") != CIPHER or doc["kdf"].get("algorithm") != "scrypt":
            raise KeyInvalid(where, "unknown cipher or key derivation")
        kdf = KdfParams(*(_small_int(doc["kdf"][k]) for k in ("n", "r", "p")))
        fields = (doc["kdf"]["salt"], doc["nonce"], doc["keys"])
        salt, nonce, sealed = (base64.b64decode(f, validate=True) for f in fields)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise KeyInvalid(where, f"malformed: {exc}") from None
    if len(nonce) != NONCE_SIZE:
        raise KeyInvalid(where, "malformed nonce")
    return KeyDocument(kdf, salt, nonce, sealed)


def _unwrap(doc: KeyDocument, where: str, repo_id: str, passphrase: bytes) -> MasterKeys:
    try:
        wrapping = Aead(doc.kdf.derive(passphrase, doc.salt))
        return MasterKeys.from_bytes(wrapping.decrypt(doc.nonce, doc.sealed, _aad(repo_id)))
    except Forged:
        raise WrongPassphrase(where) from None
    except (ValueError, MemoryError) as exc:  # scrypt parameters out of range, bad length
        raise KeyInvalid(where, str(exc)) from None


def read_key(path: Path, repo_id: str) -> bytes:
    """The bytes of the key file at ``path`` (KeyMissing when there is none)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyMissing(repo_id, str(path)) from None
    except OSError as exc:
        raise KeyInvalid(str(path), exc.strerror or str(exc)) from None


def _small_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**31:
        raise ValueError(f"{value!r} is not a positive integer")
    return value


def _aad(repo_id: str) -> bytes:
    return f"txnbackup key of repository {repo_id}".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
