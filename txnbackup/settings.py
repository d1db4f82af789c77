"""Settings, read once from the environment at the edge (CLI, worker start-up)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from txnbackup.constants import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_STATE_TTL,
    DEFAULT_VISIBILITY_TIMEOUT,
)
from txnbackup.errors import InvalidInput
from txnbackup.keyfile import KeyAccess

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QEMU_RUN_DIR = Path("/tmp")


@dataclass(frozen=True)
class QemuDirs:
    """Where a QEMU backup's files live on the VM's node: ``run`` holds each backup's private
    run directory (its NBD socket: the path must stay under 108 bytes), ``scratch`` each
    backup's private directory of fleecing overlays (they grow by what the guest overwrites
    during the backup, up to the drive size; None: the run directory)."""

    run: Path = DEFAULT_QEMU_RUN_DIR
    scratch: Path | None = None


DEFAULT_QEMU_DIRS = QemuDirs()


@dataclass(frozen=True)
class Settings:
    """Everything configurable; see README "Configuration" for each variable."""

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = DEFAULT_REDIS_URL
    repository: Path | None = None
    key_prefix: str = DEFAULT_KEY_PREFIX
    state_ttl: int = DEFAULT_STATE_TTL
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    rollback_wait: float = 5.0
    broker_key_prefix: str = ""
    lease_ttl: int = 30
    queue_timeout: int = 3600
    reaper_interval: int = 5
    orphan_grace: int = 300
    # Attempts a commit gets (its own and the reaper's) before the backup is rolled back.
    commit_attempts: int = 5
    # Seconds a running drive may report no progress before the reaper ends the backup.
    stall_timeout: int = 300
    # What this worker may read; empty: anything (the worker warns at start).
    drive_roots: tuple[str, ...] = ()
    # The id the worker's repository must have (else: the id it has when the worker starts).
    repository_id: str | None = None
    # The fleet secret sealing records (txnbackup.seal); None: records are not authenticated.
    secret: bytes | None = field(default=None, repr=False)
    # The passphrase of an encrypted repository's key (txnbackup.keyfile); None: not given.
    passphrase: bytes | None = field(default=None, repr=False)
    # The new passphrase of `txnbackup key change-passphrase` (TXNBACKUP_NEW_PASSPHRASE...).
    new_passphrase: bytes | None = field(default=None, repr=False)
    key_file: Path | None = None  # a keyfile-mode key, when not in key_dir
    key_dir: Path | None = None  # keyfile-mode keys, one per repository id
    # Repositories (or directories of them) used unencrypted although a key is configured.
    plain_repositories: tuple[Path, ...] = ()

    qemu: QemuDirs = DEFAULT_QEMU_DIRS

    def key_access(self) -> KeyAccess:
        return KeyAccess(self.passphrase, self.key_file, self.key_dir, self.plain_repositories)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        redis_url = env.get("TXNBACKUP_REDIS_URL", DEFAULT_REDIS_URL)
        repository = env.get("TXNBACKUP_REPOSITORY")
        return cls(
            redis_url=redis_url,
            broker_url=env.get("TXNBACKUP_BROKER_URL", redis_url),
            repository=Path(repository) if repository else None,
            key_prefix=env.get("TXNBACKUP_KEY_PREFIX", DEFAULT_KEY_PREFIX),
            state_ttl=_positive_int(env, "TXNBACKUP_STATE_TTL", DEFAULT_STATE_TTL),
            visibility_timeout=_positive_int(
                env, "TXNBACKUP_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT
            ),
            rollback_wait=_positive_int(env, "TXNBACKUP_ROLLBACK_WAIT", 5),
            broker_key_prefix=env.get("TXNBACKUP_BROKER_KEY_PREFIX", ""),
            lease_ttl=_positive_int(env, "TXNBACKUP_LEASE_TTL", 30),
            queue_timeout=_positive_int(env, "TXNBACKUP_QUEUE_TIMEOUT", 3600),
            reaper_interval=_positive_int(env, "TXNBACKUP_REAPER_INTERVAL", 5),
            orphan_grace=_positive_int(env, "TXNBACKUP_ORPHAN_GRACE", 300),
            commit_attempts=_positive_int(env, "TXNBACKUP_COMMIT_ATTEMPTS", 5),
            stall_timeout=_positive_int(env, "TXNBACKUP_STALL_TIMEOUT", 300),
            drive_roots=drive_roots(env.get("TXNBACKUP_DRIVE_ROOTS", "")),
            repository_id=env.get("TXNBACKUP_REPOSITORY_ID") or None,
            secret=_secret(env),
            passphrase=passphrase_from(env, "TXNBACKUP_PASSPHRASE"),
            new_passphrase=passphrase_from(env, "TXNBACKUP_NEW_PASSPHRASE"),
            key_file=Path(env["TXNBACKUP_KEY_FILE"]) if env.get("TXNBACKUP_KEY_FILE") else None,
            key_dir=_key_dir(env),
            plain_repositories=_plain_repositories(env.get("TXNBACKUP_PLAIN_REPOSITORIES", "")),
            qemu=QemuDirs(
                _absolute(env, "TXNBACKUP_QEMU_RUN_DIR") or DEFAULT_QEMU_RUN_DIR,
                _absolute(env, "TXNBACKUP_QEMU_SCRATCH_DIR"),
            ),
        )


def drive_roots(value: str) -> tuple[str, ...]:
    """``TXNBACKUP_DRIVE_ROOTS`` (or ``worker --allow-drives``): colon-separated absolute
    directories or patterns; a relative one would depend on the worker's directory."""
    roots = tuple(r for r in value.split(":") if r)
    for root in roots:
        if not root.startswith("/"):
            raise InvalidInput(
                f"drive root {root!r} must be an absolute directory or pattern (/dev/vg0/*)"
            )
    return roots


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name}={raw!r} is not an integer") from None
    if value <= 0:
        raise InvalidInput(f"{name}={raw!r} must be positive")
    return value


