"""The txnbackup command as a user runs it: the installed script, real repositories, real Redis.

Every bad input gets a clear message, its documented exit code, no traceback, and changes
nothing: neither the files under the test's directory nor the dirty bitmap in Redis.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis import Redis

from tests.conftest import SMALL_CHUNK, TEST_REDIS_URL
from txnbackup.bitmap import RedisBitmaps
from txnbackup.drive import Drive
from txnbackup.keys import Keys
from txnbackup.repository import Repository
from txnbackup.snapshot import SnapshotId
from txnbackup.stats import DriveStats
from txnbackup.transaction import commit, copy, prepare

CLI = Path(sys.executable).parent / "txnbackup"
VMID = "100"
DRIVE = "scsi0"
CS = SMALL_CHUNK
# chunk 0 random, 1 all-zero, 2 random, 3 a copy of 0 (deduplicated), then a short last chunk
IMAGE_SIZE = 4 * CS + 1000
UNIQUE_CHUNK = 2  # the only index entry referring to its chunk file


@dataclass
class World:
    """A repository under ``root`` holding one backup of drive scsi0 of VM 100."""

    root: Path
    repo: Path
    image: Path
    bitmaps: RedisBitmaps
    env: dict[str, str]
    snapshot: str = ""
    content: bytes = field(default=b"", repr=False)

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLI), *args],
            env=self.env if env is None else env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def backup(self) -> str:
        repo = Repository.open(self.repo)
        plan = prepare(repo, self.bitmaps, VMID, [Drive(DRIVE, str(self.image))])
        copy(repo, self.bitmaps, plan, DRIVE, cancel=_never, progress=_ignore)
        return str(commit(repo, self.bitmaps, plan))

    def chunk_file(self, chunk_no: int) -> Path:
        data = self.content[chunk_no * CS : (chunk_no + 1) * CS]
        digest = hashlib.sha256(data).hexdigest()
        return self.repo / "chunks" / digest[:4] / digest


def _never() -> str | None:
    return None


def _ignore(stats: DriveStats) -> None:
    pass


def image_content(seed: int) -> bytes:
    rng = random.Random(seed)
    first = rng.randbytes(CS)
    return first + bytes(CS) + rng.randbytes(CS) + first + rng.randbytes(1000)


@pytest.fixture
def fresh(tmp_path: Path, redis_client: Redis, keys: Keys) -> World:
    """No repository yet, a drive image, and an environment naming both and the test Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXNBACKUP_")}
    repo = tmp_path / "repo"
    env |= {
        "TXNBACKUP_REDIS_URL": TEST_REDIS_URL,
        "TXNBACKUP_KEY_PREFIX": keys.prefix,
        "TXNBACKUP_REPOSITORY": str(repo),
    }
    w = World(tmp_path, repo, tmp_path / "scsi0.raw", RedisBitmaps(redis_client, keys, 3600), env)
    w.content = image_content(seed=1)
    w.image.write_bytes(w.content)
    return w


@pytest.fixture
def world(fresh: World) -> World:
    Repository.init(fresh.repo, CS)
    fresh.snapshot = fresh.backup()
    return fresh


def test_init_snapshots_restore_verify_round_trip(fresh: World) -> None:
    # Given a repository made by `txnbackup init` holding one backup of VM 100
    world = fresh
    created = world.run("init", "--chunk-size", "64K", str(world.repo))
    world.snapshot = world.backup()

    # When the user lists it, restores the drive and verifies the snapshot
    listed = world.run("snapshots", "--json")
    restored = world.run("restore", world.snapshot, DRIVE, str(world.root / "out.raw"))
    verified = world.run("verify", world.snapshot)
    report = world.run("verify", world.snapshot, "--json")

    # Then the repository was created with the chunk size asked for
    assert created.returncode == 0, created.stderr
    assert "chunk size 64.0 KiB" in created.stdout
    assert Repository.open(world.repo).chunk_size == CS
    # And the listing names the snapshot, its drive, size and backup uuid
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    backup = Repository.open(world.repo).manifest(SnapshotId.parse(world.snapshot)).backup
    assert entry == {
        "snapshot": world.snapshot,
        "vmid": VMID,
        "time": world.snapshot.rsplit("/", 1)[1],
        "backup": backup,
        "size": IMAGE_SIZE,
        "drives": [{"name": DRIVE, "size": IMAGE_SIZE, "action": "new"}],
    }
    # And the restored drive is byte-identical
    assert restored.returncode == 0, restored.stderr
    assert (world.root / "out.raw").read_bytes() == world.content
    # And verify finds every chunk good
    assert verified.returncode == 0, verified.stderr
    assert "all good" in verified.stdout
    assert json.loads(report.stdout) == {
        "snapshot": world.snapshot,
        "ok": True,
        "chunks": 5,
        "problems": [],
    }


