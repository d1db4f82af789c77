"""Storage faults (issue 5): the repository's disk fills up, a drive shrinks under the copy,
a chunk rots on disk. Each ends in a clear error or report, a full rollback or a repair, and
nothing published half; the space of a failed backup is reclaimable with `txnbackup gc`.

The end-to-end cases run on the shared test fleet (real workers, real Redis); the rules that
keep garbage collection safe beside running backups are checked on the domain directly.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.producer import Producer
from tests.fleet import (
    SampleVM,
    control_queue_empty,
    env_for_workers,
    sample_content,
    wait_for,
)
from tests.fleet_plugin import FLEET_ENV
from tests.pipeline.test_backup import restores_identical
from tests.unit.builders import CS, make_image, mixed_content, run_backup
from txnbackup import chunk, gc
from txnbackup.bitmap import RedisBitmaps
from txnbackup.drive import Drive
from txnbackup.errors import CorruptChunk, IntegrityError
from txnbackup.index import IndexReader
from txnbackup.repository import Repository
from txnbackup.restore import restore_drive
from txnbackup.snapshot import SnapshotId
from txnbackup.status import BackupStatus
from txnbackup.transaction import copy, prepare
from txnbackup.verify import failed_marker, failed_verification, verify_snapshot

MIB = 1024 * 1024
TXNBACKUP = str(Path(sys.executable).parent / "txnbackup")
REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL_DISK = "12m"  # the tmpfs the repository lives on in the disk-full case
HOUR = 3600


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TXNBACKUP, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env_for_workers(FLEET_ENV),
        check=False,
    )


def backup(producer: Producer, vm: SampleVM, repo: Repository) -> BackupStatus:
    return producer.wait(producer.submit(vm.vmid, vm.drives, repository=repo.path), 60)


def settled(producer: Producer, backup: str) -> BackupStatus:
    status = producer.wait(backup, timeout=60)
    assert not status.active, f"backup still {status.phase}"
    # Every rollback sent has been delivered before "exactly once" is judged.
    wait_for(lambda: control_queue_empty(producer.app), 10, "the control queue to drain")
    return producer.status(backup)


def add_random_drive(vm: SampleVM, name: str, size: int, seed: int) -> Drive:
    """A drive of incompressible bytes: it needs its full size in the repository."""
    path = vm.root / f"{vm.vmid}-{name}.raw"
    path.write_bytes(random.Random(seed).randbytes(size))
    drive = Drive(name, str(path))
    vm.drives.append(drive)
    return drive


def chunk_files(repo: Repository) -> set[str]:
    return {p.name for p in (repo.path / "chunks").rglob("*") if p.is_file()}


def referenced(repo: Repository) -> set[str]:
    digests: set[str] = set()
    for snapshot in repo.snapshots():
        for entry in repo.manifest(snapshot).drives:
            with IndexReader(repo.snapshot_dir(snapshot) / entry.index) as index:
                digests |= {d.hex() for d in index if any(d)}
    return digests


def assert_rolled_back_once(
    producer: Producer, vm: SampleVM, repo: Repository, status: BackupStatus, base: str
) -> None:
    raw = producer.rt.records.raw(status.uuid)
    assert raw.get("rollback_runs") == "1" and "commit_runs" not in raw
    assert [str(s) for s in repo.snapshots(vm.vmid)] == [base]
    assert list((repo.path / "staging").iterdir()) == []
    assert producer.rt.locks.holder(vm.vmid) is None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An empty tmpfs of SMALL_DISK mounted for the repository; skipped where mount is denied."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "txnbackup-test", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs for the disk-full case: {mounted.stderr.strip()}"
        print(reason)
        pytest.skip(reason)
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_disk_full_mid_copy_rolls_back_and_gc_reclaims_the_space(
    producer: Producer, vm: SampleVM, small_disk: Path, tmp_path: Path
) -> None:
    # Given a repository on a 12 MiB disk, a committed backup and a guest write since
    repo = Repository.init(small_disk, CS)
    vm.add_drive("scsi0", MIB, seed=1)
    base = backup(producer, vm, repo)
    assert base.status == "done", base.errmsg
    vm.write("scsi0", 5 * CS, b"changed")
    dirty_before = producer.rt.bitmaps.dirty_chunks(vm.vmid, "scsi0")

    # When a 16 MiB drive of random bytes joins the next backup
    add_random_drive(vm, "scsi1", 16 * MIB, seed=2)
    failed = settled(producer, producer.submit(vm.vmid, vm.drives, repository=repo.path))

    # Then the backup ends in error saying the disk is full, on the drive that hit it
    assert failed.status == "error"
    assert failed.errmsg.startswith("drive scsi1: cannot write to repository ")
    assert failed.errmsg.endswith(": disk full")
    assert [d.state for d in failed.drives] == ["done", "failed"]
    # And it was rolled back once: nothing published, no staging area, the lock free
    assert_rolled_back_once(producer, vm, repo, failed, base.snapshot)
    # And the bitmap kept the guest's write, still relative to the old snapshot
    assert producer.rt.bitmaps.dirty_chunks(vm.vmid, "scsi0") >= dirty_before
    meta = producer.rt.bitmaps.meta(vm.vmid, "scsi0")
    assert meta is not None and meta.base == base.snapshot
    # And chunks the failed backup stored are left over, unreferenced
    leftover = chunk_files(repo) - referenced(repo)
    assert len(leftover) > 8 * MIB // CS

    # When gc runs with the default grace period, they are too young to remove
    default = cli("gc", "--repo", str(repo.path), "--json")
    assert default.returncode == 0, default.stderr
    kept = json.loads(default.stdout)
    assert (kept["removed"], kept["young"]) == (0, len(leftover))
    # and a dry run without grace only counts them
    dry = json.loads(
        cli("gc", "--repo", str(repo.path), "--grace", "0", "--dry-run", "--json").stdout
    )
    assert (dry["dry_run"], dry["removed"]) == (True, len(leftover))
    assert chunk_files(repo) - referenced(repo) == leftover

    # When gc runs without grace
    free_before = free_bytes(repo.path)
    swept = cli("gc", "--repo", str(repo.path), "--grace", "0", "--json")

    # Then it removed exactly the leftovers and the disk has that space again
    assert swept.returncode == 0, swept.stderr
    report = json.loads(swept.stdout)
    assert report["removed"] == len(leftover)
    assert chunk_files(repo) == referenced(repo)
    assert free_bytes(repo.path) - free_before >= report["removed_bytes"] > 8 * MIB
    # And every remaining snapshot still verifies
    assert all(verify_snapshot(repo, s).ok for s in repo.snapshots())
    # And the next backup of the VM's first drive succeeds and restores byte-identical
    vm.drives.pop()
    after = backup(producer, vm, repo)
    assert after.status == "done", after.errmsg
    assert [d.action for d in after.drives] == ["used"]
    assert restores_identical(repo, after.snapshot, vm, tmp_path)


def test_a_drive_that_shrinks_mid_copy_fails_naming_drive_and_offset(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, tmp_path: Path
) -> None:
    # Given a committed backup of a 2 MiB drive and a guest write to chunk 20 since
    repo = pipeline_repo
    vm.add_drive("scsi0", 2 * MIB, seed=3)
    base = backup(producer, vm, repo)
    assert base.status == "done", base.errmsg
    vm.write("scsi0", 20 * CS, b"changed")

    # When the drive is cut to 1 MiB while a slow full backup reads its first half
    running = producer.submit(
        vm.vmid, vm.drives, repository=repo.path, full=True, speed_limit=256 * 1024
    )
    wait_for(lambda: producer.status(running).drives[0].transferred > 0, 20, "copy to start")
    os.truncate(vm.path("scsi0"), MIB)
    failed = settled(producer, running)

    # Then the backup fails with the drive, the byte offset and what happened
    assert failed.status == "error"
    assert failed.errmsg == (
        f"drive scsi0: read failed at offset {MIB}: "
        f"drive shrank from {2 * MIB} to {MIB} bytes during the backup"
    )
    # And it was rolled back once, keeping the guest's write relative to the old snapshot
    assert_rolled_back_once(producer, vm, repo, failed, base.snapshot)
    assert 20 in producer.rt.bitmaps.dirty_chunks(vm.vmid, "scsi0")
    meta = producer.rt.bitmaps.meta(vm.vmid, "scsi0")
    assert meta is not None and meta.base == base.snapshot
    # And the next backup reads the whole, smaller drive and restores it
    after = backup(producer, vm, repo)
    assert after.status == "done", after.errmsg
    assert (after.drives[0].action, after.drives[0].reason) == (
        "invalid",
        f"drive size changed ({2 * MIB} -> {MIB} bytes)",
    )
    assert restores_identical(repo, after.snapshot, vm, tmp_path)


@dataclass(frozen=True)
class FailingDisk:
    """A drive image (written to directly, as the guest would) and the read-only view of it
    that the backup reads, which fails with EIO where ``fail`` says."""

    image: Path
    view: Path

    def fail(self, offset: int, length: int) -> None:
        self.image.with_name(f"{self.image.name}.fail").write_text(f"{offset} {length}")

    def repair(self) -> None:
        self.image.with_name(f"{self.image.name}.fail").unlink()


@pytest.fixture
def failing_disk(tmp_path: Path) -> Iterator[FailingDisk]:
    """A 2 MiB image served through tests.faults.failing_drive (FUSE); skipped without FUSE."""
    image = tmp_path / "disk" / "scsi0.raw"
    image.parent.mkdir()
    image.write_bytes(sample_content(2 * MIB, seed=8))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.failing_drive", str(image), str(mountpoint)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    view = mountpoint / image.name
    deadline = time.monotonic() + 20
    while not view.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            _, err = server.communicate()
            reason = f"cannot serve a failing drive over FUSE: {err.strip()[-300:]}"
            print(reason)
            pytest.skip(reason)
        time.sleep(0.05)
    try:
        yield FailingDisk(image, view)
    finally:
        subprocess.run(["fusermount", "-u", str(mountpoint)], check=False)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_a_drive_whose_disk_fails_mid_copy_names_drive_and_offset(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, failing_disk: FailingDisk
) -> None:
    # Given a committed backup of a drive, then guest writes to chunks 10 and 20
    repo, disk = pipeline_repo, failing_disk
    vm.drives.append(Drive("scsi0", str(disk.view)))
    base = backup(producer, vm, repo)
    assert base.status == "done", base.errmsg
    for chunk_no in (10, 20):
        with open(disk.image, "r+b") as fh:
            fh.seek(chunk_no * CS)
            fh.write(b"changed")
        vm.tracker.mark_dirty(vm.vmid, "scsi0", chunk_no * CS, 7)

    # When the drive's disk fails reading chunk 20 during the next backup
    disk.fail(20 * CS + 4096, 4096)
    failed = settled(producer, producer.submit(vm.vmid, vm.drives, repository=repo.path))

    # Then the backup fails naming the drive, the chunk's byte offset and the I/O error
    assert failed.status == "error"
    assert failed.errmsg == f"drive scsi0: read failed at offset {20 * CS}: Input/output error"
    # And it was rolled back once, keeping both writes relative to the old snapshot
    assert_rolled_back_once(producer, vm, repo, failed, base.snapshot)
    assert producer.rt.bitmaps.dirty_chunks(vm.vmid, "scsi0") >= {10, 20}
    meta = producer.rt.bitmaps.meta(vm.vmid, "scsi0")
    assert meta is not None and meta.base == base.snapshot
    # And once the disk reads again, the next backup copies both and restores byte-identical
    disk.repair()
    after = backup(producer, vm, repo)
    assert after.status == "done", after.errmsg
    assert (after.drives[0].action, after.drives[0].dirty) == ("used", 2 * CS)
    out = disk.image.with_name("restored.raw")
    restore_drive(repo, SnapshotId.parse(after.snapshot), "scsi0", out)
    assert out.read_bytes() == disk.image.read_bytes()


def damage(repo: Repository, digest: str) -> None:
    path = repo.chunks.path_for(digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def digest_at(repo: Repository, snapshot: str, drive: str, chunk_no: int) -> str:
    snap = SnapshotId.parse(snapshot)
    with IndexReader(repo.snapshot_dir(snap) / f"{drive}.fidx") as index:
        return list(index)[chunk_no].hex()


def test_a_corrupt_chunk_is_reported_moved_aside_and_never_reused(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, tmp_path: Path
) -> None:
    # Given a committed backup whose chunk 3 (random bytes, stored once) rots on disk
    repo = pipeline_repo
    vm.add_drive("scsi0", MIB, seed=4)
    first = backup(producer, vm, repo)
    assert first.status == "done", first.errmsg
    digest = digest_at(repo, first.snapshot, "scsi0", 3)
    damage(repo, digest)
    offset = str(3 * CS)

    # When the user verifies the snapshot
    verified = cli("verify", "--repo", str(repo.path), first.snapshot)

    # Then verify fails (exit 5) naming the drive, the byte offset and the problem
    assert verified.returncode == 5, verified.stderr
    row = next(line for line in verified.stdout.splitlines() if digest in line)
    assert row.split()[:2] == ["scsi0", offset]
    assert "CRC mismatch" in row and "moved aside" in row
    assert f"snapshot {first.snapshot} failed verification: 1 bad chunk(s)" in verified.stderr
    # And the chunk file is moved aside, and the failure recorded beside the snapshot
    assert not repo.chunks.has(digest)
    assert repo.chunks.bad_path_for(digest).exists()
    marker = json.loads(failed_marker(repo, SnapshotId.parse(first.snapshot)).read_text())
    assert [(p["drive"], p["offset"]) for p in marker["problems"]] == [("scsi0", 3 * CS)]
    assert [str(s) for s in repo.snapshots()] == [first.snapshot]
    # And a restore of the snapshot reports the chunk by drive and offset
    restored = cli(
        "restore", "--repo", str(repo.path), first.snapshot, "scsi0", str(tmp_path / "x")
    )
    assert restored.returncode == 5
    assert f"(drive scsi0, offset {offset})" in restored.stderr
    assert "moved aside" in restored.stderr
    assert not (tmp_path / "x").exists()

    # When the VM is backed up again, with no guest write in between
    second = backup(producer, vm, repo)

    # Then its bitmap is not trusted (its base failed verification): the drive is read whole
    assert second.status == "done", second.errmsg
    drive = second.drives[0]
    assert (drive.action, drive.reason) == (
        "invalid",
        f"base snapshot {first.snapshot} failed verification",
    )
    assert drive.dirty == drive.transferred == MIB
    # And the chunk is stored again, good, while the others were deduplicated
    assert chunk.decode(repo.chunks.path_for(digest).read_bytes(), digest)
    assert drive.reused == MIB - drive.zero_bytes - CS
    # And the new snapshot verifies and restores byte-identical
    assert cli("verify", "--repo", str(repo.path), second.snapshot).returncode == 0
    assert restores_identical(repo, second.snapshot, vm, tmp_path)
    # And the old snapshot, whose chunk is back, passes verify again, which clears its mark
    again = cli("verify", "--repo", str(repo.path), first.snapshot)
    assert again.returncode == 0, again.stdout
    assert not failed_verification(repo, SnapshotId.parse(first.snapshot))
    # And gc removes the moved-aside file, now that a good copy is stored
    assert json.loads(cli("gc", "--repo", str(repo.path), "--json").stdout)["bad_removed"] == 1
    assert not repo.chunks.bad_path_for(digest).exists()


def test_verify_reports_a_missing_chunk_and_marks_the_snapshot(
    repo: Repository, bitmaps: RedisBitmaps, tmp_path: Path
) -> None:
    # Given a snapshot one of whose chunk files is gone
    disk = make_image(tmp_path, "scsi0", mixed_content(6 * CS, seed=5))
    done = run_backup(repo, bitmaps, "100", [disk.drive])
    digest = digest_at(repo, str(done.snapshot), "scsi0", 3)
    repo.chunks.path_for(digest).unlink()

    report = verify_snapshot(repo, done.snapshot)

    # Then it is reported by drive and offset, and the snapshot is marked as failed
    assert [(p.drive, p.offset, p.reason) for p in report.problems] == [
        ("scsi0", 3 * CS, "missing from the repository")
    ]
    assert failed_verification(repo, done.snapshot)
    assert not repo.chunks.bad_path_for(digest).exists()  # nothing to move aside


def test_an_incremental_backup_reads_again_a_clean_chunk_verify_moved_aside(
    repo: Repository, bitmaps: RedisBitmaps, tmp_path: Path
) -> None:
    # Given snapshot 1, then snapshot 2 relative to it (chunk 0 written), both holding chunk 3
    content = mixed_content(6 * CS, seed=6)
    disk = make_image(tmp_path, "scsi0", content)
    first = run_backup(repo, bitmaps, "100", [disk.drive])
    disk.write(0, b"new")
    bitmaps.mark_dirty("100", "scsi0", 0, 3)
    second = run_backup(repo, bitmaps, "100", [disk.drive])
    assert second.entries["scsi0"].action == "used"
    digest = digest_at(repo, str(first.snapshot), "scsi0", 3)
    # When verify of the OLDER snapshot finds chunk 3 corrupt and moves it aside
    damage(repo, digest)
    assert not verify_snapshot(repo, first.snapshot).ok
    assert not failed_verification(repo, second.snapshot)

    # Then the next backup still uses the bitmap (its base, snapshot 2, is not marked),
    # but reads chunk 3 again rather than refer to the missing file
    third = run_backup(repo, bitmaps, "100", [disk.drive])
    entry = third.entries["scsi0"]
    assert entry.action == "used"
    assert entry.stats.dirty == entry.stats.transferred == CS
    assert repo.chunks.has(digest)
    assert verify_snapshot(repo, third.snapshot).ok
    assert verify_snapshot(repo, second.snapshot).ok
    out = tmp_path / "out.raw"
    restore_drive(repo, third.snapshot, "scsi0", out)
    assert out.read_bytes() == disk.read()


def test_a_restore_of_a_damaged_chunk_names_drive_and_offset_and_leaves_no_file(
    repo: Repository, bitmaps: RedisBitmaps, tmp_path: Path
) -> None:
    disk = make_image(tmp_path, "scsi0", mixed_content(6 * CS, seed=7))
    done = run_backup(repo, bitmaps, "100", [disk.drive])
    damage(repo, digest_at(repo, str(done.snapshot), "scsi0", 4))

    with pytest.raises(CorruptChunk, match=rf"CRC mismatch \(drive scsi0, offset {4 * CS}\)"):
        restore_drive(repo, done.snapshot, "scsi0", tmp_path / "out.raw")
    assert not (tmp_path / "out.raw").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


# Garbage collection beside running backups, on the domain.


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def stored_chunk(repo: Repository, seed: int) -> str:
    data = random.Random(seed).randbytes(CS)
    digest = chunk.digest_of(data)
    repo.chunks.put(digest, chunk.encode(data))
    repo.chunks.flush()
    return digest


def test_gc_removes_only_unreferenced_chunks_older_than_the_grace_period(
    repo: Repository, bitmaps: RedisBitmaps, tmp_path: Path
) -> None:
    # Given a snapshot (all its chunks old), an old and a young unreferenced chunk
    disk = make_image(tmp_path, "scsi0", mixed_content(6 * CS, seed=8))
    done = run_backup(repo, bitmaps, "100", [disk.drive])
    for path in (repo.path / "chunks").rglob("*"):
        age(path, 2 * HOUR)
    old, young = stored_chunk(repo, 1), stored_chunk(repo, 2)
    age(repo.chunks.path_for(old), 2 * HOUR)

    report = gc.collect(repo)

    assert (report.removed, report.young) == (1, 1)
    assert not repo.chunks.has(old) and repo.chunks.has(young)
    assert verify_snapshot(repo, done.snapshot).ok


def test_gc_keeps_an_old_chunk_a_backup_deduplicated_against(repo: Repository) -> None:
    # Given an old unreferenced chunk (left by a failed backup)
    digest = stored_chunk(repo, 3)
    age(repo.chunks.path_for(digest), 2 * HOUR)
    # When a running backup finds it stored and counts on it
    assert repo.chunks.reuse(digest)
    # Then gc keeps it
    assert gc.collect(repo).removed == 0
    assert repo.chunks.has(digest)


def test_gc_puts_back_a_chunk_reused_between_its_look_and_its_removal(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an old unreferenced chunk, and a backup that reuses it just as gc moves it away
    digest = stored_chunk(repo, 4)
    path = repo.chunks.path_for(digest)
    age(path, 2 * HOUR)
    rename = os.rename

    def reuse_then_rename(src: Path, dst: Path) -> None:
        if Path(src) == path:
            assert repo.chunks.reuse(digest)
        rename(src, dst)

    monkeypatch.setattr(os, "rename", reuse_then_rename)

    report = gc.collect(repo)

    # Then gc sees the refreshed file and puts it back under its name
    assert (report.removed, report.young) == (0, 1)
    assert chunk.decode(path.read_bytes(), digest)
    assert [p.name for p in path.parent.iterdir()] == [digest]


def test_gc_keeps_what_a_running_backup_stored_however_long_it_runs(
    repo: Repository, bitmaps: RedisBitmaps, tmp_path: Path
) -> None:
    # Given a backup that copied drive 1 (indexed in staging) and is copying drive 2, both
    # started long before the grace period; drive 2's chunks are not indexed anywhere yet
    one = make_image(tmp_path, "scsi0", mixed_content(4 * CS, seed=9))
    two = make_image(tmp_path, "scsi1", mixed_content(4 * CS, seed=10))
    plan = prepare(repo, bitmaps, "100", [one.drive, two.drive])
    copy(repo, bitmaps, plan, "scsi0", lambda: None, lambda s: None)
    staging = repo.staging_dir(plan.backup)
    for path in [*(repo.path / "chunks").rglob("*"), *staging.iterdir()]:
        age(path, 3 * HOUR)
    age(staging, 2 * HOUR)  # drive 2 started here: its index file was created
    in_progress = stored_chunk(repo, 5)
    age(repo.chunks.path_for(in_progress), 2 * HOUR - 60)
    before = chunk_files(repo)

    report = gc.collect(repo, grace=60)

    # Then nothing is removed: drive 1's chunks are marked from the staging index, drive 2's
    # chunk is newer than the staging directory
    assert report.removed == 0
    assert chunk_files(repo) == before


def test_gc_deletes_nothing_when_a_snapshot_index_is_damaged(
    repo: Repository, bitmaps: RedisBitmaps, tmp_path: Path
) -> None:
    disk = make_image(tmp_path, "scsi0", mixed_content(4 * CS, seed=11))
    done = run_backup(repo, bitmaps, "100", [disk.drive])
    age(repo.chunks.path_for(stored_chunk(repo, 6)), 2 * HOUR)
    index = repo.snapshot_dir(done.snapshot) / "scsi0.fidx"
    index.write_bytes(index.read_bytes()[:-1])
    before = chunk_files(repo)

    with pytest.raises(IntegrityError, match=r"scsi0.fidx: 155 bytes, .*; nothing deleted"):
        gc.collect(repo, grace=0)
    assert chunk_files(repo) == before


def test_gc_removes_stray_temporary_files(repo: Repository) -> None:
    stray = repo.path / "chunks" / "abcd" / ".tmp-0123456789ab-abcd"
    stray.parent.mkdir()
    stray.write_bytes(b"half a chunk")
    fresh = stray.with_name(".tmp-ba9876543210-abcd")
    fresh.write_bytes(b"being written")
    age(stray, 2 * HOUR)

    assert gc.collect(repo).tmp_removed == 1
    assert not stray.exists() and fresh.exists()
