"""`python -m workers --node NAME [celery worker options]`: the same as `txnbackup worker`."""

from __future__ import annotations

import argparse

from workers.start import run_worker, worker_argv


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m workers")
    parser.add_argument("--node", default="default")
    parser.add_argument("--name")
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--loglevel", default="info")
    args, extra = parser.parse_known_args()
    run_worker(
        worker_argv(
            args.node,
            name=args.name,
            concurrency=args.concurrency,
            loglevel=args.loglevel,
            extra=extra,
        )
    )


if __name__ == "__main__":
    main()
