"""A cancel racing the commit: every backup ends wholly done or wholly rolled back."""

from __future__ import annotations

import time

import pytest

from tasks.producer import Producer
from tests.fleet import SampleVM
from tests.pipeline.test_cancel import settle
from txnbackup.bitmap import TxnState
from txnbackup.repository import Repository

KIB = 1024


@pytest.mark.parametrize("delay_ms", [0, 15, 30, 45, 60, 80, 100, 150])
def test_cancel_racing_the_commit_ends_in_exactly_one_outcome(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, delay_ms: int
) -> None:
    # Given a quick two-drive backup, cancelled at some moment around its end
    vm.add_drive("scsi0", 256 * KIB, seed=1)
    vm.add_drive("scsi1", 256 * KIB, seed=2, node="node2")
    backup = producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path)
    time.sleep(delay_ms / 1000)
    producer.cancel(backup)

    # When everything has settled
    status = settle(producer, backup)
    raw = producer.rt.records.raw(backup)
    snapshots = [str(s) for s in pipeline_repo.snapshots(vm.vmid)]
    metas = [producer.rt.bitmaps.meta(vm.vmid, d.name) for d in vm.drives]

    # Then it is one outcome, completely: never both, never neither
    assert not any((pipeline_repo.path / "staging").iterdir())
    assert producer.rt.records.holder(vm.vmid) is None
    if status.status == "done":
        assert snapshots == [status.snapshot]
        assert raw.get("commit_runs") == "1" and "rollback_runs" not in raw
        assert producer.rt.bitmaps.state(backup) is TxnState.COMMITTED
        assert all(m is not None and m.base == status.snapshot for m in metas)
    else:
        assert status.status == "cancelled", status.errmsg
        assert snapshots == []
        assert raw.get("rollback_runs") == "1" and "commit_runs" not in raw
        assert producer.rt.bitmaps.state(backup) is TxnState.ROLLED_BACK
        assert all(m is not None and m.base == "" for m in metas)
