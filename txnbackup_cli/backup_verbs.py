"""Verbs over the Celery fleet: backup, watch, status, cancel, backups, worker.

JSON shapes (``--json``), stable (docs/json.md has them all):

- ``status``/``backup --wait``/``watch``/``cancel``: one object with uuid, vmid, status
  (active|done|error|cancelled), phase, errmsg, start_time, end_time, finishing, snapshot,
  total, dirty, transferred, zero_bytes, reused (bytes) and drives: a list of objects with
  name, node, action, reason, state, size, dirty, transferred, zero_bytes, reused.
- ``backups``: a list of such objects, newest first.
- ``backup`` without ``--wait``: ``{"uuid": "..."}``.
- ``backup --wait --verify``: the status object plus ``verify``, the object ``verify --json``
  prints (snapshot, ok, chunks, problems), when the backup is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from txnbackup.drive import Drive
from txnbackup.errors import ConflictError, InvalidInput, VerifyFailed
from txnbackup.names import check_node
from txnbackup.qemu.vm import QemuVM
from txnbackup.settings import Settings, drive_roots
from txnbackup.status import BackupStatus
from txnbackup_cli import fleet
from txnbackup_cli.options import json_option, repo_option
from txnbackup_cli.output import print_json, print_status, print_table
from txnbackup_cli.sizes import size_option_value
from txnbackup_cli.verify_view import report_json, show_report
from txnbackup_cli.watch import follow_and_show, warn_unserved, watch

if TYPE_CHECKING:
    from tasks.producer import Producer


def _show(status: BackupStatus, as_json: bool) -> None:
    if as_json:
        print_json(status.to_dict())
    else:
        print_status(status)


def _parse_config(values: tuple[str, ...]) -> dict[str, Path]:
    config = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise InvalidInput(f"--config {value!r} must look like NAME=PATH")
        config[name] = Path(path)
    return config


@click.command()
@click.argument("vmid")
@click.option(
    "--drive",
    "drives",
    multiple=True,
    metavar="NAME=PATH[@NODE]",
    help="A drive of the VM; repeat for each, in backup order. NODE defaults to 'default'. "
    "With --qmp: NAME=qemu:BLOCK-NODE (default: every drive QEMU has).",
)
@click.option(
    "--qmp",
    metavar="SOCKET@NODE",
    help="Back up a running QEMU VM through its QMP socket, on the node that reaches it.",
)
@click.option(
    "--nbd-socket",
    metavar="PATH",
    default="",
    help="With --qmp: the NBD server QEMU already runs (qemu-storage-daemon --nbd-server).",
)
@repo_option
@click.option("--full", is_flag=True, help="Read every chunk even where a bitmap is valid.")
@click.option(
    "--speed-limit",
    callback=lambda c, p, v: size_option_value(c, p, v) if v else None,
    metavar="BYTES/S",
    help="Cap the read rate of each drive, e.g. 50M.",
)
@click.option(
    "--config",
    "configs",
    multiple=True,
    metavar="NAME=PATH",
    help="Config file to keep with the snapshot.",
)
@click.option(
    "--timeout",
    type=click.IntRange(min=1),
    metavar="SECONDS",
    help="How long a drive may wait for a worker of its node before the backup fails. "
    "[default: TXNBACKUP_QUEUE_TIMEOUT of the workers, 3600]",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Show progress until the end, then the final status (see `txnbackup watch`).",
)
@click.option(
    "--verify",
    is_flag=True,
    help="With --wait: then read back every chunk of the new snapshot and check it "
    "(see `txnbackup verify`); exit 5 when it fails.",
)
@json_option
@click.pass_obj
def backup(
    settings: Settings,
    vmid: str,
    drives: tuple[str, ...],
    qmp: str | None,
    nbd_socket: str,
    repo: Path | None,
    full: bool,
    speed_limit: int | None,
    configs: tuple[str, ...],
    timeout: int | None,
    wait: bool,
    verify: bool,
    as_json: bool,
) -> None:
    """Back up every drive of VMID in one transaction; print the backup uuid.

    Exit code with --wait: 0 done, 1 error, 9 cancelled, 130 stopped watching (Ctrl-C);
    with --verify also 5 when the new snapshot fails verification.
    """
    if verify and not wait:
        raise InvalidInput("--verify needs --wait: the snapshot is verified once it is published")
    if not drives and not qmp:
        raise InvalidInput("give the drives (--drive NAME=PATH), or a QEMU VM (--qmp)")
    if nbd_socket and not qmp:
        raise InvalidInput("--nbd-socket needs --qmp")
    vm = QemuVM.parse(qmp, nbd_socket) if qmp else None
    parsed = [_absolute(Drive.parse(spec)) for spec in drives]
    producer = fleet.producer(settings)
    uuid = producer.submit(
        vmid,
        parsed,
        repository=repo,
        full=full,
        speed_limit=speed_limit,
        config=_parse_config(configs),
        qmp=vm,
        queue_timeout=timeout,
    )
    if not wait:
        print_json({"uuid": uuid}) if as_json else click.echo(uuid)
        warn_unserved(producer, uuid, _waiting(parsed, vm))
        return
    # First, so that a user can cancel or look it up while it runs (stdout stays one JSON
    # document with --json).
    click.echo(f"backup {uuid}", err=as_json)
    told = warn_unserved(producer, uuid, _waiting(parsed, vm))
    after = _Verification(producer, repo) if verify else None
    raise SystemExit(follow_and_show(producer, uuid, as_json, told, after))


@dataclasses.dataclass(frozen=True)
class _Verification:
    """backup --verify: the new snapshot verified once the backup is done."""

    producer: Producer
    repo: Path | None

    def __call__(self, status: BackupStatus, as_json: bool) -> tuple[dict[str, Any], int]:
        if not as_json:
            click.echo(f"verifying {status.snapshot}")
        report = self.producer.verify(status.uuid, self.repo)
        failed = VerifyFailed(str(report.snapshot), len(report.problems))
        if not as_json:
            show_report(report)
            if not report.ok:
                click.echo(f"txnbackup: error: {failed}", err=True)
        return {"verify": report_json(report)}, 0 if report.ok else failed.exit_code


def _waiting(drives: list[Drive], vm: QemuVM | None) -> dict[str, str]:
    """What of the backup waits for each node's workers, as the warning names it."""
    if vm is not None:
        return {vm.node: "the VM's backup waits"}
    names: dict[str, list[str]] = {}
    for d in drives:
        names.setdefault(d.node, []).append(d.name)
    return {
        node: f"drive {found[0]} waits" if len(found) == 1 else f"drives {', '.join(found)} wait"
        for node, found in names.items()
    }


