"""The producer API: submit a backup, watch it, cancel it. The CLI is a shell over this."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import ResponseError

from tasks.canvas import TaskIds, build
from tasks.celeryapp import make_app
from tasks.names import ROLLBACK
from tasks.queues import finishing_queue, node_queue
from txnbackup import transaction
from txnbackup.drive import Drive, drive_size
from txnbackup.errors import (
    ConflictError,
    EndNotConfirmed,
    IntegrityError,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
)
from txnbackup.names import (
    check_backup_id,
    check_blob_name,
    check_node,
    check_vmid,
    new_backup_id,
)
from txnbackup.qemu.vm import QemuVM
from txnbackup.redisconn import redacted, unavailable_as_error
from txnbackup.repository import Repository
from txnbackup.runtime import Runtime
from txnbackup.settings import Settings
from txnbackup.snapshot import SnapshotId
from txnbackup.status import BackupStatus, from_record
from txnbackup.verify import VerifyReport, verify_snapshot

StatusSink = Callable[[BackupStatus], None]


@dataclass
class Producer:
    rt: Runtime
    app: Celery

    @classmethod
    def from_settings(cls, settings: Settings) -> Producer:
        return cls(Runtime.from_settings(settings), make_app(settings))

    def submit(
        self,
        vmid: str,
        drives: Sequence[Drive],
        *,
        repository: Path | None = None,
        full: bool = False,
        speed_limit: int | None = None,
        config: Mapping[str, Path] | None = None,
        qmp: QemuVM | None = None,
        queue_timeout: int | None = None,
    ) -> str:
        """Validate, lock the VM, freeze its bitmaps, dispatch; return the backup uuid.

        ``queue_timeout``: seconds a drive may wait for a worker of its node before the
        backup fails (None: the reapers' TXNBACKUP_QUEUE_TIMEOUT).

        With ``qmp`` the drives are a running QEMU VM's (``qemu:NODE-NAME`` paths, or none
        to back up every drive QEMU has): the freeze is the first task, on the VM's node.

        ServiceUnavailable when Redis stops answering for longer than a client rides out;
        what the submit had done by then expires (the lock) or the reaper returns (bits).
        """
        if queue_timeout is not None and queue_timeout <= 0:
            raise InvalidInput(f"timeout {queue_timeout} must be a positive number of seconds")
        with unavailable_as_error(self.rt.settings.redis_url):
            if qmp is not None:
                return self._submit_qemu(
                    vmid, qmp, drives, repository, full, speed_limit, config, queue_timeout
                )
            return self._submit(vmid, drives, repository, full, speed_limit, config, queue_timeout)

    def _submit_qemu(
        self,
        vmid: str,
        vm: QemuVM,
        drives: Sequence[Drive],
        repository: Path | None,
        full: bool,
        speed_limit: int | None,
        config: Mapping[str, Path] | None,
        queue_timeout: int | None,
    ) -> str:
        check_vmid(vmid)
        repo = self._repository(repository)
        blobs = _read_blobs(config or {})
        _check_speed_limit(speed_limit)
        # Imported here: the QMP client is start-up time every `backup --wait` would pay.
        from txnbackup.qemu.begin import prepare_qemu  # noqa: PLC0415

        plan = self._plan_locked(
            vmid, lambda backup: prepare_qemu(repo, vmid, vm, drives, full=full, backup=backup)
        )
        self._dispatch(repo, plan, blobs, speed_limit, queue_timeout)
        return plan.backup

    def _submit(
        self,
        vmid: str,
        drives: Sequence[Drive],
        repository: Path | None,
        full: bool,
        speed_limit: int | None,
        config: Mapping[str, Path] | None,
        queue_timeout: int | None,
    ) -> str:
        check_vmid(vmid)
        transaction.check_drives(drives)
        for d in drives:
            check_node(d.node)
        repo = self._repository(repository)
        blobs = _read_blobs(config or {})
        sizes = {d.name: drive_size(d.name, d.path) for d in drives}
        _check_speed_limit(speed_limit)
        plan = self._plan_locked(
            vmid,
            lambda backup: transaction.prepare(
                repo, self.rt.bitmaps, vmid, drives, full=full, sizes=sizes, backup=backup
            ),
        )
        self._dispatch(repo, plan, blobs, speed_limit, queue_timeout)
        return plan.backup

    def _plan_locked(
        self, vmid: str, make_plan: Callable[[str], transaction.BackupPlan]
    ) -> transaction.BackupPlan:
        """Plan a new backup under the VM's lock; a plan that fails releases the lock."""
        backup = new_backup_id()
        self.rt.locks.lock(vmid, backup)
        try:
            return make_plan(backup)
        except BaseException:
            self.rt.locks.unlock(vmid, backup)
            raise

    def _dispatch(
        self,
        repo: Repository,
        plan: transaction.BackupPlan,
        blobs: Mapping[str, bytes],
        speed_limit: int | None,
        queue_timeout: int | None,
    ) -> None:
        ids = TaskIds.new(len(plan.drives), begin=plan.qemu is not None)
        repository = str(repo.path.resolve())
        try:
            self.rt.records.create(plan, repository, ids.all, speed_limit, blobs, queue_timeout)
            build(plan, ids, self.app).apply_async()
            _unsubscribe(self.app, ids.all)
        except BaseException as exc:
            transaction.rollback(repo, self.rt.bitmaps, plan, self.rt.settings.qemu)
            self.rt.records.delete(plan.backup)
            self.rt.locks.unlock(plan.vmid, plan.backup)
            if isinstance(exc, OperationalError):
                url = redacted(self.rt.settings.broker_url)
                raise ServiceUnavailable(f"broker at {url}", str(exc)) from None
            raise

    def _repository(self, path: Path | None) -> Repository:
        path = path or self.rt.settings.repository
        if path is None:
            raise InvalidInput("no repository: pass --repo or set TXNBACKUP_REPOSITORY")
        repo = Repository.open(path, self.rt.settings.key_access())
        repo.unlock()  # a wrong or missing key is refused before the VM is locked
        return repo

    def verify(self, backup: str, repository: Path | None = None) -> VerifyReport:
        """Verify the snapshot a done backup published (txnbackup.verify: every chunk it
        refers to is read back and checked) in ``repository`` (None: the configured one)."""
        status = self.status(backup)
        if status.status != "done" or not status.snapshot:
            raise ConflictError(f"backup {backup} published no snapshot: {status.status}")
        snapshot = SnapshotId.parse(status.snapshot)
        if snapshot.vmid != status.vmid:
            raise InvalidInput(f"backup {backup} names {snapshot}, not a snapshot of its VM")
        return verify_snapshot(self._repository(repository), snapshot)

    def confirm(self, status: BackupStatus) -> None:
        """A ``done`` read from Redis is believed only once the repository agrees: the snapshot
        it names is there, of this VM and written by this backup. The phase is a live field
        anyone able to write Redis could set (docs/security.md); the manifest is not."""
        record = self.rt.records.load(check_backup_id(status.uuid))
        try:
            snapshot = SnapshotId.parse(status.snapshot)
            manifest = self._repository(Path(record.repository)).manifest(snapshot)
        except (InvalidInput, NotFound, IntegrityError) as exc:
            raise EndNotConfirmed(status.uuid, status.snapshot or "(none)", str(exc)) from None
        if (manifest.backup, manifest.vmid) != (status.uuid, status.vmid):
            found = f"that snapshot is backup {manifest.backup} of VM {manifest.vmid}"
            raise EndNotConfirmed(status.uuid, status.snapshot, found)

    def status(self, backup: str) -> BackupStatus:
        return from_record(self.rt.records.load(check_backup_id(backup)))

    def cancel(self, backup: str, reason: str = "cancelled by user") -> BackupStatus:
        """Cancel the whole backup: flag it, revoke its queued tasks, send the rollback."""
        status = self.status(backup)
        if not status.active:
            return status
        self.rt.cancels.request(backup, reason)
        # Queued drives are discarded by the worker that receives them; the running one
        # sees the cancel between chunks and stops (revoking it too would add nothing).
        pending = [d.task_id for d in status.drives if d.state == "pending" and d.task_id]
        if pending:
            self.app.control.revoke(pending)
        self.send_rollback(backup)
        return self.status(backup)

    def send_rollback(self, backup: str) -> None:
        """Queue the backup's rollback (harmless if it ended or another is queued); a QEMU
        backup's goes to the VM's node, the only one that reaches QEMU."""
        record = self.rt.records.load_or_none(backup)
        queue = finishing_queue(record.plan if record else None)
        self.app.send_task(ROLLBACK, (backup,), queue=queue)

    def terminate(self, task_id: str) -> None:
        """Stop a task wherever it runs (the reaper's answer to a stalled drive)."""
        self.app.control.revoke(task_id, terminate=True)

    def wait(
        self,
        backup: str,
        timeout: float | None = None,
        interval: float = 0.2,
        on_update: StatusSink | None = None,
    ) -> BackupStatus:
        """The status once the backup ended (or at ``timeout``), read every ``interval`` s
        for ``on_update``; the end itself is noticed at once, from its pub/sub message."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ended_channel(backup) as ended:
            while True:
                status = self.status(backup)
                if on_update:
                    on_update(status)
                if not status.active:
                    if status.status == "done":
                        self.confirm(status)
                    return status
                left = interval if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return status
                ended(min(interval, left))

    @contextlib.contextmanager
    def _ended_channel(self, backup: str) -> Iterator[Callable[[float], None]]:
        """A wait of at most the given seconds that returns when the backup's end is published.

        Subscribed before the first status read: an end published after that read wakes the
        wait, one published before it is seen by that read.
        """
        pubsub = self.rt.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            try:
                pubsub.subscribe(self.rt.records.keys.ended(check_backup_id(backup)))
            except ResponseError:  # a Redis user not allowed to subscribe: plain polling
                yield time.sleep
                return

            def wait(seconds: float) -> None:
                until = time.monotonic() + seconds
                while (left := until - time.monotonic()) > 0:
                    if pubsub.get_message(timeout=left) is not None:
                        return

            yield wait
        finally:
            pubsub.close()

    def nodes_without_worker(self, nodes: Sequence[str], timeout: float = 1.0) -> list[str]:
        """The nodes whose queue no live worker consumes.

        The workers' own announcements (txnbackup.presence) answer in one round trip; only a
        node they do not cover is confirmed by asking every worker (``inspect``, which takes
        ``timeout``), so a worker that cannot announce itself is never reported missing.
        """
        missing = self.rt.presence().unserved(nodes)
        if not missing:
            return []
        replies = self.app.control.inspect(timeout=timeout).active_queues() or {}
        served = {q["name"] for queues in replies.values() for q in queues}
        return [n for n in missing if node_queue(n) not in served]

    def recent(self, limit: int = 20) -> list[BackupStatus]:
        found = []
        for backup in self.rt.catalog.recent(limit):
            try:
                found.append(self.status(backup))
            except NotFound:
                continue
        return found


def _unsubscribe(app: Celery, task_ids: Sequence[str]) -> None:
    """Stop the result backend from listening for this backup's task results.

    The Redis result backend subscribes to the channel of every task sent and unsubscribes when
    the AsyncResult is collected; the chord's results are collected only at interpreter exit,
    where unsubscribing fails noisily. Status comes from the backup record, not from results.
    """
    consumer = getattr(app.backend, "result_consumer", None)
    if consumer is not None:
        for task_id in task_ids:
            consumer.cancel_for(task_id)


def _read_blobs(config: Mapping[str, Path]) -> dict[str, bytes]:
    blobs = {}
    for name, path in config.items():
        check_blob_name(name)
        try:
            blobs[name] = path.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"config file {path}: {exc.strerror or exc}") from None
    return blobs


def _check_speed_limit(speed_limit: int | None) -> None:
    if speed_limit is not None and speed_limit <= 0:
        raise InvalidInput(f"speed limit {speed_limit} must be positive")
