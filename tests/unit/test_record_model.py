"""Both record stores against a model: random create / drive reports / cancel / claims / finish.

The model is one small dataclass per backup: its phase, each drive's state, the drive marked
running, the first error, the first cancel and the commit attempts. Each step runs on the
store and the model and the step's answer (won, previous phase, first or not) is compared;
after each step every backup's record, read back from the store, must equal its model.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from hypothesis.stateful import run_state_machine_as_test as run_machine
from redis import Redis

from txnbackup.action import BitmapAction
from txnbackup.cancel import Cancels
from txnbackup.keys import Keys
from txnbackup.memory_records import InMemoryCancels, InMemoryRecords
from txnbackup.record import DriveMark, DriveState, Field, Phase, Records
from txnbackup.record_store import RecordStore
from txnbackup.stats import DriveStats
from txnbackup.transaction import BackupPlan, DrivePlan

DRIVES = ("scsi0", "scsi1", "virtio2")
SIZE = 1 << 20
RUNS = settings(max_examples=50, stateful_step_count=20, deadline=None)


@dataclass
class BackupModel:
    drives: dict[str, DriveState]
    phase: Phase = Phase.RUNNING
    running: str = ""
    error: str = ""
    cancel: str | None = None
    cancel_reason: str = ""
    commit_attempts: int = 0
    transferred: dict[str, int] = field(default_factory=dict)

    def claim(self, to: Phase, frm: set[Phase], unless_cancelled: bool) -> tuple[bool, Phase]:
        previous = self.phase
        won = self.phase in frm and not (unless_cancelled and self.cancel is not None)
        if won:
            self.phase = to
        return won, previous

    def finish(self, final: Phase, cancel_reason: str) -> bool:
        if self.phase.final:
            return False
        stopped = DriveState.FAILED if final is Phase.ERROR else DriveState.CANCELLED
        ends = {DriveState.PENDING: DriveState.SKIPPED, DriveState.RUNNING: stopped}
        self.drives = {d: ends.get(s, s) for d, s in self.drives.items()}
        self.phase, self.running = final, ""
        self.cancel_reason = cancel_reason or self.cancel_reason
        return True


@dataclass(frozen=True)
class Backend:
    records: Records
    create: Callable[[BackupPlan], None]
    cancels: Cancels | InMemoryCancels
    close: Callable[[], None]


def memory_backend() -> Backend:
    store = InMemoryRecords()
    return Backend(store, lambda p: store.create(p, "/repo", []), store.cancels, lambda: None)


def redis_backend(client: Redis) -> Backend:
    keys = Keys(f"txnbackup-test:records:{uuid.uuid4().hex[:12]}:")
    store = RecordStore(client, keys, ttl=600)

    def close() -> None:
        stale = list(client.scan_iter(match=keys.pattern(), count=1000))
        if stale:
            client.delete(*stale)

    def create(plan: BackupPlan) -> None:
        store.create(plan, "/repo", ["t1"])

    return Backend(store, create, Cancels(client, keys, 600), close)


PHASES = st.sampled_from(Phase)
FINALS = st.sampled_from([Phase.DONE, Phase.ERROR, Phase.CANCELLED])
REASONS = st.sampled_from(["", "cancelled by user", "revoked", "terminated"])
DRIVE = st.sampled_from(DRIVES)


class RecordMachine(RuleBasedStateMachine):
    backups = Bundle("backups")

    def __init__(self) -> None:
        super().__init__()
        self.backend = self.make_backend()
        self.records = self.backend.records
        self.models: dict[str, BackupModel] = {}

    def make_backend(self) -> Backend:
        raise NotImplementedError

    def teardown(self) -> None:
        self.backend.close()

    @rule(target=backups, drives=st.integers(min_value=1, max_value=len(DRIVES)))
    def create(self, drives: int) -> str:
        backup = str(uuid.uuid4())
        plans = tuple(
            DrivePlan(d, f"/dev/{d}", "default", SIZE, BitmapAction.NEW, "no bitmap yet", SIZE)
            for d in DRIVES[:drives]
        )
        self.backend.create(BackupPlan(backup, "100", "2026-01-01T00:00:00Z", plans))
        self.models[backup] = BackupModel({d: DriveState.PENDING for d in DRIVES[:drives]})
        return backup

    def report(self, backup: str, drive: str, state: DriveState, mark: DriveMark, n: int) -> None:
        m = self.models[backup]
        drive = drive if drive in m.drives else next(iter(m.drives))
        stats = DriveStats(size=SIZE, dirty=SIZE, transferred=n)
        done = self.records.report_drive(backup, drive, state, stats, "w1", mark=mark)
        assert done == (not m.phase.final)
        if done:
            m.drives[drive], m.transferred[drive] = state, n
            if mark is DriveMark.START:
                m.running = drive
            elif mark is DriveMark.END and m.running == drive:
                m.running = ""

    @rule(backup=backups, drive=DRIVE)
    def drive_start(self, backup: str, drive: str) -> None:
        self.report(backup, drive, DriveState.RUNNING, DriveMark.START, 0)

    @rule(backup=backups, drive=DRIVE, n=st.integers(min_value=1, max_value=SIZE))
    def drive_progress(self, backup: str, drive: str, n: int) -> None:
        self.report(backup, drive, DriveState.RUNNING, DriveMark.KEEP, n)

    @rule(
        backup=backups,
        drive=DRIVE,
        state=st.sampled_from([DriveState.DONE, DriveState.FAILED, DriveState.CANCELLED]),
    )
    def drive_done(self, backup: str, drive: str, state: DriveState) -> None:
        self.report(backup, drive, state, DriveMark.END, SIZE)

    @rule(backup=backups, reason=REASONS.filter(bool))
    def cancel(self, backup: str, reason: str) -> None:
        m = self.models[backup]
        assert self.backend.cancels.request(backup, reason) == (m.cancel is None)
        m.cancel = m.cancel or reason

    @rule(backup=backups, message=st.sampled_from(["drive scsi0: boom", "commit: disk full"]))
    def record_error(self, backup: str, message: str) -> None:
        m = self.models[backup]
        assert self.records.record_error(backup, message) == (not m.error)
        m.error = m.error or message

    @rule(backup=backups, resume=st.booleans())
    def claim_commit(self, backup: str, resume: bool) -> None:
        frm = {Phase.RUNNING, Phase.COMMITTING} if resume else {Phase.RUNNING}
        claim = self.records.claim(
            backup, Phase.COMMITTING, frm=frm, unless_cancelled=True, count=Field.COMMIT_ATTEMPTS
        )
        m = self.models[backup]
        won, previous = m.claim(Phase.COMMITTING, frm, unless_cancelled=True)
        m.commit_attempts += won
        assert (claim.won, claim.previous) == (won, previous)
        assert (claim.record is not None) == won

    @rule(backup=backups, frm=st.sets(PHASES, min_size=1, max_size=2))
    def claim_rollback(self, backup: str, frm: set[Phase]) -> None:
        claim = self.records.claim(backup, Phase.ROLLING_BACK, frm=frm)
        won, previous = self.models[backup].claim(Phase.ROLLING_BACK, frm, False)
        assert (claim.won, claim.previous) == (won, previous)

    @rule(backup=backups)
    def abandon(self, backup: str) -> None:
        m = self.models[backup]
        if self.backend.cancels.reason(backup) is None:
            self.record_error(backup, "worker lost")
        claim = self.records.claim(backup, Phase.ROLLING_BACK, frm=[Phase.RUNNING])
        assert (claim.won, claim.previous) == m.claim(Phase.ROLLING_BACK, {Phase.RUNNING}, False)

    @rule(backup=backups, final=FINALS, reason=REASONS)
    def finish(self, backup: str, final: Phase, reason: str) -> None:
        record = self.records.load(backup)
        ended = self.records.finish(record, final, reason)
        assert ended == self.models[backup].finish(final, reason)

    @invariant()
    def records_follow_the_model(self) -> None:
        for backup, m in self.models.items():
            r = self.records.load(backup)
            assert r.phase is m.phase, backup
            assert {d: r.drive(d).state for d in m.drives} == m.drives
            assert {d: r.drive(d).stats.transferred for d in m.transferred} == m.transferred
            assert (r.running, r.error, r.cancel_reason) == (m.running, m.error, m.cancel_reason)
            assert r.commit_attempts == m.commit_attempts
            assert self.backend.cancels.reason(backup) == m.cancel
            assert self.records.phase(backup) is m.phase


def machine_for(make: Callable[[], Backend]) -> type[RecordMachine]:
    return type("Machine", (RecordMachine,), {"make_backend": lambda self: make()})


def test_the_in_memory_store_follows_the_model() -> None:
    run_machine(machine_for(memory_backend), settings=RUNS)


def test_the_redis_store_follows_the_model(redis_client: Redis) -> None:
    run_machine(machine_for(lambda: redis_backend(redis_client)), settings=RUNS)