def test_snapshots_table_lists_newest_first(world: World) -> None:
    # Given a second, incremental backup after a tracked write to chunk 1
    new = bytearray(world.content)
    new[CS : CS + 5] = b"hello"
    world.image.write_bytes(new)
    marked = world.run("mark-dirty", VMID, DRIVE, "64K", "5")
    second = world.backup()

    # When the user lists the snapshots as a table, and restores both
    table = world.run("snapshots", VMID)
    old_restore = world.run("restore", world.snapshot, DRIVE, str(world.root / "old.raw"))
    new_restore = world.run("restore", second, DRIVE, str(world.root / "new.raw"))

    # Then the write was tracked, the newest snapshot comes first, each restore is exact
    assert marked.returncode == 0, marked.stderr
    assert "marked 1 chunk(s)" in marked.stdout
    assert table.returncode == 0, table.stderr
    assert table.stdout.index(second) < table.stdout.index(world.snapshot)
    assert "257.0 KiB" in table.stdout
    assert (world.root / "old.raw").read_bytes() == world.content
    assert (world.root / "new.raw").read_bytes() == bytes(new)
    assert old_restore.returncode == new_restore.returncode == 0
    assert json.loads(world.run("snapshots", "--json").stdout)[0]["drives"][0]["action"] == "used"


def test_mark_dirty_on_an_untracked_drive_is_not_an_error(world: World) -> None:
    result = world.run("mark-dirty", VMID, "virtio1", "0", "1M")

    assert result.returncode == 0, result.stderr
    assert "no dirty bitmap yet" in result.stdout
    assert "reads everything" in result.stdout


def test_restore_with_overwrite_replaces_the_target(world: World) -> None:
    target = world.root / "out.raw"
    target.write_bytes(b"old content")

    result = world.run("restore", world.snapshot, DRIVE, str(target), "--overwrite")

    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == world.content


def test_restore_all_writes_every_drive_into_a_directory(world: World) -> None:
    # Given an empty directory
    into = world.root / "all"
    into.mkdir()

    # When the user restores every drive of the snapshot into it
    result = world.run("restore", world.snapshot, "--all", str(into))

    # Then the drive is there as <drive>.raw, byte-identical, and the output says so
    assert result.returncode == 0, result.stderr
    assert (into / f"{DRIVE}.raw").read_bytes() == world.content
    assert f"restored drive {DRIVE} of {world.snapshot} to {into / DRIVE}.raw" in result.stdout


@pytest.mark.parametrize(
    ("setup", "code", "message"),
    [
        ("missing", 3, "not found: directory"),
        ("existing", 2, "exist(s); pass --overwrite"),
        ("extra-target", 2, "give SNAPSHOT and one path only"),
    ],
)
def test_restore_all_bad_input_is_refused_clearly(
    world: World, setup: str, code: int, message: str
) -> None:
    # Given a directory that is missing, or holds the drive's file already
    into = world.root / "all"
    args = ["restore", world.snapshot, "--all", str(into)]
    if setup != "missing":
        into.mkdir()
        (into / f"{DRIVE}.raw").write_bytes(b"keep me")
    if setup == "extra-target":
        args.append(str(world.root / "other.raw"))

    # When every drive is restored into it
    result = world.run(*args)

    # Then it is refused with its exit code and a clear line, and nothing changed
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if setup != "missing":
        assert (into / f"{DRIVE}.raw").read_bytes() == b"keep me"
        assert sorted(p.name for p in into.iterdir()) == [f"{DRIVE}.raw"]


def test_json_shapes_are_documented_in_help(world: World) -> None:
    assert '"backup"' in world.run("snapshots", "--help").stdout
    assert '"problems"' in world.run("verify", "--help").stdout


