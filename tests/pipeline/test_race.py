"""A cancel racing the commit: every backup ends wholly done or wholly rolled back.

The commit claims its phase in one script that fails while a cancel is recorded; a cancel
recorded after the claim is too late. tests/faults/test_commit_claim.py pins the cancel on each
side of that claim and asserts the outcome each side must give; here and in the sweep at
random moments (tests/faults/test_races.py) every run ends in one of the two, completely.
"""

from __future__ import annotations

import time

import pytest

from tasks.producer import Producer
from tests.fleet import SampleVM
from txnbackup.bitmap import TxnState
from txnbackup.repository import Repository
from txnbackup.status import BackupStatus

KIB = 1024


def one_outcome(producer: Producer, vm: SampleVM, repo: Repository, backup: str) -> BackupStatus:
    """The backup ended in exactly one outcome, completely: never both, never neither."""
    status = producer.wait(backup, timeout=30)
    assert not status.active, f"backup still {status.phase} after 30 s"
    record = producer.rt.records.load(backup)
    snapshots = [str(s) for s in repo.snapshots(vm.vmid)]
    metas = [producer.rt.bitmaps.meta(vm.vmid, d.name) for d in vm.drives]
    assert not any((repo.path / "staging").iterdir())
    assert producer.rt.locks.holder(vm.vmid) is None
    if status.status == "done":
        assert snapshots == [status.snapshot]
        assert record.counters == {"commit_runs": 1}
        assert producer.rt.bitmaps.state(backup) is TxnState.COMMITTED
        assert all(m is not None and m.base == status.snapshot for m in metas)
    else:
        assert status.status == "cancelled", status.errmsg
        assert snapshots == []
        assert record.counters == {"rollback_runs": 1}
        assert producer.rt.bitmaps.state(backup) is TxnState.ROLLED_BACK
        assert all(m is not None and m.base == "" for m in metas)
    return status


@pytest.mark.parametrize("delay_ms", [0, 30, 60, 100])
def test_cancel_racing_the_commit_ends_in_exactly_one_outcome(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, delay_ms: int
) -> None:
    # Given a quick two-drive backup, cancelled at some moment around its end
    vm.add_drive("scsi0", 256 * KIB, seed=1)
    vm.add_drive("scsi1", 256 * KIB, seed=2, node="node2")
    backup = producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path)
    time.sleep(delay_ms / 1000)
    producer.cancel(backup)
    # Then it ends in one outcome, completely
    one_outcome(producer, vm, pipeline_repo, backup)