def _absolute(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    if not raw:
        return None
    if not raw.startswith("/"):
        raise InvalidInput(f"{name}={raw!r} must be an absolute path")
    return Path(raw)


def _secret(env: Mapping[str, str]) -> bytes | None:
    """The fleet secret, from a file only its owner can read or from the environment: never
    from the command line, where every user of the host sees it (``ps``)."""
    path = env.get("TXNBACKUP_SECRET_FILE") or None
    value = env.get("TXNBACKUP_SECRET") or None
    if path and value:
        raise InvalidInput("set TXNBACKUP_SECRET_FILE or TXNBACKUP_SECRET, not both")
    if path:
        value = _read_secret_file(Path(path))
    if value is None:
        return None
    if len(value.strip()) < 16:
        raise InvalidInput("the fleet secret must be at least 16 characters")
    return value.strip().encode()


def _read_secret_file(path: Path, variable: str = "TXNBACKUP_SECRET_FILE") -> str:
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise InvalidInput(
                f"{variable} {path} is readable by others (mode {mode & 0o777:o}); chmod 600 it"
            )
        return path.read_text()
    except OSError as exc:
        raise InvalidInput(f"{variable} {path}: {exc.strerror or exc}") from None


def passphrase_from(env: Mapping[str, str], name: str) -> bytes | None:
    """A passphrase from ``<name>_FILE`` (a file only its owner can read; one trailing newline
    is not part of it) or ``<name>``; never from the command line."""
    path = env.get(f"{name}_FILE") or None
    value = env.get(name) or None
    if path and value:
        raise InvalidInput(f"set {name}_FILE or {name}, not both")
    if path:
        value = _read_secret_file(Path(path), f"{name}_FILE").removesuffix("\n")
        if not value:
            raise InvalidInput(f"{name}_FILE {path} is empty")
    return value.encode() if value else None


def _key_dir(env: Mapping[str, str]) -> Path | None:
    """Where keyfile-mode keys live: $XDG_CONFIG_HOME/txnbackup/keys (~/.config/...)."""
    config = env.get("XDG_CONFIG_HOME") or (
        str(Path(env["HOME"]) / ".config") if env.get("HOME") else None
    )
    return Path(config) / "txnbackup" / "keys" if config else None


def _plain_repositories(value: str) -> tuple[Path, ...]:
    """TXNBACKUP_PLAIN_REPOSITORIES: colon-separated absolute directories (resolved)."""
    paths = tuple(Path(p) for p in value.split(":") if p)
    for path in paths:
        if not path.is_absolute():
            raise InvalidInput(f"TXNBACKUP_PLAIN_REPOSITORIES: {path} is not an absolute path")
    return tuple(p.resolve() for p in paths)