def _absolute(drive: Drive) -> Drive:
    """The worker resolves a path from its own directory: send what the shell meant."""
    if drive.path.startswith("qemu:"):
        return drive
    return dataclasses.replace(drive, path=os.path.abspath(drive.path))


@click.command()
@click.argument("uuid")
@json_option
@click.pass_obj
def status(settings: Settings, uuid: str, as_json: bool) -> None:
    """Show a backup's status: totals and each drive's progress (also after it ended)."""
    _show(fleet.producer(settings).status(uuid), as_json)


@click.command()
@click.argument("uuid")
@click.option("--reason", default="cancelled by user", help="Why, as shown in the status.")
@json_option
@click.pass_obj
def cancel(settings: Settings, uuid: str, reason: str, as_json: bool) -> None:
    """Cancel the whole backup UUID: no later drive starts, everything is rolled back."""
    producer = fleet.producer(settings)
    before = producer.status(uuid)
    if not before.active:
        raise ConflictError(f"backup {uuid} already ended: {before.status}")
    producer.cancel(uuid, reason)
    _show(producer.wait(uuid, timeout=30), as_json)


@click.command()
@click.option("--limit", default=20, show_default=True, help="How many, newest first.")
@json_option
@click.pass_obj
def backups(settings: Settings, limit: int, as_json: bool) -> None:
    """List recent backups with their status."""
    found = fleet.producer(settings).recent(limit)
    if as_json:
        print_json([s.to_dict() for s in found])
    else:
        headers = ["backup", "vm", "status", "started", "ended", "snapshot", "error"]
        print_table(headers, _backups_rows(found))


