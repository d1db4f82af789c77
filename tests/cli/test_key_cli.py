"""Encrypted repositories from the command line: init, the key verbs, and what a wrong or
missing key and a tampered object look like (the installed script, real files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet_plugin import FLEET_ENV
from tests.unit.builders import CS
from tests.unit.history import make_history
from tests.unit.test_downgrade import downgrade
from tests.unit.test_encryption import FAST_KDF, PASSPHRASE, chunk_files, flip
from txnbackup.bitmap import RedisBitmaps
from txnbackup.keyfile import KeyAccess, KeyMode, NewKey
from txnbackup.repository import Repository

CLI = Path(sys.executable).parent / "txnbackup"


def secret_file(path: Path, passphrase: bytes) -> Path:
    path.write_bytes(passphrase + b"\n")
    path.chmod(0o600)
    return path


def environment(
    tmp_path: Path, repo: Path, passphrase: bytes | None = PASSPHRASE
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXNBACKUP_")}
    env |= {"TXNBACKUP_REPOSITORY": str(repo), "HOME": str(tmp_path / "home")}
    env.pop("XDG_CONFIG_HOME", None)
    if passphrase is not None:
        env["TXNBACKUP_PASSPHRASE_FILE"] = str(secret_file(tmp_path / "passphrase", passphrase))
    return env


def redis_environment() -> dict[str, str]:
    """The test Redis and this session's key prefix (a verb that reaches Redis)."""
    return {k: v for k, v in FLEET_ENV.items() if k.startswith("TXNBACKUP_")}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def encrypted_repo(tmp_path: Path, bitmaps: RedisBitmaps) -> tuple[Repository, str]:
    """An encrypted (repokey) repository holding one snapshot, and that snapshot's id."""
    repo = Repository.init(
        tmp_path / "repo", CS, NewKey(KeyMode.REPOKEY, PASSPHRASE, KeyAccess(), FAST_KDF)
    )
    past = make_history(repo, bitmaps, "100", tmp_path / "work", 1)
    return repo, str(past[0].snapshot)