def test_ctrl_c_exits_130_without_a_traceback(world: World) -> None:
    # Given a chunk file that blocks its reader (a FIFO, which has no writer yet), so verify
    # is stuck mid-run opening it
    fifo = world.chunk_file(UNIQUE_CHUNK)
    fifo.unlink()
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [str(CLI), "verify", world.snapshot],
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_until_blocked_opening(proc)
    # When the user presses Ctrl-C
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=10)
    # Then the command stops with 130 and no traceback
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr


def _wait_until_blocked_opening(proc: subprocess.Popen[str]) -> None:
    """Wait until the CLI sleeps in open() on the FIFO, waiting for a writer."""
    wchan = Path(f"/proc/{proc.pid}/wchan")
    deadline = time.monotonic() + 10
    while "wait_for_partner" not in wchan.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)


Setup = Callable[[World], None]


@dataclass(frozen=True)
class Row:
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]
    setup: Setup | None = None
    env: dict[str, str | None] = field(default_factory=dict)


def _make_non_empty_dir(w: World) -> None:
    (w.root / "stuff").mkdir()
    (w.root / "stuff" / "notes.txt").write_text("mine")


def _set_format(w: World) -> None:
    config = json.loads((w.repo / "config.json").read_text())
    (w.repo / "config.json").write_text(json.dumps(config | {"format": 3}))


def _garble_config(w: World) -> None:
    (w.repo / "config.json").write_text("[]")


def _existing_target(w: World) -> None:
    (w.root / "out.raw").write_bytes(b"keep me")


def _corrupt_chunk(w: World) -> None:
    path = w.chunk_file(UNIQUE_CHUNK)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(data)


OFFSET = str(UNIQUE_CHUNK * CS)
UNKNOWN = "vm/100/2020-01-01T00:00:00Z"

