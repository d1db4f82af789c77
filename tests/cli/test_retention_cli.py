"""The retention and getting-back verbs as a user runs them: the installed script, a real
repository, real Redis. Each answer is checked against the repository's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_REDIS_URL
from tests.unit.history import DRIVE, Past, make_history
from txnbackup.bitmap import RedisBitmaps
from txnbackup.keys import Keys
from txnbackup.repository import Repository

CLI = Path(sys.executable).parent / "txnbackup"
VM = "100"


@pytest.fixture
def env(repo: Repository, keys: Keys) -> dict[str, str]:
    return {
        **os.environ,
        "TXNBACKUP_REPOSITORY": str(repo.path),
        "TXNBACKUP_REDIS_URL": TEST_REDIS_URL,
        "TXNBACKUP_KEY_PREFIX": keys.prefix,
    }


@pytest.fixture
def history(repo: Repository, bitmaps: RedisBitmaps, tmp_path: Path) -> list[Past]:
    return make_history(repo, bitmaps, VM, tmp_path / "drives", 3)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(CLI), *args], env=env, capture_output=True, timeout=60, check=False)


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


def test_show_lists_drives_and_configs_of_the_latest_snapshot(
    env: dict[str, str], history: list[Past]
) -> None:
    shown = run(env, "show", f"vm/{VM}/latest", "--json")

    assert shown.returncode == 0, err(shown)
    data = json.loads(shown.stdout)
    assert data["snapshot"] == str(history[2].snapshot)
    assert data["protected"] is False
    [drive] = data["drives"]
    assert (drive["name"], drive["size"], drive["chunks"]) == (DRIVE, len(history[2].content), 5)
    assert drive["action"] == "used" and drive["dirty"] == 65536
    assert data["configs"] == [
        {"name": "vm.conf", "size": len(history[2].config), "sha256": data["configs"][0]["sha256"]}
    ]
    table = run(env, "show", str(history[0].snapshot))
    assert table.returncode == 0 and b"new" in table.stdout and b"vm.conf" in table.stdout


def test_cat_and_restore_config_give_the_config_back(
    env: dict[str, str], history: list[Past], tmp_path: Path
) -> None:
    target = tmp_path / "restored.conf"

    catted = run(env, "cat", str(history[1].snapshot), "vm.conf")
    restored = run(env, "restore", f"vm/{VM}/latest", "--config", "vm.conf", str(target))
    again = run(env, "restore", f"vm/{VM}/latest", "--config", "vm.conf", str(target))
    unknown = run(env, "cat", str(history[1].snapshot), "other.conf")

    assert (catted.returncode, catted.stdout) == (0, history[1].config)
    assert restored.returncode == 0, err(restored)
    assert target.read_bytes() == history[2].config
    assert again.returncode == 2 and "--overwrite" in err(again)
    assert unknown.returncode == 3 and "it has: vm.conf" in err(unknown)


def test_latest_restores_the_newest_drive_and_names_a_vm_without_snapshots(
    env: dict[str, str], history: list[Past], tmp_path: Path
) -> None:
    target = tmp_path / "disk.raw"

    restored = run(env, "restore", f"vm/{VM}/latest", DRIVE, str(target))
    verified = run(env, "verify", f"vm/{VM}/latest")
    missing = run(env, "restore", "vm/200/latest", DRIVE, str(tmp_path / "x.raw"))

    assert restored.returncode == 0, err(restored)
    assert target.read_bytes() == history[2].content
    assert verified.returncode == 0 and str(history[2].snapshot).encode() in verified.stdout
    assert missing.returncode == 3
    assert "vm/200/latest: VM 200 has no complete snapshot" in err(missing)


def test_prune_without_a_rule_is_refused_and_removes_nothing(
    env: dict[str, str], history: list[Past], repo: Repository
) -> None:
    refused = run(env, "prune", VM)
    assert refused.returncode == 2 and "no --keep-* rule given" in err(refused)
    assert len(repo.snapshots(VM)) == 3


def test_prune_dry_run_prints_keep_and_remove_with_the_rules(
    env: dict[str, str], history: list[Past], repo: Repository
) -> None:
    dry = run(env, "prune", VM, "--keep-last", "1", "--keep-daily", "1", "--dry-run", "--json")
    table = run(env, "prune", "--keep-last", "2", "--dry-run")

    assert dry.returncode == 0, err(dry)
    assert [
        (s["snapshot"], s["keep"], s["reasons"]) for s in json.loads(dry.stdout)["snapshots"]
    ] == [
        (str(history[2].snapshot), True, ["last", "daily"]),
        (str(history[1].snapshot), False, []),
        (str(history[0].snapshot), False, []),
    ]
    assert b"would remove 1 snapshot(s), kept 2" in table.stdout
    assert len(repo.snapshots(VM)) == 3


def test_protect_keeps_a_snapshot_from_forget_and_prune(
    env: dict[str, str], history: list[Past], repo: Repository
) -> None:
    oldest = str(history[0].snapshot)

    protected = run(env, "protect", oldest)
    forgot = run(env, "forget", oldest)
    pruned = run(env, "prune", VM, "--keep-last", "1", "--json")
    unprotected = run(env, "unprotect", oldest)
    forgot_after = run(env, "forget", oldest)

    assert protected.returncode == 0 and b"protected" in protected.stdout
    assert forgot.returncode == 6 and f"snapshot {oldest} is protected" in err(forgot)
    assert pruned.returncode == 0, err(pruned)
    kept = [s for s in json.loads(pruned.stdout)["snapshots"] if s["keep"]]
    assert [(s["snapshot"], s["reasons"]) for s in kept] == [
        (str(history[2].snapshot), ["last"]),
        (oldest, ["protected"]),
    ]
    assert unprotected.returncode == 0 and forgot_after.returncode == 0
    assert [str(s) for s in repo.snapshots(VM)] == [str(history[2].snapshot)]


def test_check_exits_5_naming_a_missing_chunk(
    env: dict[str, str], history: list[Past], repo: Repository
) -> None:
    assert run(env, "check", "--read-data-subset", "1/2").returncode == 0
    chunk = next(p for p in (repo.path / "chunks").rglob("*") if p.is_file())
    chunk.unlink()

    checked = run(env, "check")

    assert checked.returncode == 5
    assert f"chunk {chunk.name}".encode() in checked.stdout
    assert "repository check found 1 problem(s)" in err(checked)
