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

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


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


def _read_secret_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise InvalidInput(
                f"TXNBACKUP_SECRET_FILE {path} is readable by others (mode {mode & 0o777:o});"
                " chmod 600 it"
            )
        return path.read_text()
    except OSError as exc:
        raise InvalidInput(f"TXNBACKUP_SECRET_FILE {path}: {exc.strerror or exc}") from None
