"""Orchestration overhead: tiny backups against the bare canvas they are built on.

A tiny VM has three drives of one chunk each. Its backup is timed from submit to ``done``;
the baseline is ``chord([chain(noop, noop, noop)], noop)`` routed like a backup's canvas
(the chain on the node's queue, the callback on the control queue), on the same broker and
worker, timed from ``apply_async`` to the callback's result. Both are polled at the same rate,
each round one Redis round trip for all that are unfinished (the backups' phases in a
pipeline; the callbacks' results with MGET).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from celery import Celery, chain, chord, states
from celery.backends.base import KeyValueStoreBackend
from celery.result import AsyncResult

from bench.fleet import NODE, Fleet
from bench.measure import Samples, timed
from bench.noop import NOOP
from bench.tools import BACKUP_TIMEOUT, POLL, BenchError, run_backup
from tasks.queues import CONTROL_QUEUE, node_queue
from txnbackup.drive import Drive
from txnbackup.record import Phase
from txnbackup.repository import Repository

TINY = 64 * 1024  # bytes per drive: one chunk
DRIVES = ("scsi0", "scsi1", "scsi2")
T = TypeVar("T")


@dataclass(frozen=True)
class Overhead:
    backup_latency: Samples
    canvas_latency: Samples
    vms: int
    backup_rate: Samples  # backups per second, one sample per round of ``vms`` at once
    canvas_rate: Samples

    def to_dict(self) -> dict[str, object]:
        return {
            "backup_latency": self.backup_latency.to_dict(),
            "canvas_latency": self.canvas_latency.to_dict(),
            "latency_ratio": self.backup_latency.median / self.canvas_latency.median,
            "vms": self.vms,
            "backup_rate": self.backup_rate.to_dict(),
            "canvas_rate": self.canvas_rate.to_dict(),
            "backups_per_second": self.backup_rate.median,
            "canvases_per_second": self.canvas_rate.median,
            "throughput_share": self.backup_rate.median / self.canvas_rate.median,
        }


def measure_overhead(fleet: Fleet, workdir: Path, samples: int, vms: int, rounds: int) -> Overhead:
    root = workdir / "tiny"
    root.mkdir()
    backup, canvas = Samples("s"), Samples("s")
    repo = root / "repo"
    Repository.init(repo)
    drives = _tiny_vm(root, "tiny")
    for _ in range(samples):
        _guest_writes(fleet, "tiny", drives)  # so that each backup copies three chunks
        backup.add(timed(lambda: run_backup(fleet, "tiny", drives, repo)))
        canvas.add(timed(lambda: _wait_all([_send_canvas(fleet.producer.app)])))
    many = root / "many"
    Repository.init(many)
    fleet_vms = [(f"tiny{i}", _tiny_vm(root, f"tiny{i}")) for i in range(vms)]
    backup_rate, canvas_rate = Samples("1/s"), Samples("1/s")
    for n in range(rounds):  # alternating, so a change in the machine's load touches both
        if n:
            for vmid, drives in fleet_vms:
                _guest_writes(fleet, vmid, drives)
        backup_rate.add(vms / timed(lambda: _backups_at_once(fleet, fleet_vms, many)))
        canvas_rate.add(vms / timed(lambda: _canvases_at_once(fleet.producer.app, vms)))
    return Overhead(backup, canvas, vms, backup_rate, canvas_rate)


def _tiny_vm(root: Path, vmid: str) -> list[Drive]:
    drives = []
    for name in DRIVES:
        path = root / f"{vmid}-{name}.raw"
        path.write_bytes(os.urandom(TINY))
        drives.append(Drive(name, str(path), NODE))
    return drives


def _guest_writes(fleet: Fleet, vmid: str, drives: Sequence[Drive]) -> None:
    for d in drives:
        Path(d.path).write_bytes(os.urandom(TINY))
        fleet.tracker.mark_dirty(vmid, d.name, 0, TINY)


def _backups_at_once(fleet: Fleet, vms: Sequence[tuple[str, list[Drive]]], repo: Path) -> None:
    producer = fleet.producer
    backups = [producer.submit(vmid, drives, repository=repo) for vmid, drives in vms]
    records = producer.rt.records
    _poll_until(backups, lambda left: [_final(p) for p in records.phases(left)], "tiny backups")
    failed = [s for s in map(producer.status, backups) if s.status != "done"]
    if failed:
        raise BenchError(f"{len(failed)} tiny backup(s) failed, e.g. {failed[0].errmsg}")


def _final(phase: Phase | None) -> bool:
    return phase is None or phase.final


def _canvases_at_once(app: Celery, count: int) -> None:
    _wait_all([_send_canvas(app) for _ in range(count)])


def _send_canvas(app: Celery) -> AsyncResult:  # type: ignore[type-arg]
    links = [app.signature(NOOP, immutable=True).set(queue=node_queue(NODE)) for _ in DRIVES]
    callback = app.signature(NOOP, immutable=True).set(queue=CONTROL_QUEUE)
    result: AsyncResult = chord([chain(*links, app=app)], callback, app=app).apply_async()  # type: ignore[type-arg]
    return result


def _wait_all(results: list[AsyncResult]) -> None:  # type: ignore[type-arg]
    _poll_until(results, _ready, "bare canvases")
    for r in results:
        r.forget()


def _ready(results: list[AsyncResult]) -> list[bool]:  # type: ignore[type-arg]
    """Whether each callback has its result, in one round trip (MGET of their result keys)."""
    backend = results[0].backend
    if not isinstance(backend, KeyValueStoreBackend):  # not Redis: one look per result
        return [r.ready() for r in results]
    values = backend.mget([backend.get_key_for_task(r.id) for r in results])
    return [
        v is not None and backend.decode_result(v)["status"] in states.READY_STATES for v in values
    ]


def _poll_until(items: Sequence[T], finished: Callable[[list[T]], list[bool]], what: str) -> None:
    """Look at every unfinished item each POLL seconds, all in one round trip, until all are
    finished. One look per round keeps the poll from taking CPU the fleet needs."""
    left = list(items)
    deadline = time.monotonic() + BACKUP_TIMEOUT
    while left := [item for item, done in zip(left, finished(left), strict=True) if not done]:
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not finish in {BACKUP_TIMEOUT:.0f} s")
        time.sleep(POLL)
