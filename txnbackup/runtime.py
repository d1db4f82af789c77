"""What a process needs to run backup steps: settings, Redis, records, bitmaps, repositories.

Made at the edge (a worker process, the producer, the CLI) from its own Settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from txnbackup.bitmap import RedisBitmaps
from txnbackup.errors import RepositoryIdMismatch
from txnbackup.keys import Keys
from txnbackup.presence import Presence
from txnbackup.record import BackupRecords
from txnbackup.redisconn import connect
from txnbackup.repository import Repository
from txnbackup.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    records: BackupRecords
    bitmaps: RedisBitmaps

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        redis = connect(settings.redis_url)
        keys = Keys(settings.key_prefix)
        return cls(
            settings,
            redis,
            BackupRecords(redis, keys, settings.state_ttl, settings.secret),
            RedisBitmaps(redis, keys, settings.state_ttl),
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
