"""The workers' Prometheus metrics, scraped from the running fleet, against backups' status."""

from __future__ import annotations

import random
import subprocess
import urllib.request
import uuid
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tasks.producer import Producer
from tests.fleet import SampleVM, wait_for
from tests.fleet_plugin import delete_keys
from tests.operators.conftest import OPS_ENV, STALE_COUNT, OpsFleet
from tests.operators.fleet import (
    Samples,
    env_with,
    free_port,
    metric,
    metrics_worker_command,
    stop_process,
    wait_for_log,
)
from txnbackup.repository import Repository

MIB = 1024 * 1024
CHUNK = 64 * 1024


def test_metrics_match_the_status_of_the_backups(
    ops_fleet: OpsFleet, ops_producer: Producer, ops_vm: SampleVM, ops_repo: Repository
) -> None:
    # Given a VM whose second backup is incremental, and the fleet's counts before
    before = ops_fleet.scrape()
    ops_vm.add_drive("scsi0", 2 * MIB, seed=1)
    ops_vm.add_drive("scsi1", MIB, seed=2, node="node2")
    first = ops_producer.wait(
        ops_producer.submit(ops_vm.vmid, ops_vm.drives, repository=ops_repo.path), 60
    )
    assert first.status == "done", f"the first backup ended {first.status} within 60 s"
    ops_vm.write("scsi0", 5 * CHUNK, random.Random(3).randbytes(2 * CHUNK))

    # When it is backed up again
    second = ops_producer.wait(
        ops_producer.submit(ops_vm.vmid, ops_vm.drives, repository=ops_repo.path), 60
    )
    assert (first.status, second.status) == ("done", "done")
    assert [d.action for d in second.drives] == ["used", "used"]

    # Then, once both are counted, every worker's metrics add up to what their status says
    wait_for(
        lambda: _delta(ops_fleet.scrape(), before, "txnbackup_backups_total", outcome="done") == 2,
        10,
        "both backups to be counted",
    )
    after = ops_fleet.scrape()
    vm = {"vmid": ops_vm.vmid}
    assert (
        metric(after, "txnbackup_read_bytes_total", **vm) == first.transferred + second.transferred
    )
    assert metric(after, "txnbackup_reused_bytes_total", **vm) == first.reused + second.reused
    assert metric(after, "txnbackup_zero_bytes_total", **vm) == first.zero_bytes + second.zero_bytes
    stored = sum(
        ops_producer.rt.records.load(s.uuid).drive(d.name).stats.stored
        for s in (first, second)
        for d in s.drives
    )
    assert metric(after, "txnbackup_written_bytes_total", **vm) == stored
    assert second.transferred == 2 * CHUNK  # only the dirty chunks were read
    # one duration per backup and per drive copy, nothing running, nothing active
    assert _delta(after, before, "txnbackup_backup_duration_seconds_count", outcome="done") == 2
    drives = _delta(after, before, "txnbackup_drive_duration_seconds_count", state="done")
    assert drives == 4
    assert _delta(after, before, "txnbackup_drive_duration_seconds_count", action="used") == 2
    # (a copy task's end is counted just after it returns, which may be after the commit)
    wait_for(lambda: metric(ops_fleet.scrape(), "txnbackup_running_drives") == 0, 10, "idle")
    assert metric(after, "txnbackup_active_backups") == 0


def test_a_worker_starts_its_counts_afresh(ops_fleet: OpsFleet) -> None:
    # Given the metric files an earlier run of the default worker left in its directory,
    # Then the running worker removed them at start and does not add them up
    default = ops_fleet.workers["default"]
    assert metric(default.scrape(), "txnbackup_backups_total") < STALE_COUNT
    assert default.directory.is_dir()


def test_flower_keeps_its_own_metrics(ops_fleet: OpsFleet) -> None:
    code, text = ops_fleet.flower.request("/metrics")
    assert code == 200
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "flower_events" in names
    assert not any(name.startswith("txnbackup_") for name in names)


def test_the_metrics_endpoint_speaks_prometheus(ops_fleet: OpsFleet) -> None:
    port = ops_fleet.workers["node2"].port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        families = {f.name: f.type for f in text_string_to_metric_families(r.read().decode())}
    assert families["txnbackup_active_backups"] == "gauge"


def _delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return metric(after, name, **labels) - metric(before, name, **labels)


def test_a_worker_without_a_metrics_dir_uses_a_temporary_one(tmp_path: Path) -> None:
    # Given a worker started with --metrics-port only, on a fleet of its own
    prefix = f"txnbackup-ops-tmp:{uuid.uuid4().hex[:8]}:"
    env = env_with(
        {
            **OPS_ENV,
            "TXNBACKUP_KEY_PREFIX": prefix,
            "TXNBACKUP_BROKER_KEY_PREFIX": prefix,
            "TMPDIR": str(tmp_path),
        }
    )
    port = free_port()
    log = tmp_path / "worker.log"
    cmd = [*metrics_worker_command("default", "ops-tmp@test", port, tmp_path), "--pool=solo"]
    cmd.remove("--metrics-dir")
    cmd.remove(str(tmp_path))
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_log(proc, log, "txnbackup metrics on")
        # Then it serves from a new directory of its own, removed when it stops
        (directory,) = tmp_path.glob("txnbackup-metrics-*")
        assert f"files in {directory}" in log.read_text()
    finally:
        stop_process(proc)
        delete_keys(prefix)
    assert proc.returncode == 0
    assert not directory.exists()
