"""How many Redis commands, and round trips, the commit of one backup sends.

Counted on the client (a counting connection class), so the figure is deterministic: it
does not depend on load or timing, only on the code. The commit measured is
``txnbackup.ending.commit`` of a backup of two drives whose copies are done, in a process
whose Redis scripts are already loaded (a warm-up commit before), as in a worker that has
run a backup before.

    python -m bench.commit_commands [--redis-url URL]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis
from redis.connection import Connection

from txnbackup import ending, transaction
from txnbackup.drive import Drive
from txnbackup.drive_step import StepContext, copy_step
from txnbackup.keys import Keys
from txnbackup.record import DriveState, Phase
from txnbackup.repository import Repository
from txnbackup.runtime import Runtime
from txnbackup.settings import Settings
from txnbackup.stats import DriveStats
from txnbackup.transaction import BackupPlan

CHUNK = 64 * 1024
DRIVES = ("scsi0", "scsi1")
DEFAULT_URL = os.environ.get("TXNBACKUP_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@dataclass
class Count:
    commands: int = 0
    round_trips: int = 0


COUNT = Count()


class CountingConnection(Connection):
    """A connection that counts what it sends: every command, and every write to the socket
    that waits for replies (one command, or one pipeline of many)."""

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        COUNT.commands += 1
        super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]

    def pack_commands(self, commands: Any) -> list[bytes]:
        COUNT.commands += len(commands)
        packed: list[bytes] = super().pack_commands(commands)  # type: ignore[no-untyped-call]
        return packed

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        COUNT.round_trips += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class _Quiet:
    def update(self, state: DriveState, stats: DriveStats) -> None:
        pass


def _never(backup: str) -> None:
    raise AssertionError(f"backup {backup} was rolled back")


def _copied_backup(rt: Runtime, repo: Repository, workdir: Path) -> BackupPlan:
    """A backup of two drives, both copied: what the chord callback finds."""
    drives = []
    for name in DRIVES:
        path = workdir / f"{name}-{uuid.uuid4().hex[:6]}.img"
        path.write_bytes(os.urandom(4 * CHUNK))
        drives.append(Drive(name, str(path)))
    vmid = f"bench{uuid.uuid4().hex[:8]}"
    plan = transaction.prepare(repo, rt.bitmaps, vmid, drives)
    rt.locks.lock(vmid, plan.backup)
    rt.records.create(plan, str(repo.path), [f"t-{d}" for d in DRIVES])
    for d in DRIVES:
        copy_step(rt, plan.backup, d, StepContext(f"t-{d}", "bench", lambda *_: _Quiet(), _never))
    return plan


def measure(redis_url: str, workdir: Path, key_prefix: str) -> Count:
    """The commands and round trips of one commit (after a warm-up commit)."""
    redis = Redis.from_url(redis_url, connection_class=CountingConnection)
    rt = Runtime.over(Settings(redis_url=redis_url, key_prefix=key_prefix), redis)
    repo = Repository.init(workdir / "repo", CHUNK)
    try:
        for attempt in range(2):
            plan = _copied_backup(rt, repo, workdir)
            before = Count(COUNT.commands, COUNT.round_trips)
            ending.commit(rt, plan.backup, _never)
            after = Count(COUNT.commands, COUNT.round_trips)
            if (phase := rt.records.load(plan.backup).phase) is not Phase.DONE:
                raise RuntimeError(f"backup {plan.backup} is {phase} after its commit")
            if attempt == 1:
                return Count(
                    after.commands - before.commands, after.round_trips - before.round_trips
                )
        raise AssertionError("unreachable")
    finally:
        _clean(redis, Keys(key_prefix))
        redis.close()


def _clean(redis: Redis, keys: Keys) -> None:
    stale = list(redis.scan_iter(match=keys.pattern(), count=1000))
    if stale:
        redis.delete(*stale)


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=DEFAULT_URL)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        count = measure(args.redis_url, Path(tmp), f"txnbackup-bench:{uuid.uuid4().hex[:8]}:")
    out(f"one commit of a {len(DRIVES)}-drive backup sends to Redis:")
    out(f"  commands     {count.commands}")
    out(f"  round trips  {count.round_trips}")


if __name__ == "__main__":
    main()
