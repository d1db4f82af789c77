#!/usr/bin/env bash
# Start a Redis on 127.0.0.1:6379 (no persistence) unless one answers there already.
set -euo pipefail
ping() { python3 - <<'PY'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", 6379), timeout=1) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
except OSError:
    sys.exit(1)
PY
}
if ping; then
    exit 0
fi
if ! command -v redis-server >/dev/null; then
    echo "no Redis answers on 127.0.0.1:6379 and redis-server is not installed" >&2
    echo "install it (Debian: apt-get install redis-server) or point TXNBACKUP_TEST_REDIS_URL at one" >&2
    exit 1
fi
mkdir -p /tmp/txnbackup-redis
redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /tmp/txnbackup-redis --logfile /tmp/txnbackup-redis/redis.log
for _ in $(seq 50); do
    ping && { echo "started redis-server on 127.0.0.1:6379"; exit 0; }
    sleep 0.1
done
echo "redis-server did not come up; see /tmp/txnbackup-redis/redis.log" >&2
exit 1
