"""The retention policy: which snapshots of one VM a prune keeps, and which rule keeps each.

The rules are restic's (``restic forget --keep-*``): each rule with a count ``n`` walks the
snapshots newest first and keeps the newest snapshot of each of the ``n`` newest periods
(hour, day, ISO week, month, year, all in UTC) that have a snapshot; ``last`` keeps the ``n``
newest snapshots. The rules are independent: a snapshot kept by any rule stays, and a period
covered by one rule is still counted by another (Proxmox Backup Server instead lets later
rules skip periods an earlier rule covered, keeping more). A protected snapshot is always
kept and is not counted by any rule, as in Proxmox Backup Server.

Pure: no file system, no clock. ``txnbackup.prune`` acts on the verdicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from txnbackup.errors import InvalidInput
from txnbackup.snapshot import SnapshotId, parse_time

PROTECTED = "protected"


class Rule(StrEnum):
    LAST = "last"
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    YEARLY = "yearly"


Period = tuple[int, ...]

_PERIOD: dict[Rule, Callable[[datetime, int], Period]] = {
    Rule.LAST: lambda t, i: (i,),  # every snapshot is a period of its own
    Rule.HOURLY: lambda t, i: (t.year, t.month, t.day, t.hour),
    Rule.DAILY: lambda t, i: (t.year, t.month, t.day),
    Rule.WEEKLY: lambda t, i: tuple(t.isocalendar()[:2]),
    Rule.MONTHLY: lambda t, i: (t.year, t.month),
    Rule.YEARLY: lambda t, i: (t.year,),
}


@dataclass(frozen=True)
class KeepPolicy:
    """How many periods each rule keeps; 0 means the rule is not used."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def __post_init__(self) -> None:
        for rule, count in self.counts():
            if count < 0:
                raise InvalidInput(f"--keep-{rule} {count} must not be negative")

    def counts(self) -> list[tuple[Rule, int]]:
        return [(rule, getattr(self, rule.value)) for rule in Rule]

    @property
    def empty(self) -> bool:
        return not any(count for _, count in self.counts())


@dataclass(frozen=True)
class Verdict:
    snapshot: SnapshotId
    reasons: tuple[str, ...]  # the rules that keep it (or "protected"); empty: remove

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


def apply_policy(
    policy: KeepPolicy, snapshots: Iterable[SnapshotId], protected: Sequence[SnapshotId] = ()
) -> list[Verdict]:
    """A verdict for every snapshot (of one VM), newest first."""
    if policy.empty:
        raise InvalidInput("no --keep-* rule given; refusing to remove every snapshot")
    ordered = sorted(set(snapshots), key=lambda s: s.time, reverse=True)
    guarded = set(protected)
    reasons: dict[SnapshotId, list[str]] = {s: [] for s in ordered}
    for s in guarded & reasons.keys():
        reasons[s].append(PROTECTED)
    counted = [s for s in ordered if s not in guarded]
    for rule, count in policy.counts():
        for s in _newest_per_period(rule, count, counted):
            reasons[s].append(rule.value)
    return [Verdict(s, tuple(reasons[s])) for s in ordered]


def _newest_per_period(
    rule: Rule, count: int, newest_first: Sequence[SnapshotId]
) -> list[SnapshotId]:
    kept: list[SnapshotId] = []
    last: Period | None = None
    for i, snapshot in enumerate(newest_first):
        if len(kept) == count:
            break
        period = _PERIOD[rule](parse_time(snapshot.time), i)
        if period != last:
            kept.append(snapshot)
            last = period
    return kept
