"""A `txnbackup prune` or `txnbackup gc` killed (SIGKILL) mid-way leaves the repository
consistent: `check` passes, every snapshot still listed restores byte-identical, and a later
gc or prune finishes what was interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis

from tests.conftest import TEST_REDIS_URL
from tests.unit.builders import restored
from tests.unit.history import DRIVE, Past, make_history
from txnbackup.bitmap import RedisBitmaps
from txnbackup.keys import Keys
from txnbackup.repository import Repository

CLI = Path(sys.executable).parent / "txnbackup"
VM = "100"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def env(repo: Repository, keys: Keys) -> dict[str, str]:
    return {
        **os.environ,
        "TXNBACKUP_REPOSITORY": str(repo.path),
        "TXNBACKUP_REDIS_URL": TEST_REDIS_URL,
        "TXNBACKUP_KEY_PREFIX": keys.prefix,
    }


def assert_consistent(
    repo: Repository, history: list[Past], env: dict[str, str], out: Path
) -> None:
    check = run(env, "check", "--read-data", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["problems"] == []
    listed = repo.snapshots(VM)
    by_id = {p.snapshot: p for p in history}
    for snapshot in listed:
        assert restored(repo, snapshot, DRIVE, out) == by_id[snapshot].content
        assert (repo.snapshot_dir(snapshot) / "vm.conf.blob").read_bytes() == by_id[snapshot].config


@pytest.mark.parametrize(
    "failpoint", ["prune.locked", "prune.manifest_renamed", "prune.file_removed"]
)
def test_a_prune_killed_at_any_step_leaves_every_snapshot_whole_or_gone(
    repo: Repository,
    bitmaps: RedisBitmaps,
    redis_client: Redis,
    keys: Keys,
    env: dict[str, str],
    tmp_path: Path,
    failpoint: str,
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 4)

    killed = run(
        {**env, "TXNBACKUP_FAILPOINTS": f"{failpoint}=kill-process"},
        "prune",
        VM,
        "--keep-last",
        "1",
    )

    assert killed.returncode == -signal.SIGKILL
    listed = repo.snapshots(VM)
    gone = [] if failpoint == "prune.locked" else [history[2].snapshot]  # removed first
    assert listed == [p.snapshot for p in reversed(history) if p.snapshot not in gone]
    assert_consistent(repo, history, env, tmp_path / "out")
    # the dead prune's lock expires by itself (PRUNE_LOCK_TTL); stand in for the wait
    assert 0 < redis_client.ttl(keys.lock(VM)) <= 60
    redis_client.delete(keys.lock(VM))

    gc = run(env, "gc", "--grace", "0", "--json")
    again = run(env, "prune", VM, "--keep-last", "1")

    assert gc.returncode == 0, gc.stderr
    finished = json.loads(gc.stdout)["finished"]
    assert finished == ([] if failpoint == "prune.locked" else [str(history[2].snapshot)])
    assert again.returncode == 0, again.stderr
    assert repo.snapshots(VM) == [history[3].snapshot]
    assert sorted(p.name for p in (repo.path / "vm" / VM).iterdir()) == [history[3].snapshot.time]
    assert_consistent(repo, history, env, tmp_path / "out")


def test_a_gc_killed_mid_sweep_loses_nothing_and_the_next_gc_finishes(
    repo: Repository,
    bitmaps: RedisBitmaps,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    history = make_history(repo, bitmaps, VM, tmp_path / "drives", 4)
    pruned = run(env, "prune", VM, "--keep-last", "2")
    assert pruned.returncode == 0, pruned.stderr
    then = time.time() - 7200
    for path in (repo.path / "chunks").rglob("*"):
        os.utime(path, (then, then))

    killed = run({**env, "TXNBACKUP_FAILPOINTS": "gc.chunk_renamed=kill-process"}, "gc")

    assert killed.returncode == -signal.SIGKILL
    assert_consistent(repo, history, env, tmp_path / "out")
    gc = run(env, "gc", "--json")
    assert gc.returncode == 0, gc.stderr
    report = json.loads(gc.stdout)
    assert (report["removed"], report["tmp_removed"]) == (1, 1)
    assert_consistent(repo, history, env, tmp_path / "out")
