"""Dirty bitmaps in memory: the bitmap keeper of txnbackup.bitmap without Redis.

A first-class keeper for one process (domain tests, a single-host tool): the same transaction
states, errors and epochs as ``RedisBitmaps``, each step atomic under one lock where Redis runs
one Lua script. Each structure below stands for one Redis key, so that losing one (``evict``,
``evict_frozen``, what Redis's eviction does to a key) has the same consequences: a bitmap that
lost bits cannot prove itself whole. Ended transactions are kept for the life of the object
(Redis keeps them for its TTL).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from txnbackup.bitmap import BitmapMeta, FreezeItem, Frozen, TxnState, new_epoch
from txnbackup.constants import BITMAP_READ_BLOCK
from txnbackup.errors import IntegrityError, InvalidInput, NotFound, TransactionStateError

_ZERO_HEADER = "\0" * 16  # what a mark writes before the bits when their key was lost
_NO_EPOCH = "-" * 16  # a header no epoch equals: the bits cannot prove themselves


@dataclass(frozen=True)
class _Bits:
    header: str  # the epoch the bits carry
    chunks: frozenset[int] = frozenset()


@dataclass(frozen=True)
class _Item:
    drive: str
    size: int
    chunk_size: int
    epoch: str  # of the fresh active bits
    prior: str  # the meta's epoch at freeze when the frozen bits carried it, else ""


@dataclass(frozen=True)
class _Txn:
    vmid: str
    items: tuple[_Item, ...]
    state: TxnState = TxnState.FROZEN
    snapshot: str = ""


@dataclass
class _Store:
    meta: dict[tuple[str, str], BitmapMeta] = field(default_factory=dict)
    bits: dict[tuple[str, str], _Bits] = field(default_factory=dict)
    frozen: dict[tuple[str, str], _Bits] = field(default_factory=dict)  # (backup, drive)
    txns: dict[str, _Txn] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)  # backup -> freeze time


class InMemoryBitmaps:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._s = _Store()

    def meta(self, vmid: str, drive: str) -> BitmapMeta | None:
        with self._lock:
            return self._s.meta.get((vmid, drive))

    def mark_dirty(self, vmid: str, drive: str, offset: int, length: int) -> int:
        """Mark every chunk the byte range touches; -1 when the drive has no bitmap yet."""
        if offset < 0 or length < 0:
            raise InvalidInput(f"offset {offset} and length {length} must not be negative")
        with self._lock:
            meta = self._s.meta.get((vmid, drive))
            if meta is None:
                return -1
            if offset + length > meta.size:
                raise InvalidInput(
                    f"range {offset}+{length} is beyond the end of drive {vmid}/{drive} "
                    f"({meta.size} bytes)"
                )
            if length == 0:
                return 0
            first, last = offset // meta.chunk_size, (offset + length - 1) // meta.chunk_size
            bits = self._s.bits.get((vmid, drive), _Bits(_ZERO_HEADER))
            self._s.bits[vmid, drive] = replace(
                bits, chunks=bits.chunks.union(range(first, last + 1))
            )
            return last - first + 1

    def freeze(self, backup: str, vmid: str, items: Sequence[FreezeItem]) -> dict[str, Frozen]:
        """Freeze all drives' bitmaps in one step; return what each drive's backup must read."""
        with self._lock:
            self._s.pending[backup] = time.time()
            if backup in self._s.txns:
                raise TransactionStateError(backup, "frozen", "freeze it again")
            frozen, planned = {}, []
            for item in items:
                result, prior = self._freeze_drive(backup, vmid, item, new_epoch())
                frozen[item.drive] = result
                planned.append(_Item(item.drive, item.size, item.chunk_size, result.epoch, prior))
            self._s.txns[backup] = _Txn(vmid, tuple(planned))
            return frozen

    def _freeze_drive(
        self, backup: str, vmid: str, item: FreezeItem, epoch: str
    ) -> tuple[Frozen, str]:
        key = (vmid, item.drive)
        old = self._s.meta.get(key)
        old_epoch = old.epoch if old else ""
        bits = self._s.bits.pop(key, None)
        whole = bits is not None and old_epoch != "" and bits.header == old_epoch
        if bits is not None:
            self._s.frozen[backup, item.drive] = bits
        held = self._s.frozen.get((backup, item.drive), _Bits(""))
        self._s.bits[key] = _Bits(epoch)
        base, repository = (old.base, old.repository) if old else ("", "")
        self._s.meta[key] = BitmapMeta(item.size, item.chunk_size, base, repository, epoch)
        nchunks = -(-item.size // item.chunk_size)
        last = nchunks > 0 and nchunks - 1 in held.chunks
        frozen = Frozen(len(held.chunks), last, whole, old_epoch, epoch)
        return frozen, old_epoch if whole else ""

    def frozen_bits(self, backup: str, drive: str, count: int) -> Iterator[bool]:
        """The frozen bits, block by block; IntegrityError if they are lost meanwhile."""
        step = BITMAP_READ_BLOCK * 8
        for start in range(0, count, step):
            with self._lock:
                bits = self._s.frozen.get((backup, drive))
            if bits is None:
                raise IntegrityError(f"frozen dirty bits of backup {backup} drive {drive} vanished")
            for chunk in range(start, min(start + step, count)):
                yield chunk in bits.chunks

    def commit(self, backup: str, snapshot: str, repository: str) -> bool:
        """Drop the frozen bits and move every drive's base and epoch to the new snapshot."""
        with self._lock:
            txn = self._txn(backup, "commit", TxnState.COMMITTED)
            if txn is None:
                return False
            for item in txn.items:
                self._s.meta[txn.vmid, item.drive] = BitmapMeta(
                    item.size, item.chunk_size, snapshot, repository, item.epoch
                )
                self._s.frozen.pop((backup, item.drive), None)
            self._s.txns[backup] = replace(txn, state=TxnState.COMMITTED, snapshot=snapshot)
            self._s.pending.pop(backup, None)
            return True

    def rollback(self, backup: str) -> bool:
        """OR the frozen bits back into the active bitmaps; bases stay as they were."""
        with self._lock:
            txn = self._txn(backup, "roll back", TxnState.ROLLED_BACK)
            if txn is None:
                return False
            for item in txn.items:
                self._give_back(backup, txn.vmid, item)
            self._s.txns[backup] = replace(txn, state=TxnState.ROLLED_BACK)
            self._s.pending.pop(backup, None)
            return True

    def _give_back(self, backup: str, vmid: str, item: _Item) -> None:
        # The merged bits keep the old epoch only if neither part was lost meanwhile.
        key = (vmid, item.drive)
        active = self._s.bits.get(key)
        frozen = self._s.frozen.pop((backup, item.drive), None)
        whole = (
            item.prior != ""
            and active is not None
            and active.header == item.epoch
            and frozen is not None
            and frozen.header == item.prior
        )
        chunks = (active.chunks if active else frozenset()) | (frozen.chunks if frozen else set())
        self._s.bits[key] = _Bits(item.prior if whole else _NO_EPOCH, chunks)
        meta = self._s.meta.get(key)
        if meta is not None:
            self._s.meta[key] = replace(meta, epoch=item.prior if whole else "")

    def _txn(self, backup: str, verb: str, done: TxnState) -> _Txn | None:
        """The frozen transaction to end; None when it already ended as ``done``."""
        txn = self._s.txns.get(backup)
        if txn is None:
            raise NotFound(f"bitmap transaction of backup {backup}")
        if txn.state is done:
            self._s.pending.pop(backup, None)
            return None
        if txn.state is not TxnState.FROZEN:
            raise TransactionStateError(backup, txn.state.value, verb)
        return txn

    def pending_since(self, before: float) -> list[str]:
        """Backups registered for a freeze before ``before``, not committed or rolled back."""
        with self._lock:
            return [
                b for b, t in sorted(self._s.pending.items(), key=lambda p: p[1]) if t <= before
            ]

    def forget(self, backup: str) -> None:
        """Drop a registration whose freeze never happened (no transaction exists)."""
        with self._lock:
            self._s.pending.pop(backup, None)

    def state(self, backup: str) -> TxnState | None:
        with self._lock:
            txn = self._s.txns.get(backup)
            return txn.state if txn else None

    def dirty_chunks(self, vmid: str, drive: str) -> set[int]:
        """The active bitmap's set chunks (for reports and tests)."""
        with self._lock:
            bits = self._s.bits.get((vmid, drive))
            return set(bits.chunks) if bits else set()

    def evict(self, vmid: str, drive: str) -> None:
        """Lose the drive's active bits, as Redis's eviction of their key does (tests)."""
        with self._lock:
            self._s.bits.pop((vmid, drive), None)

    def evict_frozen(self, backup: str, drive: str) -> None:
        """Lose the bits a backup froze for the drive, as Redis's eviction does (tests)."""
        with self._lock:
            self._s.frozen.pop((backup, drive), None)
