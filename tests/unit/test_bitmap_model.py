"""Both bitmap keepers against a model: random freeze / mark / commit / rollback / eviction.

The model is plain sets: per drive the chunks its active bitmap must hold, its base, and
whether its next freeze may call its bits whole; per backup the chunks it froze. Each step
runs on the keeper and the model, then every drive's bits, meta, every transaction's state
and the freeze registry are compared. A backup freezes drives no open backup holds: the
per-VM lock keeps backups of one drive apart, so the keepers promise nothing finer there.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis import Redis

from tests.unit.builders import KEEPERS, track
from txnbackup.bitmap import FreezeItem, RedisBitmaps, TxnState
from txnbackup.errors import IntegrityError, InvalidInput, NotFound, TransactionStateError
from txnbackup.keys import Keys
from txnbackup.memory_bitmaps import InMemoryBitmaps

VM = "100"
CS = 8  # bytes per chunk: the keepers take any chunk size, and small ones make short ranges
SIZES = {"scsi0": 9 * CS + 3, "scsi1": 2 * CS}  # scsi0 ends in a short chunk
DRIVES = tuple(SIZES)
REPOSITORY = "model-repository"


def chunks_of(drive: str) -> int:
    return -(-SIZES[drive] // CS)


@dataclass
class DriveModel:
    tracked: bool = False  # it has a meta, so marks are recorded
    has_bits: bool = False  # its active bits exist (freeze frozen none when not)
    active: set[int] = field(default_factory=set)
    provable: bool = False  # its bits carry the meta's epoch: the next freeze says whole
    base: str = ""


@dataclass
class TxnModel:
    frozen: dict[str, set[int] | None]  # None: never existed, or evicted
    whole: dict[str, bool]  # each drive's freeze found its bits whole
    state: TxnState = TxnState.FROZEN


@dataclass(frozen=True)
class Backend:
    """A keeper and how to make it lose a key, as Redis's eviction would."""

    bitmaps: RedisBitmaps | InMemoryBitmaps
    evict: Callable[[str], None]
    evict_frozen: Callable[[str, str], None]
    close: Callable[[], None]


def memory_backend() -> Backend:
    b = InMemoryBitmaps()
    return Backend(b, lambda d: b.evict(VM, d), b.evict_frozen, lambda: None)


def redis_backend(client: Redis) -> Backend:
    keys = Keys(f"txnbackup-test:model:{uuid.uuid4().hex[:12]}:")

    def close() -> None:
        stale = list(client.scan_iter(match=keys.pattern(), count=1000))
        if stale:
            client.delete(*stale)

    def evict(drive: str) -> None:
        client.delete(keys.bitmap_bits(VM, drive))

    def evict_frozen(backup: str, drive: str) -> None:
        client.delete(keys.frozen_bits(backup, drive))

    return Backend(RedisBitmaps(client, keys, ttl=600), evict, evict_frozen, close)


