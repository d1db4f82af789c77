"""The writers' API: report a completed write so the next backup copies it."""

from __future__ import annotations

from txnbackup.bitmap import BitmapBackend, RedisBitmaps
from txnbackup.keys import Keys
from txnbackup.names import check_drive_name, check_vmid
from txnbackup.redisconn import connect
from txnbackup.settings import Settings


class Tracker:
    def __init__(self, bitmaps: BitmapBackend) -> None:
        self.bitmaps = bitmaps

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracker:
        redis = connect(settings.redis_url)
        return cls(RedisBitmaps(redis, Keys(settings.key_prefix), settings.state_ttl))

    def mark_dirty(self, vmid: str, drive: str, offset: int, length: int) -> int:
        """Mark the chunks of ``[offset, offset + length)`` changed; call after the write.

        Returns how many chunks the range touches, or -1 when the drive has no bitmap yet
        (its next backup reads everything anyway).
        """
        return self.bitmaps.mark_dirty(check_vmid(vmid), check_drive_name(drive), offset, length)


def mark_dirty(vmid: str, drive: str, offset: int, length: int) -> int:
    """Module-level convenience using the environment's settings."""
    return Tracker.from_settings(Settings.from_env()).mark_dirty(vmid, drive, offset, length)
