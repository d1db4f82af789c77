"""Bad input through the CLI and the Python API (issue 5): each row gets its message and its
exit code (the API raises the error whose ``exit_code`` the CLI would exit with), and
changes nothing: not a file under the test's directory (repository, snapshots, drive images),
not a key in Redis (bitmaps, locks, backup records).

Rows that exist elsewhere are not repeated here:
- tests/cli/test_cli.py: init on a non-empty directory or a repository, bad chunk sizes at
  init, a nonexistent repository or a file as repository, no repository given, a vmid with
  ``..`` for ``snapshots``, a repository of format version 3 or with a garbled config for
  ``snapshots``, unknown and malformed snapshot ids for verify and restore, a drive with
  ``/`` and unknown drives for restore, restore targets, mark-dirty with an escaping vmid or
  drive, a negative offset, a bad length, a range past the end, Redis unreachable or
  misconfigured, malformed settings, usage errors;
- tests/pipeline/test_cli_backup.py: ``backup`` with a missing drive path, duplicate drive
  names, a drive name with ``/``, vmid ``../x``, a bad node; ``status`` with a malformed or
  unknown uuid, ``cancel`` with an unknown uuid; Redis unreachable at submit.
- tests/faults/test_tampered_repository.py: hand-edited manifests and indexes, truncated and
  symlinked chunks, links planted for gc, file modes, restore to a block device.
- tests/faults/test_trust.py: forged records (a plan edited in Redis, an unsealed record, a
  drive outside the worker's roots or ``--allow-drives``, another repository, an escaping
  drive name), directories planted for the reaper, a repository swapped under a worker.
- tests/faults/test_redis_bitmaps.py: an evicted bits key or meta hash, older bitmap keys
  put back (a stale dump), frozen bits evicted mid-backup.
- tests/faults/test_bounds.py: a repository gone at commit, a stalled drive, a node without
  worker (``--timeout``), a drive path relative to the shell.
No worker runs here: every row is refused before anything is sent to the broker.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis

from tasks.producer import Producer
from tests.conftest import SMALL_CHUNK, TEST_REDIS_URL
from tests.fleet import sample_content
from tests.unit.builders import run_backup
from txnbackup.bitmap import RedisBitmaps
from txnbackup.drive import Drive
from txnbackup.errors import TxnBackupError
from txnbackup.keys import Keys
from txnbackup.names import new_backup_id
from txnbackup.repository import Repository
from txnbackup.restore import restore_drive
from txnbackup.settings import Settings
from txnbackup.snapshot import SnapshotId
from txnbackup.tracker import Tracker
from txnbackup.verify import verify_snapshot

TXNBACKUP = str(Path(sys.executable).parent / "txnbackup")
VMID = "100"
SIZE = 4 * SMALL_CHUNK + 1000
UNKNOWN_SNAPSHOT = "vm/100/2020-01-01T00:00:00Z"


@dataclass
class World:
    """A repository holding one backup of drive scsi0 of VM 100, its bitmap in Redis, and
    some things that are not drives: a directory, a FIFO, an empty file."""

    root: Path
    repo: Path
    image: Path
    settings: Settings
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TXNBACKUP, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def producer(self) -> Producer:
        return Producer.from_settings(self.settings)

    def submit(
        self, *drives: Drive, vmid: str = VMID, config: dict[str, Path] | None = None
    ) -> str:
        return self.producer().submit(vmid, list(drives), repository=self.repo, config=config)

    def drive(self, path: str | Path, name: str = "scsi0") -> Drive:
        return Drive(name, str(path))

    def names(self) -> dict[str, str]:
        return {"root": str(self.root), "repo": str(self.repo), "image": str(self.image)}


@pytest.fixture
def world(tmp_path: Path, redis_client: Redis, keys: Keys) -> World:
    image = tmp_path / "scsi0.raw"
    image.write_bytes(sample_content(SIZE, seed=1))
    repo = Repository.init(tmp_path / "repo", SMALL_CHUNK)
    run_backup(repo, RedisBitmaps(redis_client, keys, 3600), VMID, [Drive("scsi0", str(image))])
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "empty.raw").touch()
    (tmp_path / "other").mkdir()
    settings = Settings(
        redis_url=TEST_REDIS_URL,
        broker_url=TEST_REDIS_URL,
        key_prefix=keys.prefix,
        broker_key_prefix=keys.prefix,
        repository=repo.path,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXNBACKUP_")}
    env |= {
        "TXNBACKUP_REDIS_URL": TEST_REDIS_URL,
        "TXNBACKUP_KEY_PREFIX": keys.prefix,
        "TXNBACKUP_BROKER_KEY_PREFIX": keys.prefix,
        "TXNBACKUP_REPOSITORY": str(repo.path),
    }
    return World(tmp_path, repo.path, image, settings, env)


def other_repository(
    format_version: int = 1, chunk_size: int = SMALL_CHUNK
) -> Callable[[World], None]:
    """Turn ``<root>/other`` into a repository whose config says this version and chunk size."""

    def setup(w: World) -> None:
        config = {"format": format_version, "chunk_size": chunk_size, "id": "x"}
        for sub in ("chunks", "vm", "staging"):
            (w.root / "other" / sub).mkdir()
        (w.root / "other" / "config.json").write_text(json.dumps(config))

    return setup


Api = Callable[[World], object]


@dataclass(frozen=True)
class Row:
    code: int
    says: tuple[str, ...]
    cli: tuple[str, ...] = ()
    api: Api | None = None
    setup: Callable[[World], None] | None = None


OTHER = "{root}/other"
BACKUP = ("backup", VMID)

ROWS: dict[str, Row] = {
    # unknown or unreadable drive paths (root reads every file: these are not drives at all)
    "drive-unknown-path": Row(
        3,
        ("drive scsi0: path", "nowhere.raw does not exist"),
        api=lambda w: w.submit(w.drive(w.root / "nowhere.raw")),
    ),
    "drive-is-a-directory": Row(
        8,
        ("drive scsi0: cannot read", "adir", "not a raw image or block device (a directory)"),
        cli=(*BACKUP, "--drive=scsi0={root}/adir"),
        api=lambda w: w.submit(w.drive(w.root / "adir")),
    ),
    "drive-is-a-fifo": Row(
        8,
        ("drive scsi0: cannot read", "fifo", "(a FIFO)"),
        cli=(*BACKUP, "--drive=scsi0={root}/fifo"),
        api=lambda w: w.submit(w.drive(w.root / "fifo")),
    ),
    "drive-is-a-character-device": Row(
        8,
        ("drive scsi0: cannot read /dev/zero", "(a character device)"),
        cli=(*BACKUP, "--drive=scsi0=/dev/zero"),
    ),
    "drive-under-proc-has-no-size": Row(
        8,
        ("drive scsi0: cannot read /proc/self/mem: Invalid argument",),
        cli=(*BACKUP, "--drive=scsi0=/proc/self/mem"),
    ),
    "drive-is-empty": Row(
        2,
        ("drive scsi0:", "empty.raw is empty (0 bytes)"),
        cli=(*BACKUP, "--drive=scsi0={root}/empty.raw"),
        api=lambda w: w.submit(w.drive(w.root / "empty.raw")),
    ),
    "drive-names-duplicate": Row(
        2,
        ("duplicate drive name(s): scsi0",),
        api=lambda w: w.submit(w.drive(w.image), w.drive(w.image)),
    ),
    # names that would escape the repository
    "drive-name-dotdot": Row(
        2,
        ("drive name '..' must match",),
        cli=(*BACKUP, "--drive=..={image}"),
        api=lambda w: w.submit(w.drive(w.image, name="..")),
    ),
    "drive-name-escapes-via-api": Row(
        2,
        ("drive name '../../x' must match",),
        api=lambda w: w.submit(w.drive(w.image, name="../../x")),
    ),
    "vmid-dotdot": Row(
        2,
        ("vmid '..' must match",),
        cli=("backup", "..", "--drive=scsi0={image}"),
        api=lambda w: w.submit(w.drive(w.image), vmid=".."),
    ),
    "vmid-with-slash-via-api": Row(
        2, ("vmid 'a/b' must match",), api=lambda w: w.submit(w.drive(w.image), vmid="a/b")
    ),
    "config-name-escapes": Row(
        2,
        ("blob name '../x' must match",),
        cli=(*BACKUP, "--drive=scsi0={image}", "--config=../x={image}"),
        api=lambda w: w.submit(w.drive(w.image), config={"../x": w.image}),
    ),
    # repositories
    "repository-missing": Row(
        3,
        ("no txnbackup repository at", "nowhere"),
        cli=(*BACKUP, "--drive=scsi0={image}", "--repo={root}/nowhere"),
        api=lambda w: w.producer().submit(VMID, [w.drive(w.image)], repository=w.root / "nowhere"),
    ),
    "repository-of-another-version-backup": Row(
        4,
        ("has format version 3, this txnbackup reads versions 1 and 2",),
        cli=(*BACKUP, "--drive=scsi0={image}", f"--repo={OTHER}"),
        api=lambda w: w.producer().submit(VMID, [w.drive(w.image)], repository=w.root / "other"),
        setup=other_repository(format_version=3),
    ),
    "repository-of-another-version-verify": Row(
        4,
        ("has format version 3",),
        cli=("verify", f"--repo={OTHER}", UNKNOWN_SNAPSHOT),
        setup=other_repository(format_version=3),
    ),
    "repository-of-another-version-gc": Row(
        4,
        ("has format version 3",),
        cli=("gc", f"--repo={OTHER}", "--grace=0"),
        setup=other_repository(format_version=3),
    ),
    "repository-chunk-size-not-a-power-of-two": Row(
        4,
        ("config.json: bad chunk_size", "chunk size 3000 must be a power of two"),
        cli=(*BACKUP, "--drive=scsi0={image}", f"--repo={OTHER}"),
        api=lambda w: Repository.open(w.root / "other"),
        setup=other_repository(chunk_size=3000),
    ),
    "repository-chunk-size-too-big": Row(
        4,
        ("config.json: bad chunk_size", "chunk size 33554432", "16777216"),
        cli=("snapshots", f"--repo={OTHER}"),
        api=lambda w: Repository.open(w.root / "other"),
        setup=other_repository(chunk_size=32 * 1024 * 1024),
    ),
    # mark-dirty offsets
    "mark-dirty-huge-offset": Row(
        2,
        ("range 99999999999999999999999+1 is beyond the end of drive 100/scsi0", f"({SIZE} bytes)"),
        cli=("mark-dirty", VMID, "scsi0", "99999999999999999999999", "1"),
        api=lambda w: Tracker.from_settings(w.settings).mark_dirty(
            VMID, "scsi0", 99999999999999999999999, 1
        ),
    ),
    "mark-dirty-huge-length": Row(
        2,
        ("beyond the end of drive 100/scsi0",),
        cli=("mark-dirty", VMID, "scsi0", "0", "8192T"),
        api=lambda w: Tracker.from_settings(w.settings).mark_dirty(VMID, "scsi0", 0, 2**64),
    ),
    "mark-dirty-negative-offset": Row(
        2,
        ("offset -4096 and length 1 must not be negative",),
        api=lambda w: Tracker.from_settings(w.settings).mark_dirty(VMID, "scsi0", -4096, 1),
    ),
    "mark-dirty-negative-length": Row(
        2,
        ("-1", "negative"),
        cli=("mark-dirty", VMID, "scsi0", "0", "-1"),
        api=lambda w: Tracker.from_settings(w.settings).mark_dirty(VMID, "scsi0", 0, -1),
    ),
    # backup uuids
    "uuid-malformed-cancel": Row(
        2,
        ("'not-a-uuid' is not a backup uuid",),
        cli=("cancel", "not-a-uuid"),
        api=lambda w: w.producer().cancel("not-a-uuid"),
    ),
    "uuid-malformed-watch": Row(
        2, ("'not-a-uuid' is not a backup uuid",), cli=("watch", "not-a-uuid")
    ),
    "uuid-not-canonical": Row(
        2,
        ("is not a backup uuid in canonical form",),
        cli=("status", "12345678123456781234567812345678"),
        api=lambda w: w.producer().status("12345678123456781234567812345678"),
    ),
    "uuid-unknown-status-api": Row(
        3, ("not found",), api=lambda w: w.producer().status(new_backup_id())
    ),
    # snapshots
    "snapshot-unknown-verify-api": Row(
        3,
        (f"snapshot {UNKNOWN_SNAPSHOT} not found",),
        api=lambda w: verify_snapshot(Repository.open(w.repo), SnapshotId.parse(UNKNOWN_SNAPSHOT)),
    ),
    "snapshot-unknown-restore-api": Row(
        3,
        (f"snapshot {UNKNOWN_SNAPSHOT} not found",),
        api=lambda w: restore_drive(
            Repository.open(w.repo), SnapshotId.parse(UNKNOWN_SNAPSHOT), "scsi0", w.root / "o"
        ),
    ),
    "snapshot-id-escapes-api": Row(
        2, ("vmid '..' must match",), api=lambda w: SnapshotId.parse("vm/../2020-01-01T00:00:00Z")
    ),
    # gc
    "gc-negative-grace": Row(2, ("--grace", "-1"), cli=("gc", "--grace=-1")),
    "gc-repository-missing": Row(
        3, ("no txnbackup repository at", "nowhere"), cli=("gc", "--repo={root}/nowhere")
    ),
}

CASES = [
    pytest.param(name, via, id=f"{name}-{via}")
    for name, row in ROWS.items()
    for via in ("cli", "api")
    if (row.cli if via == "cli" else row.api)
]


def snapshot_state(w: World, redis: Redis) -> tuple[dict[str, str], dict[bytes, bytes | None]]:
    """Every file under the test's directory, and every Redis key of this world, by content."""
    files = {
        str(p.relative_to(w.root)): "fifo"
        if p.is_fifo()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(w.root.rglob("*"))
        if not p.is_dir()
    }
    keys = {k: redis.dump(k) for k in sorted(redis.scan_iter(match=f"{w.settings.key_prefix}*"))}
    return files, keys


@pytest.mark.parametrize(("name", "via"), CASES)
def test_bad_input_is_refused_clearly_and_changes_nothing(
    world: World, redis_client: Redis, name: str, via: str
) -> None:
    # Given the world, prepared for this row
    row = ROWS[name]
    if row.setup:
        row.setup(world)
    before = snapshot_state(world, redis_client)

    # When the user gives the bad input, on the command line or to the API
    if via == "cli":
        result = world.run(*(a.format(**world.names()) for a in row.cli))
        code, message = result.returncode, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
    else:
        assert row.api is not None
        with pytest.raises(TxnBackupError) as raised:
            row.api(world)
        code, message = raised.value.exit_code, str(raised.value)

    # Then it is refused with the documented exit code and a message naming the problem
    assert code == row.code, message
    for needle in row.says:
        assert needle.format(**world.names()) in message
    # And nothing changed: no file, no bitmap, no lock, no record
    assert snapshot_state(world, redis_client) == before
    rt = world.producer().rt
    assert rt.records.holder(VMID) is None
    assert rt.bitmaps.dirty_chunks(VMID, "scsi0") == set()
    assert len(Repository.open(world.repo).snapshots()) == 1
