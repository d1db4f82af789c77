"""Which backups exist: the active ones, the recent ones, and which backup a Celery task id
belongs to. Written with the record (``RecordStore.create``)."""

from __future__ import annotations

from redis import Redis

from txnbackup.keys import Keys
from txnbackup.redisconn import text


class Catalog:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    def active(self) -> list[str]:
        return sorted(text(u) for u in self.redis.smembers(self.keys.active()))

    def forget_active(self, backup: str) -> None:
        """Stop watching a backup whose record is gone (expired or never written)."""
        self.redis.srem(self.keys.active(), backup)

    def note_qemu_unended(self, backup: str) -> None:
        """The backup ended, and its session is still in QEMU (txnbackup.qemu.cleanup)."""
        self.redis.sadd(self.keys.qemu_unended(), backup)

    def qemu_unended(self) -> list[str]:
        return sorted(text(u) for u in self.redis.smembers(self.keys.qemu_unended()))

    def forget_qemu_unended(self, backup: str) -> None:
        self.redis.srem(self.keys.qemu_unended(), backup)

    def recent(self, limit: int) -> list[str]:
        members: list[bytes] = self.redis.zrevrange(self.keys.backups(), 0, limit - 1)  # type: ignore[assignment]
        return [text(u) for u in members]

    def backup_of_task(self, task_id: str) -> str | None:
        raw = self.redis.get(self.keys.task(task_id))
        return text(raw) if raw else None
