"""A forged end-of-backup message (``<prefix>ended:<uuid>``) never ends a wait.

Anyone who can reach Redis can publish on a backup's channel; ``backup --wait`` and
``Producer.wait`` take the message only as a cue to read the backup's record again, and
report the record's status, so a forged "done" cannot make a running backup look finished.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import pytest
from redis import Redis

from tasks.producer import Producer
from tests.conftest import TEST_REDIS_URL
from tests.fleet import SampleVM
from txnbackup.errors import EndNotConfirmed
from txnbackup.record import Field, Phase
from txnbackup.repository import Repository

UNSERVED = "nobody-serves-this-node"  # a node queue no worker consumes: the drive waits


@pytest.fixture
def forger() -> Iterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    yield client
    client.close()


def test_a_forged_end_message_does_not_end_a_wait(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, forger: Redis
) -> None:
    # Given a backup that cannot end by itself: its drive waits for a node without a worker
    vm.add_drive("scsi0", 256 * 1024, seed=1, node=UNSERVED)
    backup = producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path)
    channel = producer.rt.records.keys.ended(backup)
    stop = threading.Event()

    def forge() -> None:
        while not stop.is_set():
            for phase in ("done", "error", "cancelled"):
                forger.publish(channel, phase)
            stop.wait(0.02)

    # When someone publishes its end over and over while a producer waits for it
    thread = threading.Thread(target=forge)
    thread.start()
    try:
        status = producer.wait(backup, timeout=2.0)
    finally:
        stop.set()
        thread.join()

    # Then the wait reports the record, not the messages: still active, no snapshot
    assert (status.status, status.active, status.snapshot) == ("active", True, "")
    # And the real end, when it comes, ends the wait with the record's status
    producer.cancel(backup, "test is over")
    assert producer.wait(backup, timeout=60).status == "cancelled"


@pytest.mark.parametrize("snapshot", ["missing", "another-backup's"])
def test_a_forged_done_in_the_record_is_not_believed_by_the_waiter(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, forger: Redis, snapshot: str
) -> None:
    # Given a published snapshot of this VM (another backup's) and a backup that cannot end
    vm.add_drive("scsi0", 256 * 1024, seed=2)
    first = producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path)
    published = producer.wait(first, timeout=60).snapshot
    waiting = [dataclasses.replace(d, node=UNSERVED) for d in vm.drives]
    backup = producer.submit(vm.vmid, waiting, repository=pipeline_repo.path)
    # When someone able to write Redis sets the running backup's record to done
    head, time = published.rsplit("/", 1)
    name = published if snapshot != "missing" else f"{head}/1999{time[4:]}"  # no such snapshot
    record = producer.rt.records.keys.backup(backup)
    forger.hset(record, mapping={Field.PHASE: Phase.DONE, Field.SNAPSHOT: name})
    # Then the waiter refuses to call it done: the repository does not show this backup
    with pytest.raises(EndNotConfirmed, match=f"backup {backup}: the record says done"):
        producer.wait(backup, timeout=30)
    forger.hset(record, mapping={Field.PHASE: Phase.RUNNING, Field.SNAPSHOT: ""})
    producer.cancel(backup, "test is over")
    assert producer.wait(backup, timeout=60).status == "cancelled"
