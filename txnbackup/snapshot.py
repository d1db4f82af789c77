"""Snapshot ids: ``vm/<vmid>/<UTC RFC 3339 time to the second>``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from txnbackup.errors import InvalidInput
from txnbackup.names import check_vmid

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput(f"{text!r} is not a snapshot time like 2026-01-31T23:59:59Z") from None


@dataclass(frozen=True, order=True)
class SnapshotId:
    vmid: str
    time: str

    def __str__(self) -> str:
        return f"vm/{self.vmid}/{self.time}"

    @classmethod
    def parse(cls, text: str) -> SnapshotId:
        parts = text.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "vm":
            raise InvalidInput(f"{text!r} is not a snapshot id like vm/<vmid>/<time>")
        check_vmid(parts[1])
        parse_time(parts[2])
        return cls(parts[1], parts[2])

    def next_second(self) -> SnapshotId:
        return SnapshotId(self.vmid, format_time(parse_time(self.time) + timedelta(seconds=1)))
