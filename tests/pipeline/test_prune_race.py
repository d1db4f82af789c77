"""Prune racing backups through the real fleet: neither removes what the other counts on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.producer import Producer
from tests.fleet import SampleVM, wait_for
from tests.fleet_plugin import FLEET_ENV
from txnbackup.errors import BackupRunning
from txnbackup.repository import Repository

CLI = Path(sys.executable).parent / "txnbackup"
KIB = 1024


def cli_env(repo: Repository, **extra: str) -> dict[str, str]:
    return {**os.environ, **FLEET_ENV, "TXNBACKUP_REPOSITORY": str(repo.path), **extra}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def backed_up(producer: Producer, vm: SampleVM, repo: Repository, **kw: object) -> str:
    backup = producer.submit(vm.vmid, vm.drives, repository=repo.path, **kw)  # type: ignore[arg-type]
    status = producer.wait(backup, timeout=60)
    assert status.status == "done", status.errmsg
    return status.snapshot


def actions(producer: Producer, backup: str) -> list[str]:
    return [d.action for d in producer.status(backup).drives]


def test_prune_refuses_a_vm_while_its_backup_runs(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository
) -> None:
    # Given two snapshots and a slow backup of the VM running
    vm.add_drive("scsi0", 512 * KIB, seed=3)
    backed_up(producer, vm, pipeline_repo)
    backed_up(producer, vm, pipeline_repo)
    slow = producer.submit(
        vm.vmid, vm.drives, repository=pipeline_repo.path, full=True, speed_limit=128 * KIB
    )

    # When prune is asked to remove the older snapshot
    pruned = run(cli_env(pipeline_repo), "prune", vm.vmid, "--keep-last", "1")

    # Then it refuses, naming the backup, and removes nothing; the backup commits
    assert pruned.returncode == 6, pruned.stderr
    assert f"backup running: {slow}" in pruned.stderr
    assert len(pipeline_repo.snapshots(vm.vmid)) == 2
    status = producer.wait(slow, timeout=60)
    assert status.status == "done", status.errmsg
    assert len(pipeline_repo.snapshots(vm.vmid)) == 3


def test_a_backup_submitted_while_prune_holds_the_vm_waits_for_it(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository
) -> None:
    # Given two snapshots, and a prune that stops for 3 s once it holds the VM's lock
    vm.add_drive("scsi0", 256 * KIB, seed=4)
    backed_up(producer, vm, pipeline_repo)
    newest = backed_up(producer, vm, pipeline_repo)
    env = cli_env(pipeline_repo, TXNBACKUP_FAILPOINTS="prune.locked=sleep:3")
    prune = subprocess.Popen(
        [str(CLI), "prune", vm.vmid, "--keep-last", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: producer.rt.locks.holder(vm.vmid) is not None, what="prune's lock")

    # When a backup is submitted meanwhile, it is refused
    with pytest.raises(BackupRunning):
        producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path)
    _out, err = prune.communicate(timeout=60)

    # Then prune removed the older snapshot only, and the next backup is incremental
    # against the newest one, which prune kept
    assert prune.returncode == 0, err
    assert [str(s) for s in pipeline_repo.snapshots(vm.vmid)] == [newest]
    vm.write("scsi0", 0, b"changed")
    backup = producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path)
    assert producer.wait(backup, timeout=60).status == "done"
    assert actions(producer, backup) == ["used"]


def test_forgetting_a_bitmap_base_says_so_and_the_next_backup_reads_everything(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository
) -> None:
    vm.add_drive("scsi0", 256 * KIB, seed=5)
    vm.add_drive("scsi1", 128 * KIB, seed=6, node="node2")
    backed_up(producer, vm, pipeline_repo)
    base = backed_up(producer, vm, pipeline_repo)

    forgot = run(cli_env(pipeline_repo), "forget", f"vm/{vm.vmid}/latest")

    assert forgot.returncode == 0, forgot.stderr
    assert f"base of bitmaps {vm.vmid}/scsi0, {vm.vmid}/scsi1" in forgot.stdout
    assert base not in [str(s) for s in pipeline_repo.snapshots(vm.vmid)]
    backup = producer.submit(vm.vmid, vm.drives, repository=pipeline_repo.path)
    status = producer.wait(backup, timeout=60)
    assert status.status == "done", status.errmsg
    assert actions(producer, backup) == ["invalid", "invalid"]
    assert status.transferred == (256 + 128) * KIB