def test_key_export_import_and_change_passphrase(
    tmp_path: Path, encrypted_repo: tuple[Repository, str]
) -> None:
    repo, snapshot = encrypted_repo
    env = environment(tmp_path, repo.path)

    # When the key is exported, Then the copy is the (still protected) key file
    done = run(env, "key", "export", str(tmp_path / "exported.key"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "exported.key").read_bytes() == (repo.path / "key").read_bytes()
    assert (tmp_path / "exported.key").stat().st_mode & 0o077 == 0

    # When the repository loses its key, Then every verb says so with exit 10
    (repo.path / "key").unlink()
    lost = run(env, "snapshots")
    assert lost.returncode == 10 and "is missing" in lost.stderr and "key import" in lost.stderr
    assert "Traceback" not in lost.stderr

    # When the export is imported, Then the repository reads again
    done = run(env, "key", "import", str(tmp_path / "exported.key"))
    assert done.returncode == 0, done.stderr
    assert snapshot in run(env, "snapshots").stdout

    # When the passphrase is changed
    new = secret_file(tmp_path / "new-passphrase", b"a new passphrase")
    done = run(env | {"TXNBACKUP_NEW_PASSPHRASE_FILE": str(new)}, "key", "change-passphrase")
    assert done.returncode == 0, done.stderr

    # Then the old passphrase is refused, the new one unlocks, and the data is unchanged
    old = run(env, "verify", snapshot)
    assert old.returncode == 10 and "wrong passphrase" in old.stderr
    with_new = env | {"TXNBACKUP_PASSPHRASE_FILE": str(new)}
    verified = run(with_new, "verify", snapshot)
    assert verified.returncode == 0, verified.stderr
    # And the export made before still needs the passphrase it was made with
    stale = run(with_new, "key", "import", str(tmp_path / "exported.key"))
    assert stale.returncode == 10 and "wrong passphrase" in stale.stderr


def test_a_key_of_another_repository_is_not_imported(
    tmp_path: Path, encrypted_repo: tuple[Repository, str]
) -> None:
    repo, _ = encrypted_repo
    other = Repository.init(
        tmp_path / "other", CS, NewKey(KeyMode.REPOKEY, PASSPHRASE, KeyAccess(), FAST_KDF)
    )
    before = (repo.path / "key").read_bytes()
    done = run(environment(tmp_path, repo.path), "key", "import", str(other.path / "key"))
    assert done.returncode == 10
    assert f"is the key of repository {other.id}" in done.stderr
    assert (repo.path / "key").read_bytes() == before


def test_a_wrong_or_missing_passphrase_exits_10_and_writes_nothing(
    tmp_path: Path, encrypted_repo: tuple[Repository, str]
) -> None:
    repo, snapshot = encrypted_repo
    files_before = sorted(p for p in repo.path.rglob("*"))
    for env in (
        environment(tmp_path, repo.path, b"wrong"),
        environment(tmp_path, repo.path, None),
    ):
        for verb in (("gc", "--grace", "0"), ("forget", snapshot), ("check",)):
            done = run(env, *verb)
            assert done.returncode == 10, (verb, done.stderr)
            assert "Traceback" not in done.stderr
    assert sorted(p for p in repo.path.rglob("*")) == files_before


def test_check_and_verify_name_a_tampered_chunk(
    tmp_path: Path, encrypted_repo: tuple[Repository, str]
) -> None:
    repo, snapshot = encrypted_repo
    tampered = chunk_files(repo)[0]
    flip(tampered)
    env = environment(tmp_path, repo.path)

    checked = run(env, "check", "--read-data", "--json")
    assert checked.returncode == 5
    problems = json.loads(checked.stdout)["problems"]
    assert any(
        tampered.name in p["where"] and "failed authentication" in p["reason"] for p in problems
    )

    verified = run(env, "verify", snapshot)
    assert verified.returncode == 5
    assert tampered.name in verified.stdout and "failed authentication" in verified.stdout


def test_init_encrypted_from_the_command_line(tmp_path: Path) -> None:
    # Given no passphrase in the environment, When init asks for encryption
    refused = run(
        environment(tmp_path, tmp_path / "r0", None),
        "init",
        "--encryption=repokey",
        str(tmp_path / "r0"),
    )
    # Then it is refused (exit 10) and nothing is created
    assert refused.returncode == 10 and "TXNBACKUP_PASSPHRASE" in refused.stderr
    assert not (tmp_path / "r0").exists()

    # When a keyfile repository is created with a passphrase
    env = environment(tmp_path, tmp_path / "r1")
    done = run(env, "init", "--encryption=keyfile", "--chunk-size=64K", str(tmp_path / "r1"))
    assert done.returncode == 0, done.stderr

    # Then it is format 2, and its key is in the user's config directory, not the repository
    config = json.loads((tmp_path / "r1" / "config.json").read_text())
    assert config["format"] == 2 and config["encryption"]["mode"] == "keyfile"
    key = tmp_path / "home" / ".config" / "txnbackup" / "keys" / config["id"]
    assert key.is_file() and str(key) in done.stdout
    assert not (tmp_path / "r1" / "key").exists()
    assert run(env, "snapshots").stdout.strip() == "no snapshots"


def test_a_downgraded_repository_is_refused_by_a_client_with_the_passphrase(
    tmp_path: Path, encrypted_repo: tuple[Repository, str]
) -> None:
    # Given an encrypted repository whose config.json someone set back to plain (format 1)
    repo, snapshot = encrypted_repo
    downgrade(repo)
    env = environment(tmp_path, repo.path) | redis_environment()
    drive = tmp_path / "disk.raw"
    drive.write_bytes(b"secret guest data" * 10_000)
    before = sorted(p.relative_to(repo.path) for p in repo.path.rglob("*"))

    # When a client configured with the passphrase backs up to it, lists or restores it
    for verb in (
        ("backup", "100", f"--drive=scsi0={drive}"),
        ("snapshots",),
        ("restore", snapshot, "scsi0", str(tmp_path / "out.raw")),
    ):
        done = run(env, *verb)
        # Then each is refused with the key errors' code, saying why, and writes nothing
        assert done.returncode == 10, (verb, done.stdout, done.stderr)
        assert "says it is not encrypted but a passphrase is configured" in done.stderr
        assert "Traceback" not in done.stderr
    assert sorted(p.relative_to(repo.path) for p in repo.path.rglob("*")) == before
    assert not (tmp_path / "out.raw").exists()
