"""Prune and forget: remove snapshots, one VM at a time, under that VM's backup lock.

Holding the VM lock (the one every backup holds from submit to its end, txnbackup.record)
means no backup of the VM runs while its snapshots are removed: a running backup's base
cannot vanish under it, and a backup submitted meanwhile is refused as "already running"
until the prune of that VM ends (a moment; the lock expires by itself if prune dies). A VM
whose backup is running is not pruned (``PruneBlocked``, "backup running: <uuid>"). The lock
of a prune lasts PRUNE_LOCK_TTL seconds, so one that dies blocks the VM's backups that long
at most; before each removal prune checks that it still holds the lock.

A snapshot that is the base of a dirty bitmap is removed like any other, and the report
names the bitmaps: their next backup finds the base gone, decides ``invalid`` and reads
everything (txnbackup.action). Nothing is guessed: bases are read under the lock.

Protected snapshots are never removed. Removal itself is crash-safe (txnbackup.removal);
interrupted removals are finished first. Chunks are left to ``txnbackup gc``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from redis import Redis

from txnbackup.bases import bitmap_bases
from txnbackup.errors import BackupRunning, PruneBlocked, SnapshotNotFound, SnapshotProtected
from txnbackup.failpoints import failpoint
from txnbackup.keys import Keys
from txnbackup.manifest import MANIFEST_NAME
from txnbackup.names import check_vmid, new_backup_id
from txnbackup.protection import is_protected
from txnbackup.redisconn import connect
from txnbackup.removal import finish_removals, remove_snapshot
from txnbackup.repository import Repository
from txnbackup.retention import PROTECTED, KeepPolicy, apply_policy
from txnbackup.settings import Settings
from txnbackup.snapshot import SnapshotId
from txnbackup.vmlock import VmLocks

log = logging.getLogger(__name__)

PRUNE_LOCK_TTL = 60  # seconds the VM lock of a prune that died stays (blocking that VM's backups)


@dataclass(frozen=True)
class Outcome:
    snapshot: SnapshotId
    reasons: tuple[str, ...]  # the rules that keep it; empty: removed (or would be)
    bitmaps: tuple[str, ...] = ()  # "<vmid>/<drive>" whose base it is: invalid once removed

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


@dataclass
class PruneReport:
    dry_run: bool
    outcomes: list[Outcome] = field(default_factory=list)
    blocked: list[PruneBlocked] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # interrupted removals completed

    @property
    def removed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.keep]


class Pruner:
    def __init__(self, repo: Repository, redis: Redis, keys: Keys, locks: VmLocks) -> None:
        self.repo = repo
        self.redis = redis
        self.keys = keys
        self.locks = locks
        self._holder = ""  # our id in the VM lock we hold

    @classmethod
    def from_settings(cls, repo: Repository, settings: Settings) -> Pruner:
        redis = connect(settings.redis_url)
        keys = Keys(settings.key_prefix)
        return cls(repo, redis, keys, VmLocks(redis, keys))

    def prune(
        self, policy: KeepPolicy, vmid: str | None = None, *, dry_run: bool = False
    ) -> PruneReport:
        """Apply the policy to each VM (or the one given); a busy VM is skipped and listed."""
        report = PruneReport(dry_run)
        apply_policy(policy, [])  # refuses an empty policy before anything is touched
        vmids = [check_vmid(vmid)] if vmid else self.repo.vmids()
        for v in vmids:
            try:
                with self._locked(v, dry_run):
                    report.finished += [] if dry_run else finish_removals(self.repo, v)
                    self._prune_vm(policy, v, report)
            except PruneBlocked as exc:
                report.blocked.append(exc)
        return report

    def forget(self, snapshots: Sequence[SnapshotId], *, dry_run: bool = False) -> PruneReport:
        """Remove exactly these snapshots; all of them exist and none is protected, or
        nothing is removed."""
        for snapshot in snapshots:
            if not (self.repo.snapshot_dir(snapshot) / MANIFEST_NAME).exists():
                raise SnapshotNotFound(str(snapshot))
            if is_protected(self.repo, snapshot):
                raise SnapshotProtected(str(snapshot))
        report = PruneReport(dry_run)
        for vmid in sorted({s.vmid for s in snapshots}):
            with self._locked(vmid, dry_run):
                report.finished += [] if dry_run else finish_removals(self.repo, vmid)
                bases = self._bases(vmid)
                for snapshot in sorted({s for s in snapshots if s.vmid == vmid}, reverse=True):
                    report.outcomes.append(self._remove(snapshot, bases, dry_run))
        return report

    def _prune_vm(self, policy: KeepPolicy, vmid: str, report: PruneReport) -> None:
        snapshots = self.repo.snapshots(vmid)
        protected = [s for s in snapshots if is_protected(self.repo, s)]
        bases = self._bases(vmid)
        for verdict in apply_policy(policy, snapshots, protected):
            if verdict.keep:
                report.outcomes.append(Outcome(verdict.snapshot, verdict.reasons))
            else:
                report.outcomes.append(self._remove(verdict.snapshot, bases, report.dry_run))

    def _remove(self, snapshot: SnapshotId, bases: dict[str, list[str]], dry_run: bool) -> Outcome:
        bitmaps = tuple(bases.get(str(snapshot), ()))
        if not dry_run:
            self._still_locked(snapshot.vmid)
            try:
                remove_snapshot(self.repo, snapshot)
            except SnapshotProtected:
                return Outcome(snapshot, (PROTECTED,))
            if bitmaps:
                log.warning(
                    "removed %s, the base of the dirty bitmaps of %s: next backup reads all",
                    snapshot,
                    ", ".join(bitmaps),
                )
        return Outcome(snapshot, (), bitmaps)

    def _still_locked(self, vmid: str) -> None:
        holder = self.locks.holder(vmid)
        if holder != self._holder:
            raise PruneBlocked(holder or "(lock expired)", vmid)

    def _bases(self, vmid: str) -> dict[str, list[str]]:
        return bitmap_bases(self.redis, self.keys, self.repo.id, vmid)

    @contextlib.contextmanager
    def _locked(self, vmid: str, dry_run: bool) -> Iterator[None]:
        """Hold the VM's backup lock (a dry run only checks that no backup holds it)."""
        if dry_run:
            holder = self.locks.holder(vmid)
            if holder:
                raise PruneBlocked(holder, vmid)
            yield
            return
        me = self._holder = new_backup_id()
        try:
            self.locks.lock(vmid, me)
        except BackupRunning as exc:
            raise PruneBlocked(exc.args[0], vmid) from None
        try:
            self.redis.expire(self.keys.lock(vmid), PRUNE_LOCK_TTL)
            failpoint("prune.locked", vmid)
            yield
        finally:
            self.locks.unlock(vmid, me)
