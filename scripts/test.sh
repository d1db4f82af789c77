#!/usr/bin/env bash
# The test command (README: `make test`): venv + install, Redis if none answers, lint, types,
# tests, then the demo as a smoke test (SKIP_DEMO=1 leaves it out).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export VENV

scripts/ensure-venv.sh dev
# QEMU, qemu-img, libnbd and its Python module for tests/qemu (skipped, saying why, without).
scripts/ensure-qemu.sh
# The guest kit (Debian's cloud kernel, busybox) for tests/guest (skipped, saying why, without).
scripts/ensure-guest.sh
scripts/ensure-redis.sh

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
"$VENV/bin/pytest" "$@"
# The broker matrix: tests/pipeline again with RabbitMQ as broker (a vhost of its own);
# prints "skipped: <reason>" and exits 0 where RabbitMQ cannot be started.
if [ -z "${SKIP_BROKER_MATRIX:-}" ]; then
    scripts/test-rabbitmq.sh
fi

# The benchmark on a tiny image without peers, so it never rots (numbers are not judged here).
if [ -z "${SKIP_BENCH:-}" ]; then
    bench_out=$(mktemp -d "${TMPDIR:-/tmp}/txnbackup-bench-XXXXXX")
    "$VENV/bin/python" -m bench --quick --out "$bench_out"
    rm -rf "$bench_out"
fi

if [ -z "${SKIP_DEMO:-}" ]; then
    # Every step of the demo must come out as expected; its work directory is kept on failure.
    demo_dir=$(mktemp -d "${TMPDIR:-/tmp}/txnbackup-smoke-XXXXXX")
    if ! "$VENV/bin/txnbackup" demo --workdir "$demo_dir/work"; then
        tail -n 40 "$demo_dir"/work/logs/*.log >&2 || true
        echo "demo failed; its work directory is $demo_dir/work" >&2
        exit 1
    fi
    rm -rf "$demo_dir"
fi