ROWS = {
    "init-on-non-empty-dir": Row(
        ("init", "{root}/stuff"), 4, ("stuff", "not empty"), _make_non_empty_dir
    ),
    "init-on-a-repository": Row(("init", "{repo}"), 4, ("not empty",)),
    "init-chunk-size-3000": Row(
        ("init", "--chunk-size", "3000", "{root}/new"), 2, ("chunk size 3000", "power of two")
    ),
    "init-chunk-size-32M": Row(
        ("init", "--chunk-size", "32M", "{root}/new"), 2, ("chunk size 33554432", "16777216")
    ),
    "init-chunk-size-garbage": Row(
        ("init", "--chunk-size", "4x", "{root}/new"), 2, ("--chunk-size", "'4x' is not a size")
    ),
    "snapshots-nonexistent-repo": Row(
        ("snapshots", "--repo", "{root}/nope"), 3, ("no txnbackup repository", "nope")
    ),
    "snapshots-repo-is-a-file": Row(
        ("snapshots", "--repo", "{image}"), 3, ("no txnbackup repository", "scsi0.raw")
    ),
    "snapshots-no-repo-given": Row(
        ("snapshots",), 2, ("--repo", "TXNBACKUP_REPOSITORY"), env={"TXNBACKUP_REPOSITORY": None}
    ),
    "snapshots-vmid-escapes": Row(("snapshots", "../x"), 2, ("vmid '../x'",)),
    "repo-of-another-format-version": Row(
        ("snapshots",), 4, ("format version 3", "reads versions 1 and 2"), _set_format
    ),
    "repo-config-garbled": Row(
        ("snapshots",), 4, ("config.json", "not a JSON object"), _garble_config
    ),
    "verify-unknown-snapshot": Row(("verify", UNKNOWN), 3, (UNKNOWN, "not found")),
    "restore-unknown-snapshot": Row(
        ("restore", "vm/999/2020-01-01T00:00:00Z", DRIVE, "{root}/out.raw"),
        3,
        ("vm/999/", "not found"),
    ),
    "snapshot-id-malformed": Row(("verify", "100"), 2, ("'100'", "vm/<vmid>/<time>")),
    "snapshot-time-malformed": Row(
        ("verify", "vm/100/yesterday"), 2, ("'yesterday'", "snapshot time")
    ),
    "snapshot-id-escapes": Row(("verify", "vm/../2020-01-01T00:00:00Z"), 2, ("vmid '..'",)),
    "restore-unknown-drive": Row(
        ("restore", "{snap}", "sata9", "{root}/out.raw"), 3, ("drive sata9", "it has: scsi0")
    ),
    "restore-drive-with-slash": Row(
        ("restore", "{snap}", "a/b", "{root}/out.raw"), 2, ("drive name 'a/b'",)
    ),
    "restore-onto-existing-file": Row(
        ("restore", "{snap}", DRIVE, "{root}/out.raw"),
        2,
        ("out.raw exists", "--overwrite"),
        _existing_target,
    ),
    "restore-into-missing-dir": Row(
        ("restore", "{snap}", DRIVE, "{root}/nodir/out.raw"), 3, ("directory", "nodir")
    ),
    "restore-onto-directory": Row(
        ("restore", "{snap}", DRIVE, "{root}", "--overwrite"), 2, ("not a regular file",)
    ),
    "restore-onto-char-device": Row(
        ("restore", "{snap}", DRIVE, "/dev/null", "--overwrite"), 2, ("not a regular file",)
    ),
    "restore-corrupt-chunk": Row(
        ("restore", "{snap}", DRIVE, "{root}/out.raw"),
        5,
        ("corrupt", f"offset {OFFSET}"),
        _corrupt_chunk,
    ),
    # verify of a corrupt or missing chunk changes the repository on purpose (it moves the
    # chunk aside and marks the snapshot): tests/faults/test_storage.py
    "mark-dirty-vmid-escapes": Row(("mark-dirty", "../x", DRIVE, "0", "1"), 2, ("vmid '../x'",)),
    "mark-dirty-drive-with-slash": Row(
        ("mark-dirty", VMID, "a/b", "0", "1"), 2, ("drive name 'a/b'",)
    ),
    "mark-dirty-negative-offset": Row(
        ("mark-dirty", VMID, DRIVE, "-4K", "1"), 2, ("'-4K' is negative",)
    ),
    "mark-dirty-bad-length": Row(
        ("mark-dirty", VMID, DRIVE, "0", "4Q"), 2, ("'4Q' is not a size",)
    ),
    "mark-dirty-past-the-end": Row(
        ("mark-dirty", VMID, DRIVE, "256K", "64K"), 2, ("beyond the end", f"{IMAGE_SIZE} bytes")
    ),
    "redis-unreachable": Row(
        ("mark-dirty", VMID, DRIVE, "0", "1"),
        7,
        ("cannot reach Redis", "127.0.0.1:1"),
        env={"TXNBACKUP_REDIS_URL": "redis://127.0.0.1:1/0"},
    ),
    "redis-url-malformed": Row(
        ("mark-dirty", VMID, DRIVE, "0", "1"),
        2,
        ("Redis URL", "scheme"),
        env={"TXNBACKUP_REDIS_URL": "foo://x"},
    ),
    "setting-malformed": Row(
        ("snapshots",), 2, ("TXNBACKUP_STATE_TTL",), env={"TXNBACKUP_STATE_TTL": "soon"}
    ),
    "usage-missing-argument": Row(("restore", "{snap}"), 2, ("Usage:", "Missing argument")),
    "usage-unknown-verb": Row(("frobnicate",), 2, ("No such command",)),
}


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_bad_input_is_refused_clearly_and_changes_nothing(world: World, row: Row) -> None:
    # Given the world, prepared for this row
    if row.setup:
        row.setup(world)
    env = {k: v for k, v in (world.env | row.env).items() if v is not None}
    args = [
        a.format(root=world.root, repo=world.repo, image=world.image, snap=world.snapshot)
        for a in row.args
    ]
    files_before, bits_before = _tree(world.root), world.bitmaps.dirty_chunks(VMID, DRIVE)

    # When the user runs the command
    result = world.run(*args, env=env)

    # Then it fails with the documented exit code and a message naming the problem
    output = result.stdout + result.stderr
    assert result.returncode == row.code, output
    for needle in row.says:
        assert needle in output
    assert "Traceback" not in result.stderr
    # And nothing changed on disk or in Redis
    assert _tree(world.root) == files_before
    assert world.bitmaps.dirty_chunks(VMID, DRIVE) == bits_before


def _tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content's digest ('dir' for directories)."""
    return dict(_entries(root, root))


def _entries(root: Path, path: Path) -> Iterator[tuple[str, str]]:
    for child in sorted(path.iterdir()):
        if child.is_dir():
            yield str(child.relative_to(root)), "dir"
            yield from _entries(root, child)
        else:
            yield str(child.relative_to(root)), hashlib.sha256(child.read_bytes()).hexdigest()
