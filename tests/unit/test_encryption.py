"""Encrypted repositories on a real disk: what the files hold, what a key unlocks, and what
tampering with each kind of object looks like to the user."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.builders import CS, make_image, mixed_content, no_cancel, no_progress
from tests.unit.history import DRIVE, Past, make_history
from txnbackup.bitmap import RedisBitmaps
from txnbackup.blob import read_blob
from txnbackup.check import ALL, check_repository
from txnbackup.errors import (
    CorruptChunk,
    IntegrityError,
    KeyMissing,
    ManifestInvalid,
    PassphraseMissing,
    WrongPassphrase,
)
from txnbackup.keyfile import KdfParams, KeyAccess, KeyMode, NewKey
from txnbackup.repository import Repository
from txnbackup.restore import restore_drive
from txnbackup.transaction import commit, copy, prepare
from txnbackup.verify import verify_snapshot

PASSPHRASE = b"correct horse battery staple"
FAST_KDF = KdfParams(n=2**12)  # the format's cost is 2**17; tests need not wait for it


def encrypted(
    path: Path, mode: KeyMode = KeyMode.REPOKEY, keys: KeyAccess | None = None
) -> Repository:
    access = keys or KeyAccess(key_dir=path.parent / "keys")
    return Repository.init(path, CS, NewKey(mode, PASSPHRASE, access, FAST_KDF))


def reopened(repo: Repository, passphrase: bytes | None = PASSPHRASE) -> Repository:
    """The repository as another process sees it: only the passphrase, no key in memory."""
    opened = Repository.open(repo.path, KeyAccess(passphrase, key_dir=repo.path.parent / "keys"))
    opened.unlock()
    return opened


def history(repo: Repository, bitmaps: RedisBitmaps, tmp_path: Path, count: int = 2) -> list[Past]:
    return make_history(repo, bitmaps, f"vm{repo.id[:8]}", tmp_path / "work", count)


def chunk_files(repo: Repository) -> list[Path]:
    return sorted(p for p in (repo.path / "chunks").rglob("*") if p.is_file())


def test_an_encrypted_history_restores_verifies_and_checks(
    tmp_path: Path, bitmaps: RedisBitmaps
) -> None:
    # Given three backups (one full, two incremental) into an encrypted repository
    repo = encrypted(tmp_path / "repo")
    past = history(repo, bitmaps, tmp_path, 3)

    # When another process opens it with the passphrase
    again = reopened(repo)

    # Then every snapshot restores byte for byte, verifies, and the repository checks whole
    for i, snap in enumerate(past):
        out = tmp_path / f"out{i}.raw"
        restore_drive(again, snap.snapshot, DRIVE, out)
        assert out.read_bytes() == snap.content
        assert read_blob(again, snap.snapshot, "vm.conf") == snap.config
        assert verify_snapshot(again, snap.snapshot).ok
    assert [d.action for d in again.manifest(past[2].snapshot).drives] == ["used"]
    report = check_repository(again, ALL)
    assert report.ok, report.problems
    assert report.read == report.chunks > 0


def test_chunk_files_hold_no_plaintext_and_ids_are_keyed(
    tmp_path: Path, bitmaps: RedisBitmaps
) -> None:
    # Given a drive whose chunks are one random block and one compressible text block
    repo = encrypted(tmp_path / "repo")
    content = mixed_content(2 * CS, seed=5, pattern="rt")
    random_block, text_block = content[:CS], content[CS:]
    image = make_image(tmp_path, DRIVE, content)

    # When it is backed up
    plan = prepare(repo, bitmaps, "100", [image.drive])
    copy(repo, bitmaps, plan, DRIVE, no_cancel, no_progress)
    commit(repo, bitmaps, plan, {"vm.conf": b"secret-config-line: 42\n"})

    # Then no file of the repository holds any 64 bytes of either block, or the config
    files = [p for p in repo.path.rglob("*") if p.is_file() and p.name != "config.json"]
    on_disk = b"".join(p.read_bytes() for p in files)
    for block in (random_block, text_block):
        for start in range(0, CS, CS // 8):
            assert block[start : start + 64] not in on_disk
    assert b"secret-config-line" not in on_disk
    assert b"scsi0" not in b"".join(p.read_bytes() for p in chunk_files(repo))
    # And nobody can confirm the blocks are stored: their SHA-256 names no chunk file
    names = {p.name for p in chunk_files(repo)}
    assert len(names) == 2
    for block in (random_block, text_block):
        assert hashlib.sha256(block).hexdigest() not in names
        assert not repo.chunks.present(hashlib.sha256(block).hexdigest())


def test_the_same_data_in_two_repositories_gets_different_chunk_ids(
    tmp_path: Path, bitmaps: RedisBitmaps
) -> None:
    # Given two encrypted repositories and one plain one
    first, second = encrypted(tmp_path / "a"), encrypted(tmp_path / "b")
    plain = Repository.init(tmp_path / "plain", CS)

    # When the same history is backed up into each
    for repo in (first, second, plain):
        history(repo, bitmaps, tmp_path / repo.path.name, 1)

    # Then the two encrypted repositories share no chunk id, and neither shares one with the
    # plain repository (whose ids are the SHA-256 anyone can compute)
    ids = [{p.name for p in chunk_files(r)} for r in (first, second, plain)]
    assert len(ids[0]) == len(ids[1]) == len(ids[2]) > 1
    assert not ids[0] & ids[1]
    assert not (ids[0] | ids[1]) & ids[2]


def test_a_plain_repository_keeps_format_version_1(tmp_path: Path, bitmaps: RedisBitmaps) -> None:
    # Given a repository created without encryption
    repo = Repository.init(tmp_path / "repo", CS)
    history(repo, bitmaps, tmp_path, 1)

    # Then its config is the version-1 config, it has no key, and its chunk files are named
    # by the SHA-256 of their plaintext and start with a version-1 header
    assert json.loads((repo.path / "config.json").read_text()).keys() == {
        "format",
        "chunk_size",
        "id",
    }
    assert not (repo.path / "key").exists()
    for path in chunk_files(repo):
        data = repo.chunks.get(path.name)
        assert hashlib.sha256(data).hexdigest() == path.name
        assert path.read_bytes()[:5] == b"TXBC\x01"


def test_a_wrong_passphrase_is_refused(tmp_path: Path) -> None:
    repo = encrypted(tmp_path / "repo")
    with pytest.raises(WrongPassphrase) as caught:
        reopened(repo, b"not the passphrase")
    assert caught.value.exit_code == 10
    assert "wrong passphrase" in str(caught.value)


def test_no_passphrase_is_refused(tmp_path: Path) -> None:
    repo = encrypted(tmp_path / "repo")
    with pytest.raises(PassphraseMissing) as caught:
        reopened(repo, None)
    assert "TXNBACKUP_PASSPHRASE" in str(caught.value)


def test_a_keyfile_key_lives_outside_the_repository(tmp_path: Path) -> None:
    # Given a repository in keyfile mode
    repo = encrypted(tmp_path / "repo", KeyMode.KEYFILE)
    key = tmp_path / "keys" / repo.id

    # Then its key is in the key directory, not in the repository
    assert key.is_file() and not (repo.path / "key").exists()
    assert reopened(repo).encrypted
    # And without that file, the repository and the passphrase are not enough
    key.rename(tmp_path / "elsewhere")
    with pytest.raises(KeyMissing) as caught:
        reopened(repo)
    assert caught.value.exit_code == 10
    assert str(key) in str(caught.value)


def test_a_named_key_file_is_used_for_keyfile_mode(tmp_path: Path) -> None:
    key = tmp_path / "my.key"
    repo = encrypted(tmp_path / "repo", KeyMode.KEYFILE, KeyAccess(key_file=key))
    assert key.is_file()
    Repository.open(repo.path, KeyAccess(PASSPHRASE, key_file=key)).unlock()


def flip(path: Path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def a_chunk(repo: Repository, past: list[Past]) -> tuple[Path, str]:
    path = chunk_files(repo)[0]
    return path, f"chunk {path.name}"


def the_index(repo: Repository, past: list[Past]) -> tuple[Path, str]:
    path = repo.snapshot_dir(past[-1].snapshot) / f"{DRIVE}.fidx"
    return path, f"index {path}"


def the_manifest(repo: Repository, past: list[Past]) -> tuple[Path, str]:
    return repo.snapshot_dir(
        past[-1].snapshot
    ) / "manifest.json", f"manifest of {past[-1].snapshot}"


def the_blob(repo: Repository, past: list[Past]) -> tuple[Path, str]:
    path = repo.snapshot_dir(past[-1].snapshot) / "vm.conf.blob"
    return path, f"config vm.conf of {past[-1].snapshot}"


OBJECTS: dict[str, Callable[[Repository, list[Past]], tuple[Path, str]]] = {
    "chunk": a_chunk,
    "index": the_index,
    "manifest": the_manifest,
    "blob": the_blob,
}


@pytest.mark.parametrize("kind", OBJECTS)
def test_a_flipped_byte_in_each_object_is_an_integrity_error_naming_it(
    tmp_path: Path, bitmaps: RedisBitmaps, kind: str
) -> None:
    # Given an encrypted repository with a snapshot, and one byte flipped in one object
    repo = encrypted(tmp_path / "repo")
    past = history(repo, bitmaps, tmp_path, 1)
    path, name = OBJECTS[kind](repo, past)
    flip(path)
    again = reopened(repo)

    # When the repository is checked, reading every chunk
    report = check_repository(again, ALL)

    # Then the problem names the object and says it failed authentication
    assert not report.ok
    text = "\n".join(f"{p.where}: {p.reason}" for p in report.problems)
    assert "failed authentication" in text
    if kind == "chunk":
        assert f"chunk {path.name}" in text
    else:
        assert name in text or str(past[-1].snapshot) in text
    # And reading it directly raises the integrity error naming it (exit code 5)
    with pytest.raises(IntegrityError) as caught:
        _read(again, kind, past)
    assert caught.value.exit_code == 5
    assert name in str(caught.value) and "failed authentication" in str(caught.value)


def _read(repo: Repository, kind: str, past: list[Past]) -> None:
    snapshot = past[-1].snapshot
    if kind == "blob":
        read_blob(repo, snapshot, "vm.conf")
    elif kind == "manifest":
        repo.manifest(snapshot)
    elif kind == "index":
        entry = repo.manifest(snapshot).drives[0]
        repo.open_index(snapshot, entry).close()
    else:
        repo.chunks.get(chunk_files(repo)[0].name)


def test_verify_reports_a_tampered_chunk_and_moves_it_aside(
    tmp_path: Path, bitmaps: RedisBitmaps
) -> None:
    repo = encrypted(tmp_path / "repo")
    past = history(repo, bitmaps, tmp_path, 1)
    path, _ = a_chunk(repo, past)
    flip(path)
    report = verify_snapshot(reopened(repo), past[0].snapshot)
    assert [p.digest for p in report.problems] == [path.name]
    assert "failed authentication" in report.problems[0].reason
    assert path.with_name(path.name + ".bad").exists()


def test_objects_cannot_be_swapped_between_snapshots(tmp_path: Path, bitmaps: RedisBitmaps) -> None:
    # Given two snapshots of the same drive in an encrypted repository
    repo = encrypted(tmp_path / "repo")
    old, new = history(repo, bitmaps, tmp_path, 2)
    old_dir, new_dir = repo.snapshot_dir(old.snapshot), repo.snapshot_dir(new.snapshot)

    # When the older snapshot's index and config are copied over the newer one's
    shutil.copy(old_dir / f"{DRIVE}.fidx", new_dir / f"{DRIVE}.fidx")
    shutil.copy(old_dir / "vm.conf.blob", new_dir / "vm.conf.blob")
    again = reopened(repo)

    # Then each is refused as another object, not taken for the newer one's
    entry = again.manifest(new.snapshot).drives[0]
    with pytest.raises(IntegrityError, match="sealed as"):
        again.open_index(new.snapshot, entry)
    with pytest.raises(IntegrityError, match="sealed as"):
        read_blob(again, new.snapshot, "vm.conf")
    # And a manifest moved to another snapshot's place is refused too
    shutil.copy(old_dir / "manifest.json", new_dir / "manifest.json")
    with pytest.raises(ManifestInvalid, match="sealed as"):
        again.manifest(new.snapshot)


def test_a_chunk_renamed_to_another_id_is_refused(tmp_path: Path, bitmaps: RedisBitmaps) -> None:
    repo = encrypted(tmp_path / "repo")
    history(repo, bitmaps, tmp_path, 1)
    first, second = chunk_files(repo)[:2]
    shutil.copy(first, second)
    with pytest.raises(CorruptChunk, match="failed authentication"):
        reopened(repo).chunks.get(second.name)