class BitmapMachine(RuleBasedStateMachine):
    backups = Bundle("backups")

    def __init__(self) -> None:
        super().__init__()
        self.backend = self.make_backend()
        self.bitmaps = self.backend.bitmaps
        self.drives = {d: DriveModel() for d in DRIVES}
        self.txns: dict[str, TxnModel] = {}
        self.pending: set[str] = set()
        self.snapshots = 0

    def make_backend(self) -> Backend:
        raise NotImplementedError

    def teardown(self) -> None:
        self.backend.close()

    def open_drives(self) -> set[tuple[str, str]]:
        """(backup, drive) of every drive an open backup holds."""
        return {
            (b, d) for b, t in self.txns.items() if t.state is TxnState.FROZEN for d in t.frozen
        }

    def held(self) -> set[str]:
        return {d for _, d in self.open_drives()}

    @initialize(target=backups, tracked=st.sets(st.sampled_from(DRIVES)))
    def first_backup(self, tracked: set[str]) -> MultipleResults[str]:
        """Some drives start as after a first backup, with a committed empty bitmap."""
        if not tracked:
            return multiple()
        backup = self.freeze_drives(tracked)
        self.commit(backup)
        return multiple(backup)

    @precondition(lambda self: len(self.held()) < len(DRIVES))
    @rule(target=backups, drives=st.sets(st.sampled_from(DRIVES), min_size=1))
    def freeze(self, drives: set[str]) -> str:
        return self.freeze_drives((drives - self.held()) or set(DRIVES) - self.held())

    def freeze_drives(self, drives: set[str]) -> str:
        backup = str(uuid.uuid4())
        order = sorted(drives)
        frozen = self.bitmaps.freeze(backup, VM, [FreezeItem(d, SIZES[d], CS) for d in order])
        self.pending.add(backup)
        txn = TxnModel({}, {})
        for d in order:
            m, f = self.drives[d], frozen[d]
            assert (f.chunks, f.last_dirty) == (len(m.active), chunks_of(d) - 1 in m.active)
            assert f.whole is (m.tracked and m.has_bits and m.provable)
            txn.frozen[d] = set(m.active) if m.has_bits else None
            txn.whole[d] = f.whole
            m.tracked, m.has_bits, m.active, m.provable = True, True, set(), True
        self.txns[backup] = txn
        return backup

    @rule(backup=backups)
    def freeze_again_is_refused(self, backup: str) -> None:
        with pytest.raises(TransactionStateError):
            self.bitmaps.freeze(backup, VM, [FreezeItem(DRIVES[0], SIZES[DRIVES[0]], CS)])
        self.pending.add(backup)  # registered before the refusal: the reaper forgets it

    @rule(
        drive=st.sampled_from(DRIVES),
        offset=st.integers(0, max(SIZES.values()) + 2),
        length=st.integers(0, 3 * CS),
    )
    def mark(self, drive: str, offset: int, length: int) -> None:
        m = self.drives[drive]
        if m.tracked and offset + length > SIZES[drive]:
            with pytest.raises(InvalidInput, match="beyond the end"):
                self.bitmaps.mark_dirty(VM, drive, offset, length)
            return
        marked = self.bitmaps.mark_dirty(VM, drive, offset, length)
        if not m.tracked:
            assert marked == -1
            return
        touched = set(range(offset // CS, (offset + length - 1) // CS + 1)) if length else set()
        assert marked == len(touched)
        m.active |= touched
        m.has_bits = m.has_bits or bool(touched)

    @rule(drive=st.sampled_from(DRIVES), offset=st.integers(-3, 3), length=st.integers(-3, 3))
    def negative_marks_are_refused(self, drive: str, offset: int, length: int) -> None:
        if offset >= 0:
            length = -1 - abs(length)
        with pytest.raises(InvalidInput, match="must not be negative"):
            self.bitmaps.mark_dirty(VM, drive, offset, length)

    @rule(backup=backups)
    def commit(self, backup: str) -> None:
        txn = self.txns[backup]
        if txn.state is TxnState.ROLLED_BACK:
            with pytest.raises(TransactionStateError, match="rolledback"):
                self.bitmaps.commit(backup, "vm/100/never", REPOSITORY)
            return
        self.snapshots += 1
        snapshot = f"vm/{VM}/2026-01-01T00:00:{self.snapshots:02d}Z"
        assert self.bitmaps.commit(backup, snapshot, REPOSITORY) is (txn.state is TxnState.FROZEN)
        self.pending.discard(backup)
        if txn.state is TxnState.FROZEN:
            for d in txn.frozen:
                self.drives[d].base = snapshot
            txn.state = TxnState.COMMITTED

    @rule(backup=backups)
    def rollback(self, backup: str) -> None:
        txn = self.txns[backup]
        if txn.state is TxnState.COMMITTED:
            with pytest.raises(TransactionStateError, match="committed"):
                self.bitmaps.rollback(backup)
            return
        assert self.bitmaps.rollback(backup) is (txn.state is TxnState.FROZEN)
        self.pending.discard(backup)
        if txn.state is TxnState.FROZEN:
            for d, frozen in txn.frozen.items():
                m = self.drives[d]
                m.provable = m.provable and m.has_bits and txn.whole[d] and frozen is not None
                m.active |= frozen or set()
                m.has_bits = True
            txn.state = TxnState.ROLLED_BACK

    @rule()
    def an_unknown_backup_is_not_found(self) -> None:
        with pytest.raises(NotFound):
            self.bitmaps.commit(str(uuid.uuid4()), "vm/100/never", REPOSITORY)
        with pytest.raises(NotFound):
            self.bitmaps.rollback(str(uuid.uuid4()))

    @rule(backup=backups, drive=st.sampled_from(DRIVES))
    def read_frozen(self, backup: str, drive: str) -> None:
        txn = self.txns[backup]
        frozen = txn.frozen.get(drive) if txn.state is TxnState.FROZEN else None
        bits = self.bitmaps.frozen_bits(backup, drive, chunks_of(drive))
        if frozen is None:
            with pytest.raises(IntegrityError):
                list(bits)
        else:
            assert {i for i, bit in enumerate(bits) if bit} == frozen

    @rule(drive=st.sampled_from(DRIVES))
    def evict_active_bits(self, drive: str) -> None:
        self.backend.evict(drive)
        m = self.drives[drive]
        m.has_bits, m.active, m.provable = False, set(), False

    @precondition(lambda self: bool(self.held()))
    @rule(data=st.data())
    def evict_frozen_bits(self, data: st.DataObject) -> None:
        backup, drive = data.draw(st.sampled_from(sorted(self.open_drives())))
        self.backend.evict_frozen(backup, drive)
        self.txns[backup].frozen[drive] = None

    @rule(backup=backups)
    def forget(self, backup: str) -> None:
        self.bitmaps.forget(backup)
        self.pending.discard(backup)

    @invariant()
    def bits_and_metas_match_the_model(self) -> None:
        for d, m in self.drives.items():
            assert self.bitmaps.dirty_chunks(VM, d) == m.active
            meta = self.bitmaps.meta(VM, d)
            assert (meta is not None) is m.tracked
            if meta is not None:
                assert (meta.size, meta.chunk_size, meta.base) == (SIZES[d], CS, m.base)
                assert meta.repository == (REPOSITORY if m.base else "")

    @invariant()
    def transactions_match_the_model(self) -> None:
        for backup, txn in self.txns.items():
            assert self.bitmaps.state(backup) is txn.state
        assert set(self.bitmaps.pending_since(time.time() + 1)) == self.pending


def machine_for(make: Callable[[], Backend]) -> type[BitmapMachine]:
    class Machine(BitmapMachine):
        def make_backend(self) -> Backend:
            return make()

    return Machine


def test_the_in_memory_keeper_follows_the_model() -> None:
    run_state_machine_as_test(
        machine_for(memory_backend),
        settings=settings(max_examples=200, stateful_step_count=40, deadline=None),
    )


def test_the_redis_keeper_follows_the_model(redis_client: Redis) -> None:
    run_state_machine_as_test(
        machine_for(lambda: redis_backend(redis_client)),
        settings=settings(max_examples=50, stateful_step_count=40, deadline=None),
    )


@KEEPERS
def test_marks_racing_freezes_and_rollbacks_are_never_lost(bitmaps: RedisBitmaps) -> None:
    # Given a tracked drive of 800 chunks, four writers each marking its own 200 of them
    size = 800 * CS
    track(bitmaps, VM, "scsi0", size, CS)
    done = threading.Event()

    def write(first: int) -> None:
        for chunk in range(first, first + 200):
            bitmaps.mark_dirty(VM, "scsi0", chunk * CS, 1)

    def back_up_and_fail() -> None:
        while not done.is_set():
            backup = str(uuid.uuid4())
            bitmaps.freeze(backup, VM, [FreezeItem("scsi0", size, CS)])
            bitmaps.rollback(backup)

    # When backups freeze and roll back the bitmap all the while
    writers = [threading.Thread(target=write, args=(first,)) for first in range(0, 800, 200)]
    failing = threading.Thread(target=back_up_and_fail)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, also inside a keeper's method
    try:
        for t in [failing, *writers]:
            t.start()
        for t in writers:
            t.join()
        done.set()
        failing.join()
    finally:
        sys.setswitchinterval(interval)

    # Then every mark is in the active bitmap, and it still proves itself
    assert bitmaps.dirty_chunks(VM, "scsi0") == set(range(800))
    assert bitmaps.freeze(str(uuid.uuid4()), VM, [FreezeItem("scsi0", size, CS)])["scsi0"].whole
