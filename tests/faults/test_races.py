"""Races a fleet sees in real life: cancel against commit, many producers against one VM."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from tasks.producer import Producer
from tests.fleet import SampleVM, new_vmid
from tests.pipeline import test_race
from tests.pipeline.test_backup import restores_identical
from txnbackup.errors import BackupRunning
from txnbackup.repository import Repository
from txnbackup.settings import Settings
from txnbackup.tracker import Tracker

KIB = 1024


@pytest.mark.slow
@pytest.mark.parametrize("iteration", range(100))
def test_cancel_racing_commit_100_times(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, iteration: int
) -> None:
    # Cancels sent at random moments around the end of the last drive (drives take ~50 ms)
    delay_ms = random.Random(iteration).randrange(0, 160)
    test_race.test_cancel_racing_the_commit_ends_in_exactly_one_outcome(
        producer, vm, pipeline_repo, delay_ms
    )


def test_ten_producers_at_once_exactly_one_runs(
    settings: Settings, producer: Producer, vm: SampleVM, pipeline_repo: Repository
) -> None:
    # Given ten producers (each its own connections) submitting the same VM at the same moment
    vm.add_drive("scsi0", 512 * KIB, seed=1)
    producers = [Producer.from_settings(settings) for _ in range(10)]
    barrier = threading.Barrier(len(producers))
    started: list[str] = []
    refused: list[BackupRunning] = []

    def submit(p: Producer) -> None:
        barrier.wait()
        try:
            started.append(p.submit(vm.vmid, vm.drives, repository=pipeline_repo.path))
        except BackupRunning as exc:
            refused.append(exc)

    threads = [threading.Thread(target=submit, args=(p,)) for p in producers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then exactly one runs to done and nine got the clear refusal naming it
    assert len(started) == 1 and len(refused) == 9
    assert all(str(e) == f"backup already running: {started[0]}" for e in refused)
    assert producer.wait(started[0], 60).status == "done"
    assert len(pipeline_repo.snapshots(vm.vmid)) == 1
    assert producer.rt.locks.holder(vm.vmid) is None


def test_writes_during_a_backup_land_in_the_next_one(
    settings: Settings, producer: Producer, pipeline_repo: Repository, tmp_path: Path
) -> None:
    # Given a VM whose guest keeps writing (and reporting) while a slow backup runs
    root = tmp_path / "busy"
    root.mkdir()
    vm = SampleVM(new_vmid(), root, Tracker.from_settings(settings))
    vm.add_drive("scsi0", 1024 * KIB, seed=7)
    first = producer.wait(producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path), 60)
    assert first.status == "done"
    backup = producer.submit(
        vm.vmid, vm.drives, repository=pipeline_repo.path, speed_limit=512 * KIB
    )
    rng = random.Random(3)
    written: set[int] = set()
    while producer.status(backup).active:
        offset = rng.randrange(0, 1024 * KIB - 100)
        vm.write("scsi0", offset, rng.randbytes(100))
        written.add(offset // (64 * KIB))
        time.sleep(0.05)
    # Then every chunk written during the backup is dirty for the next one, which restores exactly
    assert producer.status(backup).status == "done"
    assert written <= producer.rt.bitmaps.dirty_chunks(vm.vmid, "scsi0")
    after = producer.wait(producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path), 60)
    assert after.status == "done"
    assert restores_identical(pipeline_repo, after.snapshot, vm, root)
