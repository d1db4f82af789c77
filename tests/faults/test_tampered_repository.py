"""A repository that was edited, damaged or booby-trapped (issue 12): hand-edited manifests and
indexes, truncated chunks, planted symbolic links, loose permissions, a block device target.

Whatever a reader finds, it never restores wrong bytes with exit 0, verify never calls a
damaged snapshot good, gc never deletes a live chunk or anything outside the repository, and a
backup never deduplicates against a damaged or linked chunk file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.builders import CS, Done, Image, make_image, mixed_content, restored, run_backup
from txnbackup import gc
from txnbackup.bitmap import RedisBitmaps
from txnbackup.errors import IntegrityError, TxnBackupError
from txnbackup.index import HEADER
from txnbackup.names import new_backup_id
from txnbackup.repository import Repository
from txnbackup.restore import restore_drive
from txnbackup.snapshot import SnapshotId
from txnbackup.staging import Staging
from txnbackup.verify import verify_snapshot

TXNBACKUP = str(Path(sys.executable).parent / "txnbackup")
VM = "100"
SIZE = 5 * CS + 1000  # six chunks: random, text, zero, random, text, a short zero one


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXNBACKUP_")}
    return subprocess.run(
        [TXNBACKUP, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def image(tmp_path: Path) -> Image:
    return make_image(tmp_path, "scsi0", mixed_content(SIZE, seed=12))


@pytest.fixture
def done(repo: Repository, bitmaps: RedisBitmaps, image: Image) -> Done:
    return run_backup(repo, bitmaps, VM, [image.drive])


def chunk_files(repo: Repository) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in (repo.path / "chunks").rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def digests(repo: Repository, snapshot: SnapshotId) -> list[str]:
    raw = (repo.snapshot_dir(snapshot) / "scsi0.fidx").read_bytes()[HEADER.size :]
    return [raw[i : i + 32].hex() for i in range(0, len(raw), 32)]


# --- hand-edited manifests and indexes ---------------------------------------------------

Manifest = dict[str, Any]


def canonical_sha256(data: Manifest) -> str:
    """The manifest checksum as docs/format.md defines it, computed independently here."""
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


@dataclass(frozen=True)
class Edit:
    change: Callable[[Manifest, Path], None]
    says: str
    fix_checksum: bool = True  # an editor who knows the format recomputes the checksum


def drive0(m: Manifest) -> dict[str, Any]:
    drive: dict[str, Any] = m["drives"][0]
    return drive


def cut_index_count(m: Manifest, snapshot_dir: Path) -> None:
    index = snapshot_dir / "scsi0.fidx"
    raw = bytearray(index.read_bytes()[:-32])
    magic, version, cs, size, count = HEADER.unpack_from(raw)
    HEADER.pack_into(raw, 0, magic, version, cs, size, count - 1)
    index.write_bytes(bytes(raw))
    drive0(m)["index_sha256"] = hashlib.sha256(raw).hexdigest()


def setter(key: str, value: object, where: str = "drive") -> Callable[[Manifest, Path], None]:
    def change(m: Manifest, _: Path) -> None:
        (drive0(m) if where == "drive" else m)[key] = value

    return change


EDITS: dict[str, Edit] = {
    "size-plus-100": Edit(
        setter("size", SIZE + 100), "manifest_sha256 does not match", fix_checksum=False
    ),
    "size-plus-100-checksum-fixed": Edit(setter("size", SIZE + 100), "differ from the manifest's"),
    "index-count-cut-checksum-fixed": Edit(cut_index_count, "5 entries for"),
    "index-etc-hostname": Edit(setter("index", "/etc/hostname"), "is not 'scsi0.fidx'"),
    "index-escapes": Edit(setter("index", "../../x.fidx"), "is not 'scsi0.fidx'"),
    "drives-duplicate": Edit(
        lambda m, _: m.update(drives=[drive0(m), drive0(m)]), "listed twice: scsi0"
    ),
    "drive-name-escapes": Edit(setter("name", "../../x"), "drive name '../../x' must match"),
    "size-not-a-number": Edit(setter("size", "big"), "size 'big' is not an integer"),
    "size-huge": Edit(setter("size", 10**30), "is not an integer in"),
    "field-unknown": Edit(setter("extra", 1), "unknown field(s) extra"),
    "field-missing": Edit(lambda m, _: m.pop("backup"), "missing field(s) backup"),
    "vmid-of-another-vm": Edit(setter("vmid", "200", where="manifest"), "vmid '200'"),
}


def tamper(repo: Repository, snapshot: SnapshotId, edit: Edit) -> None:
    path = repo.snapshot_dir(snapshot) / "manifest.json"
    data = json.loads(path.read_text())
    edit.change(data, path.parent)
    if edit.fix_checksum:
        data["manifest_sha256"] = canonical_sha256(data)
    path.write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize("name", EDITS)
def test_a_hand_edited_manifest_is_refused_by_every_reader(
    tmp_path: Path, repo: Repository, done: Done, name: str
) -> None:
    # Given a snapshot whose manifest (and maybe index) was edited by hand
    edit = EDITS[name]
    tamper(repo, done.snapshot, edit)
    chunks = chunk_files(repo)
    target = tmp_path / "restored.raw"

    # When it is restored, Then the restore is refused, naming the problem, and writes nothing
    with pytest.raises(IntegrityError) as raised:
        restore_drive(repo, done.snapshot, "scsi0", target)
    assert edit.says in str(raised.value)
    assert not target.exists()
    # And verify does not call it good
    try:
        report = verify_snapshot(repo, done.snapshot)
    except TxnBackupError as exc:
        assert exc.exit_code == IntegrityError.exit_code
    else:
        assert not report.ok
        assert any(edit.says in p.reason for p in report.problems)
    # And gc, even with no grace period, deletes nothing
    with pytest.raises(IntegrityError, match="nothing deleted"):
        gc.collect(repo, grace=0)
    assert chunk_files(repo) == chunks
    # And the snapshot is no base for an incremental backup
    assert repo.complete_drive(done.snapshot, "scsi0") is None


@pytest.mark.parametrize("name", ["size-plus-100", "index-escapes", "size-not-a-number"])
def test_the_cli_refuses_a_hand_edited_manifest_without_a_traceback(
    tmp_path: Path, repo: Repository, done: Done, name: str
) -> None:
    tamper(repo, done.snapshot, EDITS[name])
    target = tmp_path / "restored.raw"
    chunks = chunk_files(repo)
    snap, where = str(done.snapshot), f"--repo={repo.path}"

    runs = {
        "restore": cli("restore", where, snap, "scsi0", str(target)),
        "verify": cli("verify", where, snap),
        "gc": cli("gc", where, "--grace=0"),
    }

    for verb, run in runs.items():
        assert run.returncode == IntegrityError.exit_code, (verb, run.stdout, run.stderr)
        assert "Traceback" not in run.stderr, verb
        assert EDITS[name].says in run.stderr, (verb, run.stderr)
        assert "all good" not in run.stdout
    assert not target.exists()
    assert chunk_files(repo) == chunks


def test_a_manifest_carries_the_checksum_of_its_canonical_body(
    repo: Repository, done: Done
) -> None:
    data = json.loads((repo.snapshot_dir(done.snapshot) / "manifest.json").read_text())
    assert data["manifest_sha256"] == canonical_sha256(data)


# --- chunks that are present but damaged -------------------------------------------------


def truncate_chunk(repo: Repository, digest: str, keep: int = 1000) -> None:
    path = repo.chunks.path_for(digest)
    path.write_bytes(path.read_bytes()[:keep])


def test_a_truncated_chunk_is_stored_again_not_deduplicated(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps, image: Image, done: Done
) -> None:
    # Given the first (random, stored raw) chunk of the drive truncated in the repository
    first = digests(repo, done.snapshot)[0]
    truncate_chunk(repo, first)

    # When the drive is backed up again, reading everything
    again = run_backup(repo, bitmaps, VM, [image.drive], full=True)

    # Then the chunk was stored again, and the new snapshot restores and verifies
    stats = again.entries["scsi0"].stats
    assert (stats.reused, stats.stored) == (3 * CS, CS + 16)  # all but the damaged one, again
    assert restored(repo, again.snapshot, "scsi0", tmp_path / "r") == image.read()
    assert verify_snapshot(repo, again.snapshot).ok


def test_a_truncated_clean_chunk_of_the_base_is_read_again(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps, image: Image, done: Done
) -> None:
    # Given a `used` bitmap with nothing dirty, and the base's first chunk truncated
    truncate_chunk(repo, digests(repo, done.snapshot)[0])

    # When the incremental backup runs
    again = run_backup(repo, bitmaps, VM, [image.drive])

    # Then the damaged chunk was read again (dirty for this backup) and the snapshot is whole
    assert done.plan.drive("scsi0").action.value == "new"
    assert again.plan.drive("scsi0").action.value == "used"
    assert again.entries["scsi0"].stats.dirty == CS
    assert restored(repo, again.snapshot, "scsi0", tmp_path / "r") == image.read()


@pytest.mark.parametrize("position", [0, 1], ids=["raw-chunk", "zstd-chunk"])
def test_verify_finds_a_truncated_chunk(repo: Repository, done: Done, position: int) -> None:
    digest = digests(repo, done.snapshot)[position]
    truncate_chunk(repo, digest)

    report = verify_snapshot(repo, done.snapshot)

    assert not report.ok
    assert [p.digest for p in report.problems] == [digest]


# --- symbolic links planted in the repository ----------------------------------------------


def test_a_symlinked_chunk_is_not_deduplicated_against(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps, image: Image, done: Done
) -> None:
    # Given a chunk file replaced by a link to a good copy outside the repository
    first = digests(repo, done.snapshot)[0]
    path = repo.chunks.path_for(first)
    outside = tmp_path / "outside-chunk"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)

    # When the drive is backed up again
    again = run_backup(repo, bitmaps, VM, [image.drive], full=True)

    # Then the chunk is stored inside the repository as a regular file
    assert stat.S_ISREG(os.lstat(path).st_mode)
    assert again.entries["scsi0"].stats.reused == 3 * CS
    assert restored(repo, again.snapshot, "scsi0", tmp_path / "r") == image.read()


def test_a_chunk_in_a_symlinked_prefix_directory_is_not_deduplicated_against(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps, image: Image, done: Done
) -> None:
    # Given a chunk's prefix directory moved outside the repository and linked back
    first = digests(repo, done.snapshot)[0]
    prefix = repo.chunks.path_for(first).parent
    outside = tmp_path / "outside-prefix"
    prefix.rename(outside)
    prefix.symlink_to(outside)

    # When the drive is backed up again, Then the link is refused, not deduplicated against
    with pytest.raises(TxnBackupError, match="is not a directory"):
        run_backup(repo, bitmaps, VM, [image.drive], full=True)
    # And a restore through it is refused as well
    with pytest.raises(IntegrityError, match="symbolic link"):
        restore_drive(repo, done.snapshot, "scsi0", tmp_path / "out.raw")


def test_gc_never_deletes_outside_the_repository(
    tmp_path: Path, repo: Repository, done: Done
) -> None:
    # Given old, chunk-like files outside the repository, reachable through planted links
    outside = tmp_path / "precious"
    outside.mkdir()
    victims = [outside / ("ab" * 32), outside / ".tmp-old", outside / ("cd" * 32)]
    for victim in victims:
        victim.write_text("not yours")
        os.utime(victim, (1, 1))
    (repo.path / "chunks" / "abab").symlink_to(outside)  # a chunk prefix directory
    (repo.path / "vm" / "evil").symlink_to(outside)  # a VM directory with stray .tmp files
    cdcd = repo.path / "chunks" / "cdcd"
    cdcd.mkdir()
    (cdcd / ("cd" * 32)).symlink_to(victims[2])  # a chunk file

    # When gc runs with no grace period
    run = cli("gc", f"--repo={repo.path}", "--grace=0")

    # Then everything outside is still there, and the links were not followed
    assert run.returncode == 0, run.stderr
    assert [v.read_text() for v in victims] == ["not yours"] * 3
    assert restored(repo, done.snapshot, "scsi0", tmp_path / "r") == mixed_content(SIZE, 12)


def test_a_symlinked_index_or_snapshot_is_not_read(
    tmp_path: Path, repo: Repository, done: Done
) -> None:
    # Given the snapshot's index replaced by a link to an identical copy outside
    index = repo.snapshot_dir(done.snapshot) / "scsi0.fidx"
    copy = tmp_path / "copy.fidx"
    copy.write_bytes(index.read_bytes())
    index.unlink()
    index.symlink_to(copy)

    # When it is restored, Then it is refused as a link
    with pytest.raises(IntegrityError, match="symbolic link"):
        restore_drive(repo, done.snapshot, "scsi0", tmp_path / "out.raw")
    assert not verify_snapshot(repo, done.snapshot).ok

    # And a VM directory that is a link to a copy of a snapshot elsewhere is not listed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo.path / "vm" / "200").symlink_to(elsewhere)
    assert [s.vmid for s in repo.snapshots()] == [VM]


# --- permissions -----------------------------------------------------------------------------


def test_repository_files_are_private(repo: Repository, done: Done) -> None:
    # Given a repository with a snapshot and a backup in progress
    staging = Staging(repo, new_backup_id())
    staging.create()
    staging.record_drive(done.entries["scsi0"])

    # Then every directory is 0700 and every file 0600: chunks, indexes, manifests, config
    modes = {p: stat.S_IMODE(p.lstat().st_mode) for p in [repo.path, *repo.path.rglob("*")]}
    loose = {str(p): oct(m) for p, m in modes.items() if m != (0o700 if p.is_dir() else 0o600)}
    assert loose == {}
    names = {p.name for p in modes}
    assert {"config.json", "manifest.json", "scsi0.fidx", "scsi0.entry.json"} <= names


# --- restore to a block device ---------------------------------------------------------------


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Path]:
    """A loop device over a zero-filled file of 8 chunks; skipped where losetup is denied."""
    backing = tmp_path / "loop.img"
    backing.write_bytes(bytes(8 * CS))
    attached = subprocess.run(
        ["losetup", "--show", "-f", str(backing)], capture_output=True, text=True, check=False
    )
    if attached.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {attached.stderr.strip()}")
    device = Path(attached.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=False)


def device_bytes(device: Path, length: int) -> bytes:
    with open(device, "rb") as fh:
        return fh.read(length)


def test_restore_to_a_block_device_needs_overwrite_and_exclusive_access(
    repo: Repository, done: Done, image: Image, loop_device: Path
) -> None:
    snap, where = str(done.snapshot), f"--repo={repo.path}"

    # When a drive is restored to a block device without --overwrite, Then it is refused
    refused = cli("restore", where, snap, "scsi0", str(loop_device))
    assert refused.returncode == 2, refused.stderr
    assert "is a block device; pass --overwrite" in refused.stderr
    assert device_bytes(loop_device, SIZE) == bytes(SIZE)

    # When the device is in use (held open exclusively, as a mount does), Then it is refused
    held = os.open(loop_device, os.O_RDONLY | os.O_EXCL)
    try:
        busy = cli("restore", where, snap, "scsi0", str(loop_device), "--overwrite")
    finally:
        os.close(held)
    assert busy.returncode == 8, busy.stderr
    assert "Device or resource busy" in busy.stderr
    assert "Traceback" not in busy.stderr
    assert device_bytes(loop_device, SIZE) == bytes(SIZE)

    # When --overwrite is given, Then the drive is written to the device
    written = cli("restore", where, snap, "scsi0", str(loop_device), "--overwrite")
    assert written.returncode == 0, written.stderr
    assert device_bytes(loop_device, SIZE) == image.read()
