"""The retention policy over a simulated year: a snapshot every 6 hours for 400 days.

The snapshots run from 2025-01-01T00:00Z to 2026-02-04T18:00Z (00, 06, 12 and 18 h each
day). The expected survivors below were worked out by hand from a calendar, not computed:
2026-02-04 is a Wednesday in ISO week 6 of 2026, whose week 1 runs from Monday 2025-12-29
to Sunday 2026-01-04, so 2025-12-31 belongs to 2026-W01.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from txnbackup.errors import InvalidInput
from txnbackup.retention import KeepPolicy, Verdict, apply_policy
from txnbackup.snapshot import SnapshotId, format_time

VMID = "100"


def year_of_snapshots() -> list[SnapshotId]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return [SnapshotId(VMID, format_time(start + timedelta(hours=6 * i))) for i in range(1600)]


def snap(time: str) -> SnapshotId:
    return SnapshotId(VMID, time)


def kept(verdicts: list[Verdict]) -> list[str]:
    return [v.snapshot.time for v in verdicts if v.keep]


MONTH_ENDS = [
    "2026-02-04T18:00:00Z",
    "2026-01-31T18:00:00Z",
    "2025-12-31T18:00:00Z",
    "2025-11-30T18:00:00Z",
    "2025-10-31T18:00:00Z",
    "2025-09-30T18:00:00Z",
    "2025-08-31T18:00:00Z",
    "2025-07-31T18:00:00Z",
    "2025-06-30T18:00:00Z",
    "2025-05-31T18:00:00Z",
    "2025-04-30T18:00:00Z",
    "2025-03-31T18:00:00Z",
    "2025-02-28T18:00:00Z",
    "2025-01-31T18:00:00Z",
]

SURVIVORS = [
    (
        KeepPolicy(last=5),
        [
            "2026-02-04T18:00:00Z",
            "2026-02-04T12:00:00Z",
            "2026-02-04T06:00:00Z",
            "2026-02-04T00:00:00Z",
            "2026-02-03T18:00:00Z",
        ],
    ),
    (
        KeepPolicy(hourly=3),
        ["2026-02-04T18:00:00Z", "2026-02-04T12:00:00Z", "2026-02-04T06:00:00Z"],
    ),
    (
        KeepPolicy(daily=7),
        [f"2026-02-0{d}T18:00:00Z" for d in (4, 3, 2, 1)]
        + [f"2026-01-{d}T18:00:00Z" for d in (31, 30, 29)],
    ),
    (
        KeepPolicy(weekly=4),
        [
            "2026-02-04T18:00:00Z",  # W06, Wednesday: the newest of its week
            "2026-02-01T18:00:00Z",  # W05 ends on Sunday 1 February
            "2026-01-25T18:00:00Z",  # W04
            "2026-01-18T18:00:00Z",  # W03
        ],
    ),
    (
        KeepPolicy(weekly=7),
        [
            "2026-02-04T18:00:00Z",
            "2026-02-01T18:00:00Z",
            "2026-01-25T18:00:00Z",
            "2026-01-18T18:00:00Z",
            "2026-01-11T18:00:00Z",
            "2026-01-04T18:00:00Z",  # W01 of 2026 also holds 2025-12-29..31
            "2025-12-28T18:00:00Z",  # W52 of 2025
        ],
    ),
    (KeepPolicy(monthly=3), MONTH_ENDS[:3]),
    (KeepPolicy(monthly=20), MONTH_ENDS),  # only 14 months have snapshots
    (KeepPolicy(yearly=3), ["2026-02-04T18:00:00Z", "2025-12-31T18:00:00Z"]),
    (
        KeepPolicy(last=2, daily=3, weekly=2, monthly=2),
        [
            "2026-02-04T18:00:00Z",
            "2026-02-04T12:00:00Z",
            "2026-02-03T18:00:00Z",
            "2026-02-02T18:00:00Z",
            "2026-02-01T18:00:00Z",
            "2026-01-31T18:00:00Z",
        ],
    ),
]


@pytest.mark.parametrize(("policy", "expected"), SURVIVORS, ids=lambda p: str(p)[:60])
def test_each_rule_keeps_the_newest_snapshot_of_each_period(
    policy: KeepPolicy, expected: list[str]
) -> None:
    verdicts = apply_policy(policy, year_of_snapshots())
    assert kept(verdicts) == expected
    assert len(verdicts) == 1600


def test_dry_run_reasons_name_every_rule_that_keeps_a_snapshot() -> None:
    verdicts = apply_policy(KeepPolicy(last=2, daily=3, weekly=2, monthly=2), year_of_snapshots())
    reasons = {v.snapshot.time: v.reasons for v in verdicts if v.keep}
    assert reasons["2026-02-04T18:00:00Z"] == ("last", "daily", "weekly", "monthly")
    assert reasons["2026-02-04T12:00:00Z"] == ("last",)
    assert reasons["2026-02-01T18:00:00Z"] == ("weekly",)
    assert reasons["2026-01-31T18:00:00Z"] == ("monthly",)


def test_periods_without_snapshots_are_not_counted() -> None:
    days = ["2026-03-01T10:00:00Z", "2026-03-02T09:00:00Z", "2026-03-02T23:00:00Z"]
    days += ["2026-03-05T01:00:00Z", "2026-03-09T12:00:00Z"]
    verdicts = apply_policy(KeepPolicy(daily=3), [snap(t) for t in days])
    assert kept(verdicts) == [
        "2026-03-09T12:00:00Z",
        "2026-03-05T01:00:00Z",
        "2026-03-02T23:00:00Z",
    ]


def test_protected_snapshots_stay_and_are_not_counted() -> None:
    old = snap("2025-06-15T06:00:00Z")
    newest = snap("2026-02-04T18:00:00Z")
    verdicts = apply_policy(KeepPolicy(last=1), year_of_snapshots(), protected=[old, newest])
    reasons = {v.snapshot: v.reasons for v in verdicts if v.keep}
    assert reasons == {
        newest: ("protected",),
        snap("2026-02-04T12:00:00Z"): ("last",),
        old: ("protected",),
    }


@pytest.mark.parametrize("policy", [KeepPolicy(), KeepPolicy(last=0, daily=0)])
def test_no_rule_is_refused_rather_than_removing_everything(policy: KeepPolicy) -> None:
    with pytest.raises(InvalidInput, match="no --keep-"):
        apply_policy(policy, year_of_snapshots())


def test_negative_count_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="--keep-daily -1"):
        KeepPolicy(daily=-1)
