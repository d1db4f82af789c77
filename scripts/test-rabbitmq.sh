#!/usr/bin/env bash
# The broker matrix (docs/brokers.md): the pipeline tests again with RabbitMQ as the broker;
# Redis stays the result backend and the state store. Starts RabbitMQ on 127.0.0.1:5672 if it
# is not running; when it cannot, says why in a "skipped" line and exits 0. Each run gets a
# vhost of its own (deleted at the end), so its queues and connections are nobody else's.
# Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
HOST=127.0.0.1
PORT=5672

answers() {
    python3 -c "import socket; socket.create_connection(('$HOST', $PORT), timeout=1).close()" \
        2>/dev/null
}
skip() {
    echo "rabbitmq broker matrix: skipped: $1"
    exit 0
}

if ! answers; then
    command -v rabbitmq-server >/dev/null \
        || skip "nothing answers on $HOST:$PORT and rabbitmq-server is not installed"
    echo "rabbitmq broker matrix: starting rabbitmq-server"
    rabbitmq-server -detached >/dev/null 2>&1 || skip "rabbitmq-server -detached failed"
    for _ in $(seq 120); do
        answers && break
        sleep 0.5
    done
    answers || skip "rabbitmq-server did not answer on $HOST:$PORT within 60 s"
fi

vhost=/
if command -v rabbitmqctl >/dev/null && rabbitmqctl await_startup --timeout 60 >/dev/null 2>&1; then
    vhost="txnbackup-test-$(python3 -c 'import uuid; print(uuid.uuid4().hex[:10])')"
    rabbitmqctl add_vhost "$vhost" >/dev/null
    trap 'rabbitmqctl delete_vhost "$vhost" >/dev/null 2>&1 || true' EXIT
    rabbitmqctl set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
else
    # Without rabbitmqctl no vhost can be made: the queues are the shared txnbackup.* ones,
    # so another fleet on this broker's "/" could take this run's tasks.
    echo "rabbitmq broker matrix: no rabbitmqctl; using the shared vhost /"
fi

echo "rabbitmq broker matrix: pytest tests/pipeline, broker amqp://guest:***@$HOST:$PORT/$vhost"
TXNBACKUP_TEST_BROKER_URL="amqp://guest:guest@$HOST:$PORT/${vhost#/}" \
    "$VENV/bin/pytest" tests/pipeline "$@"
