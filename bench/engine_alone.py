"""``python -m bench.engine_alone``: the copy engine alone (no Celery, no Redis) on an image
of one mix, cold cache: wall seconds and the process's CPU seconds, user and system, per run,
beside the image's floor parts. What docs/performance.md's "Direct I/O" figures come from;
run it from two checkouts alternately to compare them."""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.floor import measure_floor, measure_shared, measure_write
from bench.image import MIXES, Generator
from bench.measure import PageCache
from txnbackup.action import BitmapAction
from txnbackup.drive import FileDrive
from txnbackup.engine import CopyJob, copy_drive
from txnbackup.names import new_backup_id
from txnbackup.repository import Repository
from txnbackup.staging import Staging
from txnbackup_cli.sizes import parse_size


def one_run(image: Path, root: Path, cache: PageCache) -> tuple[float, float, float, int]:
    """(wall, user, system seconds, bytes stored) of one full copy into a new repository
    ``root``, which must not exist. Nothing is deleted before a run: ext4 creates files
    slowly right after many were deleted (it skips recently freed inodes), which charged a
    run with its predecessor's deletion (0.1-0.3 CPU-s per GiB, perf)."""
    repo = Repository.init(root)
    backup = new_backup_id()
    staging = Staging(repo, backup)
    staging.create()
    job = CopyJob("100", backup, "drive0", BitmapAction.NEW)
    cache.drop()
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with FileDrive("drive0", image) as reader:
        entry = copy_drive(job, reader, staging, None, lambda: None, lambda _: None)
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return wall, user, system, entry.stats.stored


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.engine_alone", description=__doc__)
    p.add_argument("--mix", choices=list(MIXES), default="default")
    p.add_argument("--size", default="1G", help="image size (default 1G)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workdir", type=Path, help="keep the image here (made once)")
    args = p.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="txnbackup-engine-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for leftover in workdir.glob("repo-*"):  # an interrupted run's, gone before the image is made
        shutil.rmtree(leftover, ignore_errors=True)
    size = parse_size(args.size)
    image = workdir / f"{args.mix}-{size}-{args.seed}.raw"
    if not image.exists():
        Generator(args.seed, MIXES[args.mix]).write_image(image, size)
    cache = PageCache(True)
    print(f"engine alone, {args.mix} mix, {args.size}; page cache: {cache.describe()}")
    print("run  wall s  user s  sys s  CPU s  stored MiB")
    walls, stored = [], 0
    for run in range(args.runs):
        wall, user, system, stored = one_run(image, workdir / f"repo-{run}", cache)
        walls.append(wall)
        cpu = user + system
        print(f"{run:3}  {wall:6.2f}  {user:6.2f}  {system:5.2f}  {cpu:5.2f}  {stored >> 20}")
    floor = measure_floor([image], cache)
    floor.write_bytes = stored
    floor.add_write(*measure_write(workdir, stored))
    floor.add_shared(measure_shared([image], workdir, floor, cache))
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in floor.parts().items())
    median = statistics.median(walls)
    print(f"median {median:.2f} s; floor {floor.seconds:.2f} s ({parts}; {floor.binds} binds)")
    print(f"median / floor: {median / floor.seconds:.2f}")
    shared = floor.shared_seconds or float("nan")
    print(f"read and write at once: {shared:.2f} s; median / that: {median / shared:.2f}")
    for run in range(args.runs):
        shutil.rmtree(workdir / f"repo-{run}", ignore_errors=True)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
