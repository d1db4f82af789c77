"""``python -m bench``: the benchmark of issues 6, 15 and 16 (``--help`` for the options)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.image import MIXES
from bench.report import render, write
from bench.run import Options, run
from bench.tools import BenchError
from txnbackup_cli.sizes import parse_size

QUICK = {"size": "64M", "sparse_size": "1G", "runs": 1, "latency_samples": 3, "vms": 10}


def parse(argv: list[str] | None) -> tuple[Options, Path]:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny image, one run, no peers, warm")
    p.add_argument("--size", default="2G", help="image size (default 2G)")
    p.add_argument("--sparse-size", default="64G", help="sparse drive size (default 64G)")
    p.add_argument("--runs", type=int, default=3, help="repetitions of each case (default 3)")
    p.add_argument("--seed", type=int, default=42, help="seed of the images (default 42)")
    p.add_argument(
        "--mix",
        choices=[*MIXES, "both"],
        default="both",
        help="data the images hold (bench/image.py; default both, one after the other)",
    )
    p.add_argument("--no-peers", action="store_true", help="txnbackup only")
    p.add_argument("--qemu-only", action="store_true", help="the QEMU row alone")
    p.add_argument("--no-install", action="store_true", help="never apt-get install peers")
    p.add_argument("--warm", action="store_true", help="do not drop the page cache")
    p.add_argument("--latency-samples", type=int, default=20, help="tiny backups (default 20)")
    p.add_argument("--vms", type=int, default=200, help="tiny VMs at once (default 200)")
    p.add_argument("--workdir", type=Path, help="keep images and repositories here")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="results.json, chart.png"
    )
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    quick = bool(args.quick)
    options = Options(
        size=parse_size(str(args.size)),
        sparse_size=parse_size(str(args.sparse_size)),
        runs=args.runs,
        seed=args.seed,
        mixes=tuple(MIXES) if args.mix == "both" else (args.mix,),
        peers=not (args.no_peers or quick),
        install=not args.no_install,
        drop_caches=not (args.warm or quick),
        latency_samples=args.latency_samples,
        vms=args.vms,
        workdir=args.workdir,
        keep=args.keep,
        redis_url=os.environ.get("TXNBACKUP_REDIS_URL", "redis://127.0.0.1:6379/0"),
        qemu_only=bool(args.qemu_only),
    )
    return options, args.out


def main(argv: list[str] | None = None) -> int:
    options, out = parse(argv)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    try:
        results = run(options, say)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print()
    print(render(results))
    for path in write(results, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
