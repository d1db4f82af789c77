"""``python -m bench.restore_alone REPO``: restore alone (no Celery, no Redis, no command's
start-up): the latest snapshot of a repository (every drive, as ``restore --all``), cold
cache, wall seconds and the process's CPU seconds, user and system, per run. What
docs/performance.md's "Restore past the page cache" figures come from; a repository to
restore is what ``python -m bench --keep --workdir DIR`` leaves in
``DIR/mix-*/repos/full2-txnbackup-0``. Run it from two checkouts alternately to compare them.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.measure import PageCache
from txnbackup.repository import Repository
from txnbackup.restore import restore_all


def one_run(repo: Repository, out: Path, cache: PageCache) -> tuple[float, float, float, int]:
    """(wall, user, system seconds, drives) of one restore of the latest snapshot into ``out``,
    its writes made durable (``restore_all`` fsyncs; the final sync is for the directory)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cache.drop()
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    done = restore_all(repo, repo.snapshots()[-1], out)
    os.sync()
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, len(done)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.restore_alone", description=__doc__)
    p.add_argument("repo", type=Path, help="a plain repository with at least one snapshot")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir", type=Path, help="restore here (default: a new directory)")
    args = p.parse_args()
    repo = Repository.open(args.repo)
    if not repo.snapshots():
        p.error(f"{args.repo} holds no snapshot")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="txnbackup-restore-"))
    cache = PageCache(True)
    print(f"restore alone, {repo.snapshots()[-1]}; page cache: {cache.describe()}")
    print("run  wall s  user s  sys s  CPU s  drives")
    walls = []
    for run in range(args.runs):
        wall, user, system, drives = one_run(repo, workdir / "out", cache)
        walls.append(wall)
        print(f"{run:3}  {wall:6.2f}  {user:6.2f}  {system:5.2f}  {user + system:5.2f}  {drives}")
    print(f"median {statistics.median(walls):.2f} s")
    shutil.rmtree(workdir / "out", ignore_errors=True)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
