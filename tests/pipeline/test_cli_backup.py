"""The fleet verbs of the real `txnbackup` command against the real worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.producer import Producer
from tests.fleet import SampleVM, WorkerProcess, env_for_workers, wait_for
from tests.fleet_plugin import FLEET_ENV
from txnbackup.names import new_backup_id
from txnbackup.repository import Repository

MIB = 1024 * 1024
TXNBACKUP = str(Path(sys.executable).parent / "txnbackup")


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command, configured like the test fleet unless ``env`` says otherwise."""
    return subprocess.run(
        [TXNBACKUP, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or env_for_workers(FLEET_ENV),
        cwd=cwd,
        check=False,
    )


def test_a_drive_path_relative_to_the_shell_is_backed_up_and_the_uuid_comes_first(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository
) -> None:
    # Given a drive named by a path relative to the user's directory (not the worker's)
    drive = vm.add_drive("scsi0", MIB, seed=5)
    relative = Path(drive.path).name

    # When it is backed up with --wait
    done = cli(
        "backup", vm.vmid, f"--drive=scsi0={relative}", "--repo", str(pipeline_repo.path),
        "--wait", "--json", cwd=vm.root,
    )  # fmt: skip

    # Then it is done, and the uuid was told first (on stderr, as stdout holds the JSON)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["status"] == "done", status["errmsg"]
    assert done.stderr.splitlines()[0] == f"backup {status['uuid']}"


def test_backup_wait_json_then_status_and_backups(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository
) -> None:
    # Given a VM with two drives on two nodes and a config file
    vm.add_drive("scsi0", MIB, seed=1)
    vm.add_drive("scsi1", MIB, seed=2, node="node2")
    conf = vm.root / "100.conf"
    conf.write_text("memory: 2048\nscsi0: local:100/disk-0.raw\n")
    drives = [f"--drive={d.name}={d.path}@{d.node}" for d in vm.drives]

    # When it is backed up with --wait --json
    done = cli(
        "backup",
        vm.vmid,
        *drives,
        "--repo",
        str(pipeline_repo.path),
        "--config",
        f"qemu-server.conf={conf}",
        "--wait",
        "--json",
    )

    # Then it exits 0 and prints the final status, which `status` repeats
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["status"] == "done" and status["snapshot"].startswith(f"vm/{vm.vmid}/")
    assert [d["name"] for d in status["drives"]] == ["scsi0", "scsi1"]
    again = cli("status", status["uuid"], "--json")
    assert json.loads(again.stdout) == status
    listed = json.loads(cli("backups", "--json", "--limit", "50").stdout)
    assert status["uuid"] in [b["uuid"] for b in listed]
    # and the config file is kept with the snapshot
    manifest = json.loads((pipeline_repo.path / status["snapshot"] / "manifest.json").read_text())
    assert [b["name"] for b in manifest["blobs"]] == ["qemu-server.conf"]
    blob = pipeline_repo.path / status["snapshot"] / manifest["blobs"][0]["file"]
    assert blob.read_text() == conf.read_text()


def test_cancel_verb_rolls_back_and_exits_9_for_the_waiter(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository
) -> None:
    vm.add_drive("scsi0", 4 * MIB, seed=3)
    started = cli(
        "backup",
        vm.vmid,
        f"--drive=scsi0={vm.path('scsi0')}",
        "--repo",
        str(pipeline_repo.path),
        "--speed-limit",
        "1M",
    )
    assert started.returncode == 0, started.stderr
    uuid = started.stdout.strip()
    wait_for(lambda: producer.status(uuid).drives[0].transferred > 0, 20, "copy to start")

    cancelled = cli("cancel", uuid, "--json")

    assert cancelled.returncode == 0, cancelled.stderr
    status = json.loads(cancelled.stdout)
    assert (status["status"], status["errmsg"]) == ("cancelled", "cancelled by user")
    again = cli("cancel", uuid)
    assert again.returncode == 6 and "already ended: cancelled" in again.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["backup", "{vmid}", "--drive=scsi0={missing}"], 3, "does not exist"),
        (["backup", "{vmid}", "--drive=scsi0={path}", "--drive=scsi0={path}"], 2, "duplicate"),
        (["backup", "{vmid}", "--drive=a/b={path}"], 2, "drive name"),
        (["backup", "../x", "--drive=scsi0={path}"], 2, "vmid"),
        (["backup", "{vmid}", "--drive=scsi0={path}@bad/node"], 2, "node"),
        (["status", "not-a-uuid"], 2, "not a backup uuid"),
        (["status", "{unknown}"], 3, "not found"),
        (["cancel", "{unknown}"], 3, "not found"),
    ],
)
def test_bad_input_gets_a_message_and_an_exit_code(
    producer: Producer,
    vm: SampleVM,
    pipeline_repo: Repository,
    args: list[str],
    code: int,
    message: str,
) -> None:
    drive = vm.add_drive("scsi0", MIB, seed=4)
    values = {
        "vmid": vm.vmid,
        "path": drive.path,
        "missing": str(vm.root / "missing.raw"),
        "unknown": new_backup_id(),
    }
    argv = [a.format(**values) for a in args]
    if argv[0] == "backup":
        argv += ["--repo", str(pipeline_repo.path)]
    result = cli(*argv)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert producer.rt.locks.holder(vm.vmid) is None
    assert producer.rt.bitmaps.meta(vm.vmid, "scsi0") is None


def test_redis_unreachable_is_a_clear_error(vm: SampleVM, pipeline_repo: Repository) -> None:
    drive = vm.add_drive("scsi0", MIB, seed=5)
    env = env_for_workers({**FLEET_ENV, "TXNBACKUP_REDIS_URL": "redis://127.0.0.1:1/0"})
    result = cli(
        "backup",
        vm.vmid,
        f"--drive=scsi0={drive.path}",
        "--repo",
        str(pipeline_repo.path),
        env=env,
    )
    assert result.returncode == 7
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_drive_whose_node_has_no_worker_is_told_while_waiting(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository
) -> None:
    # Given a drive on a node no worker serves
    drive = vm.add_drive("scsi0", MIB, seed=6, node="ghost")
    args = ["backup", vm.vmid, f"--drive=scsi0={drive.path}@ghost", "--repo"]
    args += [str(pipeline_repo.path), "--wait", "--json"]
    waiter = subprocess.Popen(
        [TXNBACKUP, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for_workers(FLEET_ENV),
    )
    try:
        # When the user waits for it
        assert waiter.stderr is not None
        uuid = waiter.stderr.readline().split()[-1]
        warning = waiter.stderr.readline()
        # Then they are told which node lacks a worker, and how long the backup waits
        assert "no worker consumes the queue of node ghost" in warning
        assert "drive scsi0 waits" in warning and "3600 s" in warning
        producer.cancel(uuid)
        assert waiter.wait(30) == 9
    finally:
        waiter.kill()
        waiter.wait()


def test_the_fleets_workers_announce_their_nodes_and_a_ghost_node_is_missing(
    producer: Producer, fleet: dict[str, WorkerProcess]
) -> None:
    # Given the running fleet, whose workers announce the nodes they serve
    nodes = list(fleet)
    # When the producer asks which nodes lack a worker
    missing = producer.nodes_without_worker([*nodes, "ghost"])
    # Then only the node nobody serves is named, and the fleet's are answered by the announcements
    assert missing == ["ghost"]
    assert producer.rt.presence().unserved(nodes) == []
