"""Settings, read once from the environment at the edge (CLI, worker start-up)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
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
        )


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
