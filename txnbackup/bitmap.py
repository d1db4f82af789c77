r"""Dirty bitmaps in Redis: one bit per chunk per drive, relative to a base snapshot.

The transaction of one backup over its bitmaps has three states, kept in one Redis hash:

    (none) --freeze--> frozen --commit--> committed
                              \--rollback--> rolledback

Invariant: ``freeze``, ``commit`` and ``rollback`` are each one Lua script, so each is atomic
for all drives of the backup, and ``mark_dirty`` never interleaves with them. ``commit`` and
``rollback`` are idempotent (repeating the one that ran is a no-op returning False) and
mutually exclusive (after one has run the other raises TransactionStateError). No bit is ever
lost: freeze moves the active bits to the frozen key, later writes go to a fresh active bitmap,
commit drops the frozen bits only together with moving the base to the new snapshot, and
rollback ORs the frozen bits back into the active bitmap.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from redis import Redis
from redis.exceptions import ResponseError

from txnbackup.constants import BITMAP_READ_BLOCK
from txnbackup.errors import InvalidInput, NotFound, TransactionStateError
from txnbackup.keys import Keys

_MARK = """
local size = redis.call('HGET', KEYS[1], 'size')
if not size then return -1 end
size = tonumber(size)
local cs = tonumber(redis.call('HGET', KEYS[1], 'chunk_size'))
local off, len = tonumber(ARGV[1]), tonumber(ARGV[2])
if off + len > size then return redis.error_reply('RANGE ' .. size) end
if len == 0 then return 0 end
local first, last = math.floor(off / cs), math.floor((off + len - 1) / cs)
local b = first
while b <= last and b % 8 ~= 0 do redis.call('SETBIT', KEYS[2], b, 1); b = b + 1 end
local bytes = math.floor((last - b + 1) / 8)
if bytes > 0 then
  redis.call('SETRANGE', KEYS[2], b / 8, string.rep('\\255', bytes))
  b = b + bytes * 8
end
while b <= last do redis.call('SETBIT', KEYS[2], b, 1); b = b + 1 end
return last - first + 1
"""

_FREEZE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('TXN exists') end
local items = cjson.decode(ARGV[2])
local counts = {}
for i, item in ipairs(items) do
  local meta, bits, frozen = KEYS[3*i-1], KEYS[3*i], KEYS[3*i+1]
  if redis.call('EXISTS', bits) == 1 then redis.call('RENAME', bits, frozen) end
  redis.call('HSET', meta, 'size', item.size, 'chunk_size', item.chunk_size)
  redis.call('HSETNX', meta, 'base', '')
  redis.call('HSETNX', meta, 'repository', '')
  local nchunks = math.ceil(tonumber(item.size) / tonumber(item.chunk_size))
  local last = 0
  if nchunks > 0 then last = redis.call('GETBIT', frozen, nchunks - 1) end
  counts[i] = {redis.call('BITCOUNT', frozen), last}
end
redis.call('HSET', KEYS[1], 'state', 'frozen', 'vmid', ARGV[1], 'drives', ARGV[2])
return counts
"""

_COMMIT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return redis.error_reply('TXN missing') end
if state == 'committed' then return 0 end
if state ~= 'frozen' then return redis.error_reply('TXN ' .. state) end
for i = 2, #KEYS, 2 do
  redis.call('HSET', KEYS[i], 'base', ARGV[1], 'repository', ARGV[2])
  redis.call('DEL', KEYS[i+1])
end
redis.call('HSET', KEYS[1], 'state', 'committed', 'snapshot', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

_ROLLBACK = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return redis.error_reply('TXN missing') end
if state == 'rolledback' then return 0 end
if state ~= 'frozen' then return redis.error_reply('TXN ' .. state) end
for i = 2, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i+1]) == 1 then
    redis.call('BITOP', 'OR', KEYS[i], KEYS[i], KEYS[i+1])
    redis.call('DEL', KEYS[i+1])
  end
end
redis.call('HSET', KEYS[1], 'state', 'rolledback')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


class TxnState(StrEnum):
    FROZEN = "frozen"
    COMMITTED = "committed"
    ROLLED_BACK = "rolledback"


@dataclass(frozen=True)
class BitmapMeta:
    size: int
    chunk_size: int
    base: str
    repository: str


@dataclass(frozen=True)
class FreezeItem:
    drive: str
    size: int
    chunk_size: int


@dataclass(frozen=True)
class Frozen:
    chunks: int  # chunks marked in the frozen bitmap
    last_dirty: bool  # whether the (possibly short) last chunk is among them


class BitmapBackend(Protocol):
    """The bitmap seam: Redis today; QEMU's own persistent bitmaps (over QMP/NBD) later."""

    def meta(self, vmid: str, drive: str) -> BitmapMeta | None: ...

    def mark_dirty(self, vmid: str, drive: str, offset: int, length: int) -> int: ...

    def freeze(self, backup: str, vmid: str, items: Sequence[FreezeItem]) -> dict[str, Frozen]: ...

    def frozen_bits(self, backup: str, drive: str, count: int) -> Iterator[bool]: ...

    def commit(self, backup: str, snapshot: str, repository: str) -> bool: ...

    def rollback(self, backup: str) -> bool: ...


