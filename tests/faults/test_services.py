"""Services that go away under a backup: Redis restarted or its clients cut off mid-drive,
Redis unreachable at submit, the RabbitMQ broker connection lost mid-drive (issue 5).

Each mid-drive scenario: a committed backup of a two-drive VM, a guest write to every chunk,
then an incremental read at 1 MiB/s (scsi0 takes about 4 s) that loses its service
while scsi0 is being copied. The worker must neither die nor hang: the backup ends within the
bound, done or rolled back completely (I1-I3), and the next backup restores byte for byte.
docs/brokers.md says which broker guarantees what.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tasks.names import COPY_DRIVE
from tasks.producer import Producer
from tasks.queues import node_queue
from tests.faults.test_kill import assert_invariants, assert_restores
from tests.fleet import SampleVM, new_vmid, wait_for
from tests.fleet_plugin import Fleet
from tests.pipeline.test_cli_backup import cli
from txnbackup.errors import ServiceUnavailable
from txnbackup.redisconn import outage_retry
from txnbackup.repository import Repository
from txnbackup.runtime import Runtime
from txnbackup.settings import Settings
from txnbackup.tracker import Tracker
from txnbackup_cli.demo.services import find_redis_server

MIB = 1024 * 1024
CHUNK = 64 * 1024
SLOW = MIB  # bytes per second
RECOVERY = {
    "TXNBACKUP_LEASE_TTL": "6",
    "TXNBACKUP_REAPER_INTERVAL": "1",
    "TXNBACKUP_QUEUE_TIMEOUT": "20",
    "TXNBACKUP_ROLLBACK_WAIT": "2",
}
SETTLE_TIMEOUT = 90.0  # the bound I3 is checked against, with the settings above
RABBIT = "127.0.0.1", 5672


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test only: append-only file fsynced on every write."""

    def __init__(self, binary: Path, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--dir", str(self.root), "--appendonly", "yes", "--appendfsync", "always"]
        cmd += ["--save", "", "--logfile", str(self.root / "redis.log")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, 10, f"redis-server on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: Redis writes its last appends and exits (a clean restart)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def answers(self) -> bool:
        client = Redis(port=self.port, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except RedisConnectionError:
            return False
        finally:
            client.close()

    def client(self) -> Redis:
        return Redis(port=self.port)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server to start a private Redis with")
    root = tmp_path / "redis"
    root.mkdir()
    server = PrivateRedis(binary, root)
    server.start()
    yield server
    server.stop()


@dataclass
class SlowBackup:
    fleet: Fleet
    vm: SampleVM
    repo: Repository
    backup: str
    base: str

    @property
    def producer(self) -> Producer:
        return self.fleet.producer


def start_slow_incremental(fleet: Fleet, tmp: Path) -> SlowBackup:
    """A committed full backup, every chunk rewritten, then a slow incremental (about 4 s for
    scsi0, 2 s for scsi1) that is copying scsi0 when this returns."""
    repo = Repository.init(tmp / "repo", CHUNK)
    vm = SampleVM(new_vmid(), tmp, Tracker.from_settings(fleet.settings))
    vm.add_drive("scsi0", 4 * MIB, seed=1)
    vm.add_drive("scsi1", 2 * MIB, seed=2)
    producer = fleet.producer
    base = producer.wait(producer.submit(vm.vmid, vm.drives, repository=repo.path), 60)
    assert base.status == "done", base.errmsg
    vm.write("scsi0", 0, random.Random(1).randbytes(4 * MIB))
    vm.write("scsi1", 0, random.Random(2).randbytes(2 * MIB))
    backup = producer.submit(vm.vmid, vm.drives, repository=repo.path, speed_limit=SLOW)
    wait_for(lambda: producer.status(backup).drives[0].transferred > 0, 20, "scsi0 copying")
    scsi0 = producer.status(backup).drives[0]
    assert scsi0.state == "running" and scsi0.transferred < scsi0.dirty, scsi0
    return SlowBackup(fleet, vm, repo, backup, base.snapshot)


def assert_settles_completely(run: SlowBackup, tmp: Path) -> str:
    """The backup ends within the bound in one outcome, completely; the next one restores."""
    producer = run.producer
    status = producer.wait(run.backup, timeout=SETTLE_TIMEOUT)
    assert not status.active, f"backup still {status.phase} after {SETTLE_TIMEOUT} s"
    raw = producer.rt.records.raw(run.backup)
    snapshots = [str(s) for s in run.repo.snapshots(run.vm.vmid)]
    if status.status == "done":
        assert raw.get("commit_runs") == "1" and "rollback_runs" not in raw
        assert snapshots == [status.snapshot, run.base]
    else:
        assert status.status in ("error", "cancelled"), status.status
        assert raw.get("rollback_runs") == "1" and "commit_runs" not in raw
        assert snapshots == [run.base]
    assert producer.rt.locks.holder(run.vm.vmid) is None
    assert_invariants(producer.rt.bitmaps, run.vm, run.repo, tmp)
    after = producer.wait(producer.submit(run.vm.vmid, run.vm.drives, repository=run.repo.path))
    assert after.status == "done", after.errmsg
    assert_restores(run.repo, after.snapshot, run.vm, tmp)
    return f"{status.status} {status.errmsg}".strip()


def redis_fleet(make_fleet: Callable[[dict[str, str]], Fleet], redis: PrivateRedis) -> Fleet:
    return make_fleet(
        {"TXNBACKUP_REDIS_URL": redis.url, "TXNBACKUP_BROKER_URL": redis.url, **RECOVERY}
    )


def restart(redis: PrivateRedis) -> None:
    redis.restart()


def kill_clients(redis: PrivateRedis) -> None:
    """Every client connection cut at once, Redis itself untouched (a proxy or LB failover)."""
    with redis.client() as admin:
        admin.client_kill_filter(_type="normal", skipme=True)
        admin.client_kill_filter(_type="pubsub", skipme=True)


def down_for_a_while(redis: PrivateRedis) -> None:
    """Down longer than a lease lives: the reaper may roll the backup back; either way clean."""
    redis.stop()
    time.sleep(2 * float(RECOVERY["TXNBACKUP_LEASE_TTL"]))
    redis.start()


@pytest.mark.parametrize(
    "outage",
    [
        pytest.param(restart, id="restart"),
        pytest.param(kill_clients, id="clients-cut"),
        pytest.param(down_for_a_while, id="down-longer-than-a-lease", marks=pytest.mark.slow),
    ],
)
def test_redis_outage_mid_drive_settles_cleanly(
    private_redis: PrivateRedis,
    make_fleet: Callable[[dict[str, str]], Fleet],
    tmp_path: Path,
    outage: Callable[[PrivateRedis], None],
) -> None:
    # Given a fleet whose Redis (broker, backend, state) is copying scsi0 of a slow backup
    fleet = redis_fleet(make_fleet, private_redis)
    worker = fleet.start()
    run = start_slow_incremental(fleet, tmp_path)

    # When Redis goes away and comes back, with its data
    outage(private_redis)

    # Then the worker lives on (it reconnects) and the backup settles completely
    outcome = assert_settles_completely(run, tmp_path)
    assert worker.proc.poll() is None, worker.log_text()[-3000:]
    print(f"redis {outage.__name__}: backup {outcome}")


def test_redis_unreachable_at_submit_is_a_clear_error_and_leaves_nothing(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    # Given a VM, a repository, and a Redis that does not answer
    repo = Repository.init(tmp_path / "repo", CHUNK)
    vm = SampleVM(new_vmid(), tmp_path, Tracker.from_settings(_settings(private_redis)))
    vm.add_drive("scsi0", MIB, seed=1)
    private_redis.stop()

    # When a backup is submitted through the CLI and through the API
    done = cli(
        "backup",
        vm.vmid,
        f"--drive=scsi0={vm.path('scsi0')}",
        "--repo",
        str(repo.path),
        env=_cli_env(private_redis),
    )
    with pytest.raises(ServiceUnavailable) as refused:
        Producer.from_settings(_settings(private_redis))

    # Then both say which service is missing (CLI: one line, exit 7) and nothing was left
    assert done.returncode == 7, done.stderr
    assert done.stderr.startswith(f"txnbackup: error: cannot reach Redis at {private_redis.url}")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert str(refused.value).startswith(f"cannot reach Redis at {private_redis.url}")
    assert_nothing_left(private_redis, repo)


def test_redis_lost_during_submit_leaves_nothing(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    # Given a producer that reached Redis, rides out 1 s of outage, and a VM with a bitmap
    settings = _settings(private_redis)
    redis = Redis.from_url(private_redis.url, retry=outage_retry(1.0))
    rt = Runtime.over(settings, redis)
    producer = Producer(rt, Producer.from_settings(settings).app)
    repo = Repository.init(tmp_path / "repo", CHUNK)
    vm = SampleVM(new_vmid(), tmp_path, Tracker.from_settings(settings))
    vm.add_drive("scsi0", MIB, seed=1)

    # When Redis stops answering before the submit
    private_redis.stop()
    with pytest.raises(ServiceUnavailable) as refused:
        producer.submit(vm.vmid, vm.drives, repository=repo.path)

    # Then the error names Redis, and once it is back nothing of the backup is there
    assert str(refused.value).startswith(f"cannot reach Redis at {private_redis.url}")
    assert_nothing_left(private_redis, repo)


def assert_nothing_left(redis: PrivateRedis, repo: Repository) -> None:
    redis.start()
    with redis.client() as client:
        assert client.dbsize() == 0, sorted(client.scan_iter())
    staging = repo.path / "staging"
    assert not staging.exists() or not any(staging.iterdir())


def _settings(redis: PrivateRedis) -> Settings:
    return Settings.from_env({"TXNBACKUP_REDIS_URL": redis.url})


def _cli_env(redis: PrivateRedis) -> dict[str, str]:
    return {**os.environ, "TXNBACKUP_REDIS_URL": redis.url, "TXNBACKUP_BROKER_URL": redis.url}


# The RabbitMQ broker ----------------------------------------------------------------------


def rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(RABBIT, timeout=1):
            return True
    except OSError:
        return False


def ensure_rabbitmq() -> str | None:
    """None when RabbitMQ answers (started here if it was not), else why it cannot be used."""
    if rabbitmq_answers():
        return None
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        return "RabbitMQ does not answer on 127.0.0.1:5672 and is not installed"
    subprocess.run(["rabbitmq-server", "-detached"], capture_output=True, check=False)
    deadline = time.monotonic() + 60
    while not rabbitmq_answers():
        if time.monotonic() > deadline:
            return "RabbitMQ could not be started (rabbitmq-server -detached)"
        time.sleep(0.5)
    return None


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=True
    )


@pytest.fixture
def rabbit_vhost() -> Iterator[str]:
    """A vhost of this test only: its queues, and the connections the test closes, are its own."""
    reason = ensure_rabbitmq()
    if reason is not None:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    vhost = f"txnbackup-test-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


def close_broker_connections(vhost: str) -> None:
    rabbitmqctl("close_all_connections", "-p", vhost, "closed by txnbackup test")


def test_broker_connection_lost_mid_drive_settles_cleanly(
    rabbit_vhost: str, make_fleet: Callable[[dict[str, str]], Fleet], tmp_path: Path
) -> None:
    # Given a fleet on RabbitMQ (Redis as backend and state), whose worker asked for a delivery
    # timeout as long as the visibility timeout, copying scsi0 of a slow backup
    url = f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/{rabbit_vhost}"
    fleet = make_fleet({"TXNBACKUP_BROKER_URL": url, **RECOVERY})
    worker = fleet.start()
    consumers = rabbitmqctl("list_consumers", "-p", rabbit_vhost, "queue_name", "arguments")
    ours = [line for line in consumers.stdout.splitlines() if line.startswith("txnbackup")]
    assert len(ours) == 2 and all('"x-consumer-timeout",43200000' in line for line in ours)
    run = start_slow_incremental(fleet, tmp_path)

    # When RabbitMQ closes every connection of the fleet (the message of the running drive
    # goes back to its queue at once, and is delivered again)
    close_broker_connections(rabbit_vhost)

    # Then the worker reconnects and the backup settles completely
    outcome = assert_settles_completely(run, tmp_path)
    assert worker.proc.poll() is None, worker.log_text()[-3000:]
    print(f"broker connections closed: backup {outcome}")


def test_a_drive_delivered_again_after_it_was_copied_changes_nothing(
    make_fleet: Callable[[dict[str, str]], Fleet], tmp_path: Path
) -> None:
    # Given a slow backup whose scsi0 was copied and whose scsi1 is being copied
    fleet = make_fleet(RECOVERY)
    fleet.start()
    run = start_slow_incremental(fleet, tmp_path)
    producer = run.producer
    wait_for(lambda: producer.status(run.backup).drives[1].transferred > 0, 30, "scsi1 copying")

    # When the broker delivers scsi0's task again (a visibility timeout shorter than a drive
    # on Redis; a closed connection's requeue on RabbitMQ)
    scsi0_task = producer.rt.records.task_ids(run.backup)[0]
    producer.app.send_task(
        COPY_DRIVE, (run.backup, "scsi0"), queue=node_queue("default"), task_id=scsi0_task
    )

    # Then it is ignored: the backup commits once, every drive done, and settles completely
    assert assert_settles_completely(run, tmp_path) == "done"
    status = producer.status(run.backup)
    assert [d.state for d in status.drives] == ["done", "done"]
    assert all(d.transferred == d.dirty for d in status.drives)
