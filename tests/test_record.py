"""The backup record's phase machine on a real Redis: one winner per transition."""

from __future__ import annotations

import inspect
import json
import threading
from dataclasses import dataclass

import pytest
from redis import Redis

from txnbackup import errors
from txnbackup.action import BitmapAction
from txnbackup.cancel import Cancels
from txnbackup.catalog import Catalog
from txnbackup.errors import BackupRunning
from txnbackup.keys import Keys
from txnbackup.names import new_backup_id
from txnbackup.record import Phase
from txnbackup.record_store import RecordStore
from txnbackup.status import from_record
from txnbackup.transaction import BackupPlan, DrivePlan
from txnbackup.vmlock import VmLocks


@dataclass(frozen=True)
class State:
    records: RecordStore
    locks: VmLocks
    cancels: Cancels
    catalog: Catalog


@pytest.fixture
def st(redis_client: Redis, keys: Keys) -> State:
    return State(
        RecordStore(redis_client, keys, ttl=600),
        VmLocks(redis_client, keys),
        Cancels(redis_client, keys, ttl=600),
        Catalog(redis_client, keys),
    )


def recorded(st: State, vmid: str = "100") -> BackupPlan:
    backup = new_backup_id()
    drives = (
        DrivePlan("scsi0", "/a", "default", 1000, BitmapAction.NEW, "no bitmap yet", 1000),
        DrivePlan("scsi1", "/b", "node2", 2000, BitmapAction.USED, "ok", 0, "vm/100/t"),
    )
    plan = BackupPlan(backup, vmid, "2026-01-01T00:00:00Z", drives)
    st.locks.lock(vmid, backup)
    st.records.create(plan, "/repo", ["t1", "t2", "t3"])
    return plan


def test_commit_and_rollback_claims_exclude_each_other(st: State) -> None:
    # Given a running backup and 20 threads racing, half to commit and half to roll back
    plan = recorded(st)
    winners: list[Phase] = []
    barrier = threading.Barrier(20)

    def race(to: Phase) -> None:
        barrier.wait()
        if st.records.claim(plan.backup, to, frm=[Phase.RUNNING]).won:
            winners.append(to)

    threads = [
        threading.Thread(target=race, args=(Phase.COMMITTING if i % 2 else Phase.ROLLING_BACK,))
        for i in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then exactly one of them won, and the phase is the winner's
    assert len(winners) == 1
    assert st.records.phase(plan.backup) is winners[0]


def test_commit_claim_loses_to_a_recorded_cancel(st: State) -> None:
    plan = recorded(st)
    st.cancels.request(plan.backup, "cancelled by user")
    claim = st.records.claim(
        plan.backup, Phase.COMMITTING, frm=[Phase.RUNNING], unless_cancelled=True
    )
    assert not claim.won and claim.previous is Phase.RUNNING
    assert st.cancels.stop_reason(plan.backup) == "cancelled by user"


def test_finish_runs_once_releases_the_lock_and_keeps_the_first_error(
    st: State, redis_client: Redis, keys: Keys
) -> None:
    # Given a backup whose drive failed, and which was cancelled afterwards
    plan = recorded(st)
    assert st.records.record_error(plan.backup, "drive scsi1: disk full")
    assert not st.records.record_error(plan.backup, "drive scsi1: later error")
    st.cancels.request(plan.backup, "cancelled by user")

    # When it is rolled back and finished (twice)
    assert st.records.claim(plan.backup, Phase.ROLLING_BACK, frm=[Phase.RUNNING]).won
    record = st.records.load(plan.backup)
    assert st.records.finish(record, Phase.ERROR)
    assert not st.records.finish(record, Phase.CANCELLED)

    # Then the status is the first real error, the lock is free and the record will expire
    status = from_record(st.records.load(plan.backup))
    assert (status.status, status.errmsg) == ("error", "drive scsi1: disk full")
    assert st.locks.holder(plan.vmid) is None
    assert 0 < redis_client.ttl(keys.backup(plan.backup)) <= 600


def test_phases_of_many_backups_in_one_look(st: State) -> None:
    # Given a running backup, a finished one and one whose record is gone
    running, finished, gone = recorded(st, "300"), recorded(st, "301"), new_backup_id()
    assert st.records.claim(finished.backup, Phase.ROLLING_BACK, frm=[Phase.RUNNING]).won
    assert st.records.finish(st.records.load(finished.backup), Phase.CANCELLED)

    # Then one look reports each, in the order asked
    assert st.records.phases([running.backup, finished.backup, gone]) == [
        Phase.RUNNING,
        Phase.CANCELLED,
        None,
    ]


def test_lock_refuses_a_second_backup_and_names_the_first(st: State) -> None:
    plan = recorded(st)
    with pytest.raises(BackupRunning, match=plan.backup):
        st.locks.lock(plan.vmid, new_backup_id())


def test_lock_of_an_unrecorded_submit_expires(st: State, redis_client: Redis, keys: Keys) -> None:
    # A producer that died between taking the lock and recording the backup
    st.locks.lock("200", new_backup_id())
    assert redis_client.ttl(keys.lock("200")) > 0
    # while a recorded backup's lock does not expire by itself
    plan = recorded(st, vmid="201")
    assert redis_client.ttl(keys.lock(plan.vmid)) == -1


def test_status_of_a_fresh_backup_reports_the_plan(st: State) -> None:
    plan = recorded(st)
    status = from_record(st.records.load(plan.backup))
    assert status.status == "active" and not status.finishing
    assert (status.total, status.dirty, status.transferred) == (3000, 1000, 0)
    assert [(d.name, d.node, d.action, d.state) for d in status.drives] == [
        ("scsi0", "default", "new", "pending"),
        ("scsi1", "node2", "used", "pending"),
    ]
    assert json.loads(json.dumps(status.to_dict()))["drives"][1]["node"] == "node2"
    assert st.catalog.backup_of_task("t2") == plan.backup


ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.TxnBackupError)
]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_rebuilds_from_its_args_with_the_same_message(
    cls: type[errors.TxnBackupError],
) -> None:
    # Celery rebuilds an exception on the producer side as cls(*args) from JSON
    placeholders = (cls.__doc__ or "{}").count("{}")
    original = cls(*[f"arg{i}" for i in range(placeholders)])
    rebuilt = cls(*json.loads(json.dumps(original.args)))
    assert str(rebuilt) == str(original)
    assert "arg0" in str(original)
    assert 1 <= cls.exit_code <= 10  # the table in README and txnbackup_cli.main