def _backups_rows(statuses: Sequence[BackupStatus]) -> list[list[str]]:
    return [
        [s.uuid, s.vmid, s.status, s.start_time, s.end_time, s.snapshot, s.errmsg] for s in statuses
    ]


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--node", default="default", show_default=True, help="Node whose drives it reads.")
@click.option("--name", help="Worker name. [default: NODE@hostname]")
@click.option("--concurrency", type=int, help="Pool processes. [default: CPU count]")
@click.option("--loglevel", default="info", show_default=True)
@click.option(
    "--allow-drives",
    "allow_drives",
    multiple=True,
    metavar="PATTERN",
    help="A directory or device pattern (/dev/vg0/*) the drives this worker reads must lie "
    "in; repeat for more. Replaces TXNBACKUP_DRIVE_ROOTS. [default: TXNBACKUP_DRIVE_ROOTS]",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on this port (http://ADDRESS:PORT/metrics).",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1",
    show_default=True,
    help="Address to serve them on (0.0.0.0: every interface).",
)
@click.option(
    "--metrics-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="This worker's own directory for the pool processes' metric files, emptied at "
    "start. [default: a new temporary directory]",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    node: str,
    name: str | None,
    concurrency: int | None,
    loglevel: str,
    allow_drives: tuple[str, ...],
    metrics_port: int | None,
    metrics_address: str,
    metrics_dir: Path | None,
    celery_args: tuple[str, ...],
) -> None:
    """Run a worker for NODE: it copies that node's drives and runs commits and rollbacks.

    Further arguments go to `celery worker` unchanged.
    """
    if allow_drives:
        _allow_drives(allow_drives)
    with contextlib.ExitStack() as cleanup:
        if metrics_port is not None:
            if metrics_dir is None:
                metrics_dir = Path(cleanup.enter_context(_temporary_metrics_dir()))
            _metrics_environment(metrics_port, metrics_address, metrics_dir)
        fleet.run_worker(node, name, concurrency, loglevel, celery_args)


def _allow_drives(patterns: tuple[str, ...]) -> None:
    """What the worker's processes read as their drive roots (txnbackup.trust)."""
    for pattern in patterns:
        if ":" in pattern or not pattern:
            raise InvalidInput(f"--allow-drives {pattern!r}: a pattern cannot contain ':'")
    value = ":".join(patterns)
    drive_roots(value)  # the same checks as the variable's
    os.environ["TXNBACKUP_DRIVE_ROOTS"] = value


def _temporary_metrics_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="txnbackup-metrics-", ignore_cleanup_errors=True)


def _metrics_environment(port: int, address: str, directory: Path) -> None:
    """What workers.metrics reads at start-up; set before prometheus_client is imported."""
    os.environ["TXNBACKUP_METRICS_PORT"] = str(port)
    os.environ["TXNBACKUP_METRICS_ADDRESS"] = address
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory.resolve())


@click.command()
@click.option(
    "--node",
    "nodes",
    multiple=True,
    help="A node this host is (repeatable): only its running QEMU VMs' backups are ended "
    "here, through their QMP sockets. Without it no QMP socket is opened; lost QEMU "
    "backups get their rollback sent to their node's queue.",
)
@json_option
@click.pass_obj
def reap(settings: Settings, nodes: tuple[str, ...], as_json: bool) -> None:
    """Run one reaper pass now (every worker runs one every TXNBACKUP_REAPER_INTERVAL s).

    Rolls back backups whose worker is gone, finishes commits and rollbacks that lost their
    worker, returns bits frozen by producers that died, removes orphaned staging areas.
    """
    from workers.reaper import Reaper  # noqa: PLC0415 - the worker layer, for this verb only

    producer = fleet.producer(settings)
    served = frozenset(check_node(n) for n in nodes)
    stop = producer.terminate
    reaper = Reaper(producer.rt, producer.send_rollback, nodes=served, stop_task=stop)
    acted = reaper.run_once()
    if as_json:
        print_json({backup: str(verdict) for backup, verdict in acted.items()})
    else:
        for backup, verdict in acted.items():
            click.echo(f"{backup}: {verdict}")
        click.echo(f"{len(acted)} backup(s) acted on")


COMMANDS = (backup, watch, status, cancel, backups, worker, reap)
