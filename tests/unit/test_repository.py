"""The repository directory, its config and snapshots, and the snapshot manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.builders import CS, make_image, mixed_content, no_cancel, no_progress, run_backup
from txnbackup.bitmap import RedisBitmaps
from txnbackup.errors import (
    FormatVersionMismatch,
    InvalidInput,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
)
from txnbackup.manifest import BlobEntry, DriveEntry, Manifest
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId
from txnbackup.stats import DriveStats
from txnbackup.transaction import copy, prepare


def test_manifest_survives_a_json_round_trip() -> None:
    # Given a manifest with two drives (stats included) and a config blob
    stats = DriveStats(size=3 * CS, dirty=CS, transferred=CS, zero_bytes=7, reused=11, stored=99)
    manifest = Manifest(
        format=1,
        vmid="100",
        time="2026-01-31T23:59:59Z",
        backup="0b3f4c8e-2f9a-4c1e-9a6b-3a1d2c4e5f60",
        repository="repo-id",
        chunk_size=CS,
        drives=(
            DriveEntry("scsi0", 3 * CS, CS, 3, "scsi0.fidx", "ab" * 32, "used", stats),
            DriveEntry("efidisk0", 128, CS, 1, "efidisk0.fidx", "cd" * 32, "new"),
        ),
        blobs=(BlobEntry("qemu-server.conf", "qemu-server.conf.blob", 42, "ef" * 32),),
    )

    # When it is written as JSON and read back
    again = Manifest.from_json(manifest.to_json(), "test")

    # Then nothing is lost
    assert again == manifest
    assert again.drive("scsi0") == manifest.drives[0]
    assert again.drive("nope") is None
    assert json.loads(manifest.to_json())["drives"][0]["stats"]["reused"] == 11


def test_init_creates_an_openable_repository(tmp_path: Path) -> None:
    created = Repository.init(tmp_path / "repo", 128 * 1024)

    opened = Repository.open(tmp_path / "repo")

    assert opened.chunk_size == 128 * 1024
    assert opened.id == created.id
    assert opened.snapshots() == []


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    target = tmp_path / "repo"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")

    with pytest.raises(RepositoryExists):
        Repository.init(target, CS)

    assert [p.name for p in target.iterdir()] == ["precious.txt"]


def test_init_refuses_an_existing_repository(tmp_path: Path, repo: Repository) -> None:
    with pytest.raises(RepositoryExists):
        Repository.init(repo.path, CS)

    assert Repository.open(repo.path).id == repo.id


def test_init_accepts_an_empty_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()

    assert Repository.init(tmp_path / "repo", CS).chunk_size == CS


@pytest.mark.parametrize(
    "chunk_size",
    [0, -CS, 100_000, 3 * CS, CS // 2, 32 * 1024 * 1024, 16 * 1024 * 1024 + 1],
    ids=["zero", "negative", "not-power", "3x64k", "32k", "32M", "16M+1"],
)
def test_init_refuses_a_bad_chunk_size_and_creates_nothing(tmp_path: Path, chunk_size: int) -> None:
    with pytest.raises(InvalidInput, match="power of two"):
        Repository.init(tmp_path / "repo", chunk_size)

    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("chunk_size", [64 * 1024, 4 * 1024 * 1024, 16 * 1024 * 1024])
def test_init_accepts_the_chunk_size_limits(tmp_path: Path, chunk_size: int) -> None:
    assert Repository.init(tmp_path / "repo", chunk_size).chunk_size == chunk_size


def test_open_refuses_another_format_version(repo: Repository) -> None:
    # Given a repository whose config says it is format version 3
    config_path = repo.path / "config.json"
    config = json.loads(config_path.read_text())
    config["format"] = 3
    config_path.write_text(json.dumps(config))

    # When it is opened, Then the user learns both versions
    with pytest.raises(FormatVersionMismatch) as caught:
        Repository.open(repo.path)
    assert caught.value.args == (str(repo.path), 3, "1 and 2")
    assert "format version 3" in str(caught.value)


@pytest.mark.parametrize("where", ["missing", "empty-dir", "a-file"])
def test_open_refuses_a_missing_repository(tmp_path: Path, where: str) -> None:
    path = tmp_path / "repo"
    if where == "empty-dir":
        path.mkdir()
    elif where == "a-file":
        path.write_text("not a repository")

    with pytest.raises(RepositoryNotFound, match=str(path)):
        Repository.open(path)


def test_snapshots_are_listed_newest_first(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps
) -> None:
    # Given three backups of one VM and one of another
    disk = make_image(tmp_path, "scsi0", mixed_content(2 * CS, seed=1))
    first = run_backup(repo, bitmaps, "100", [disk.drive]).snapshot
    second = run_backup(repo, bitmaps, "100", [disk.drive]).snapshot
    other = run_backup(repo, bitmaps, "200", [disk.drive]).snapshot
    third = run_backup(repo, bitmaps, "100", [disk.drive]).snapshot

    # Then each VM's list and the whole list are newest first
    assert repo.snapshots("100") == [third, second, first]
    assert first.time < second.time < third.time
    assert repo.snapshots("200") == [other]
    everything = repo.snapshots()
    assert sorted(everything, key=lambda s: s.time, reverse=True) == everything
    assert set(everything) == {first, second, third, other}


def test_a_backup_in_progress_is_never_listed(
    tmp_path: Path, repo: Repository, bitmaps: RedisBitmaps
) -> None:
    # Given a backup whose drive has been copied to staging but not committed
    disk = make_image(tmp_path, "scsi0", mixed_content(2 * CS, seed=2))
    plan = prepare(repo, bitmaps, "100", [disk.drive])
    copy(repo, bitmaps, plan, "scsi0", no_cancel, no_progress)
    assert (repo.path / "staging" / plan.backup / "scsi0.fidx").is_file()

    # Then no snapshot is visible, by VM or overall, and it cannot be opened
    assert repo.snapshots() == []
    assert repo.snapshots("100") == []
    assert repo.vmids() == []
    with pytest.raises(SnapshotNotFound):
        repo.manifest(plan.snapshot_time)


def test_a_snapshot_directory_without_manifest_is_not_listed(repo: Repository) -> None:
    (repo.path / "vm" / "100" / "2026-01-01T00:00:00Z").mkdir(parents=True)
    (repo.path / "vm" / "100" / "not-a-time").mkdir()

    assert repo.snapshots() == []
    assert repo.complete_drive(SnapshotId("100", "2026-01-01T00:00:00Z"), "scsi0") is None
