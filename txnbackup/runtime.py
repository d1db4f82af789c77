"""What a process needs to run backup steps: settings, Redis, the backup state, bitmaps.

Made at the edge (a worker process, the producer, the CLI) from its own Settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from txnbackup.bitmap import RedisBitmaps
from txnbackup.cancel import Cancels
from txnbackup.catalog import Catalog
from txnbackup.errors import RepositoryIdMismatch
from txnbackup.keys import Keys
from txnbackup.lease import Leases
from txnbackup.presence import Presence
from txnbackup.record_store import RecordStore
from txnbackup.redisconn import connect
from txnbackup.repository import Repository
from txnbackup.settings import Settings
from txnbackup.vmlock import VmLocks


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    records: RecordStore
    locks: VmLocks
    leases: Leases
    cancels: Cancels
    catalog: Catalog
    bitmaps: RedisBitmaps

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls.over(settings, connect(settings.redis_url))

    @classmethod
    def over(cls, settings: Settings, redis: Redis) -> Runtime:
        """The runtime of ``settings`` over an existing Redis client."""
        keys, ttl = Keys(settings.key_prefix), settings.state_ttl
        return cls(
            settings,
            redis,
            RecordStore(redis, keys, ttl, settings.secret),
            VmLocks(redis, keys),
            Leases(redis, keys),
            Cancels(redis, keys, ttl),
            Catalog(redis, keys),
            RedisBitmaps(redis, keys, ttl),
        )

    def presence(self) -> Presence:
        """Workers are announced for a few reaper passes: missing two of them is not yet death."""
        return Presence(self.redis, self.records.keys, ttl=3 * self.settings.reaper_interval + 2)

    def repository(self, path: str) -> Repository:
        """The repository at ``path`` as it is now (one small file read; never cached: a
        repository deleted and created again at the same path has a new id and chunk size).

        With ``TXNBACKUP_REPOSITORY_ID`` only a repository of that id is opened: another one
        put at the path (a remount, a link swapped) is refused.
        """
        repo = Repository.open(Path(path), self.settings.key_access())
        expected = self.settings.repository_id
        if expected is not None and repo.id != expected:
            raise RepositoryIdMismatch(path, repo.id, expected)
        return repo