class RedisBitmaps:
    def __init__(self, redis: Redis, keys: Keys, ttl: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl = ttl
        self._mark = redis.register_script(_MARK)
        self._freeze = redis.register_script(_FREEZE)
        self._commit = redis.register_script(_COMMIT)
        self._rollback = redis.register_script(_ROLLBACK)

    def meta(self, vmid: str, drive: str) -> BitmapMeta | None:
        raw = self.redis.hgetall(self.keys.bitmap_meta(vmid, drive))
        if not raw:
            return None
        field = {_text(k): _text(v) for k, v in raw.items()}
        return BitmapMeta(
            int(field["size"]), int(field["chunk_size"]), field["base"], field["repository"]
        )

    def mark_dirty(self, vmid: str, drive: str, offset: int, length: int) -> int:
        """Mark every chunk the byte range touches; -1 when the drive has no bitmap yet."""
        if offset < 0 or length < 0:
            raise InvalidInput(f"offset {offset} and length {length} must not be negative")
        keys = [self.keys.bitmap_meta(vmid, drive), self.keys.bitmap_bits(vmid, drive)]
        try:
            return int(self._mark(keys=keys, args=[offset, length]))
        except ResponseError as exc:
            size = str(exc).split()[-1]
            raise InvalidInput(
                f"range {offset}+{length} is beyond the end of drive {vmid}/{drive} ({size} bytes)"
            ) from None

    def freeze(self, backup: str, vmid: str, items: Sequence[FreezeItem]) -> dict[str, Frozen]:
        """Freeze all drives' bitmaps in one step; return what each drive's backup must read."""
        keys = [self.keys.bitmap_txn(backup)]
        for item in items:
            keys += [
                self.keys.bitmap_meta(vmid, item.drive),
                self.keys.bitmap_bits(vmid, item.drive),
                self.keys.frozen_bits(backup, item.drive),
            ]
        plan = [
            {"drive": i.drive, "size": str(i.size), "chunk_size": str(i.chunk_size)} for i in items
        ]
        # Registered before the freeze, forgotten after commit/rollback: a producer that dies
        # in between leaves an entry, and the reaper gives the frozen bits back.
        self.redis.zadd(self.keys.bitmap_txns(), {backup: time.time()})
        try:
            counts = self._freeze(keys=keys, args=[vmid, json.dumps(plan)])
        except ResponseError:
            raise TransactionStateError(backup, "frozen", "freeze it again") from None
        return {
            item.drive: Frozen(int(n), bool(last))
            for item, (n, last) in zip(items, counts, strict=True)
        }

    def frozen_bits(self, backup: str, drive: str, count: int) -> Iterator[bool]:
        key = self.keys.frozen_bits(backup, drive)
        for start in range(0, -(-count // 8), BITMAP_READ_BLOCK):
            raw = self.redis.getrange(key, start, start + BITMAP_READ_BLOCK - 1)
            block = _bytes(raw).ljust(min(BITMAP_READ_BLOCK, -(-count // 8) - start), b"\0")
            for byte_no, byte in enumerate(block):
                for bit in range(8):
                    if (start + byte_no) * 8 + bit < count:
                        yield bool(byte & (0x80 >> bit))

    def commit(self, backup: str, snapshot: str, repository: str) -> bool:
        """Drop the frozen bits and move every drive's base to the new snapshot."""
        vmid, drives = self._txn(backup)
        keys = [self.keys.bitmap_txn(backup)]
        for drive in drives:
            keys += [self.keys.bitmap_meta(vmid, drive), self.keys.frozen_bits(backup, drive)]
        done = self._run(self._commit, backup, "commit", keys, [snapshot, repository, self.ttl])
        self.redis.zrem(self.keys.bitmap_txns(), backup)
        return done

    def rollback(self, backup: str) -> bool:
        """OR the frozen bits back into the active bitmaps; bases stay as they were."""
        vmid, drives = self._txn(backup)
        keys = [self.keys.bitmap_txn(backup)]
        for drive in drives:
            keys += [self.keys.bitmap_bits(vmid, drive), self.keys.frozen_bits(backup, drive)]
        done = self._run(self._rollback, backup, "roll back", keys, [self.ttl])
        self.redis.zrem(self.keys.bitmap_txns(), backup)
        return done

    def pending_since(self, before: float) -> list[str]:
        """Backups registered for a freeze before ``before``, not committed or rolled back."""
        members: list[bytes] = self.redis.zrangebyscore(  # type: ignore[assignment]
            self.keys.bitmap_txns(), "-inf", before
        )
        return [_text(m) for m in members]

    def forget(self, backup: str) -> None:
        """Drop a registration whose freeze never happened (no transaction exists)."""
        self.redis.zrem(self.keys.bitmap_txns(), backup)

    def state(self, backup: str) -> TxnState | None:
        raw = self.redis.hget(self.keys.bitmap_txn(backup), "state")
        return TxnState(_text(raw)) if raw else None

    def dirty_chunks(self, vmid: str, drive: str) -> set[int]:
        """The active bitmap's set chunks (for reports and tests)."""
        raw = _bytes(self.redis.get(self.keys.bitmap_bits(vmid, drive)) or b"")
        return {i * 8 + b for i, byte in enumerate(raw) for b in range(8) if byte & (0x80 >> b)}

    def _txn(self, backup: str) -> tuple[str, list[str]]:
        raw = self.redis.hmget(self.keys.bitmap_txn(backup), ["vmid", "drives"])
        if raw[0] is None or raw[1] is None:
            raise NotFound(f"bitmap transaction of backup {backup}")
        return _text(raw[0]), [d["drive"] for d in json.loads(raw[1])]

    def _run(self, script: Any, backup: str, verb: str, keys: list[str], args: list[Any]) -> bool:
        try:
            return bool(script(keys=keys, args=args))
        except ResponseError as exc:
            state = str(exc).split()[-1]
            raise TransactionStateError(backup, state, verb) from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value
