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

Proof that bits are whole and current (a wrong incremental is worse than a slow one): every
bits key begins with a header, the 16-character epoch of the bitmap, and the meta hash names
that epoch. Freeze gives the fresh active bitmap a new epoch; commit records it in the meta
(and the caller in the new snapshot's manifest); rollback puts the old epoch back only when
both the active and the frozen bits still carry theirs. A bits key Redis evicted, or one put
back from another time, has no header or another one, so its bitmap cannot prove itself:
freeze reports such a drive as not ``whole`` and the backup reads everything.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from txnbackup.constants import BITMAP_READ_BLOCK
from txnbackup.errors import (
    IntegrityError,
    InvalidInput,
    MarkNotRecorded,
    NotFound,
    TransactionStateError,
)
from txnbackup.keys import Keys
from txnbackup.redisconn import text

EPOCH_LENGTH = 16  # bytes of the epoch header of every bits key; the scripts spell out 16

_MARK = """
local size = redis.call('HGET', KEYS[1], 'size')
if not size then return -1 end
size = tonumber(size)
local cs = tonumber(redis.call('HGET', KEYS[1], 'chunk_size'))
local off, len = tonumber(ARGV[1]), tonumber(ARGV[2])
if off + len > size then return redis.error_reply('RANGE ' .. size) end
if len == 0 then return 0 end
local first, last = math.floor(off / cs), math.floor((off + len - 1) / cs)
local h = 128  -- bits of the epoch header (EPOCH_LENGTH bytes)
local b = first
while b <= last and b % 8 ~= 0 do redis.call('SETBIT', KEYS[2], h + b, 1); b = b + 1 end
local bytes = math.floor((last - b + 1) / 8)
if bytes > 0 then
  redis.call('SETRANGE', KEYS[2], (h + b) / 8, string.rep('\\255', bytes))
  b = b + bytes * 8
end
while b <= last do redis.call('SETBIT', KEYS[2], h + b, 1); b = b + 1 end
return last - first + 1
"""

# A drive's bits are whole when its bits key exists and starts with the meta's epoch; only
# then is the old epoch kept (as ``prior``) for a rollback to restore.
_FREEZE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('TXN exists') end
local items = cjson.decode(ARGV[2])
local counts = {}
for i, item in ipairs(items) do
  local meta, bits, frozen = KEYS[3*i-1], KEYS[3*i], KEYS[3*i+1]
  local old = redis.call('HGET', meta, 'epoch') or ''
  local whole = 0
  if redis.call('EXISTS', bits) == 1 then
    if old ~= '' and redis.call('GETRANGE', bits, 0, 15) == old then whole = 1 end
    redis.call('RENAME', bits, frozen)
  end
  redis.call('SET', bits, item.epoch)
  redis.call('HSET', meta, 'size', item.size, 'chunk_size', item.chunk_size, 'epoch', item.epoch)
  redis.call('HSETNX', meta, 'base', '')
  redis.call('HSETNX', meta, 'repository', '')
  local nchunks = math.ceil(tonumber(item.size) / tonumber(item.chunk_size))
  local last = 0
  if nchunks > 0 then last = redis.call('GETBIT', frozen, 128 + nchunks - 1) end
  item.prior = ''
  if whole == 1 then item.prior = old end
  counts[i] = {redis.call('BITCOUNT', frozen, 16, -1), last, whole, old}
end
redis.call('HSET', KEYS[1], 'state', 'frozen', 'vmid', ARGV[1], 'drives', cjson.encode(items))
return counts
"""

# A transaction frozen by a txnbackup without epochs has none: its drives commit to an empty
# epoch, which no bits key carries, so their next backup reads everything once.
_COMMIT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return redis.error_reply('TXN missing') end
if state == 'committed' then redis.call('ZREM', KEYS[#KEYS], ARGV[#ARGV]) return 0 end
if state ~= 'frozen' then return redis.error_reply('TXN ' .. state) end
local items = cjson.decode(redis.call('HGET', KEYS[1], 'drives'))
for i, item in ipairs(items) do
  redis.call('HSET', KEYS[3*i-1], 'base', ARGV[1], 'repository', ARGV[2], 'size', item.size,
    'chunk_size', item.chunk_size, 'epoch', item.epoch or '')
  redis.call('DEL', KEYS[3*i+1])
end
redis.call('HSET', KEYS[1], 'state', 'committed', 'snapshot', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[#KEYS], ARGV[#ARGV])  -- no longer pending (the reaper's list)
return 1
"""

# The merged bits get the old epoch back only if neither part was lost meanwhile; otherwise
# the header is one no epoch can equal, so the next backup reads everything.
_ROLLBACK = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return redis.error_reply('TXN missing') end
if state == 'rolledback' then redis.call('ZREM', KEYS[#KEYS], ARGV[#ARGV]) return 0 end
if state ~= 'frozen' then return redis.error_reply('TXN ' .. state) end
local items = cjson.decode(redis.call('HGET', KEYS[1], 'drives'))
for i, item in ipairs(items) do
  local meta, bits, frozen = KEYS[3*i-1], KEYS[3*i], KEYS[3*i+1]
  local prior = item.prior or ''
  local whole = prior ~= '' and redis.call('GETRANGE', bits, 0, 15) == item.epoch
  if redis.call('EXISTS', frozen) == 1 then
    whole = whole and redis.call('GETRANGE', frozen, 0, 15) == prior
    redis.call('BITOP', 'OR', bits, bits, frozen)
    redis.call('DEL', frozen)
  else
    whole = false
  end
  if whole then
    redis.call('SETRANGE', bits, 0, prior)
  else
    redis.call('SETRANGE', bits, 0, string.rep('-', 16))
  end
  if not whole then prior = '' end
  if redis.call('EXISTS', meta) == 1 then redis.call('HSET', meta, 'epoch', prior) end
end
redis.call('HSET', KEYS[1], 'state', 'rolledback')
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[#KEYS], ARGV[#ARGV])  -- no longer pending (the reaper's list)
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
    epoch: str = ""  # the epoch its bits key must start with; "" when it cannot prove one


@dataclass(frozen=True)
class FreezeItem:
    drive: str
    size: int
    chunk_size: int


@dataclass(frozen=True)
class Frozen:
    chunks: int  # chunks marked in the frozen bitmap
    last_dirty: bool  # whether the (possibly short) last chunk is among them
    whole: bool = False  # the frozen bits carried the epoch the meta named: nothing was lost
    prior: str = ""  # the epoch the meta named when frozen
    epoch: str = ""  # the epoch of the fresh active bitmap (recorded in the new snapshot)


class BitmapBackend(Protocol):
    """The bitmap seam: Redis (``RedisBitmaps``) or memory (``txnbackup.memory_bitmaps``)
    today; QEMU's own persistent bitmaps (over QMP/NBD) later."""

    def meta(self, vmid: str, drive: str) -> BitmapMeta | None: ...

    def mark_dirty(self, vmid: str, drive: str, offset: int, length: int) -> int: ...

    def freeze(self, backup: str, vmid: str, items: Sequence[FreezeItem]) -> dict[str, Frozen]: ...

    def frozen_bits(self, backup: str, drive: str, count: int) -> Iterator[bool]: ...

    def commit(self, backup: str, snapshot: str, repository: str) -> bool: ...

    def rollback(self, backup: str) -> bool: ...

    def state(self, backup: str) -> TxnState | None: ...


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
        field = {text(k): text(v) for k, v in raw.items()}
        if "size" not in field or "chunk_size" not in field:
            return None  # a meta hash that lost fields cannot describe a bitmap
        return BitmapMeta(
            int(field["size"]),
            int(field["chunk_size"]),
            field.get("base", ""),
            field.get("repository", ""),
            field.get("epoch", ""),
        )

    def mark_dirty(self, vmid: str, drive: str, offset: int, length: int) -> int:
        """Mark every chunk the byte range touches; -1 when the drive has no bitmap yet."""
        if offset < 0 or length < 0:
            raise InvalidInput(f"offset {offset} and length {length} must not be negative")
        keys = [self.keys.bitmap_meta(vmid, drive), self.keys.bitmap_bits(vmid, drive)]
        try:
            return int(self._mark(keys=keys, args=[offset, length]))
        except ResponseError as exc:
            # Only the script's own RANGE reply is the caller's fault; anything else (out of
            # memory, a read-only replica, a denied command) is Redis's, and the writer must
            # learn that its mark was lost so that it reports the write again.
            reply = str(exc)
            if not reply.startswith("RANGE "):
                raise MarkNotRecorded(f"{vmid}/{drive}", f"{offset}+{length}", reply) from None
            raise InvalidInput(
                f"range {offset}+{length} is beyond the end of drive {vmid}/{drive} "
                f"({reply.split()[1]} bytes)"
            ) from None
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise MarkNotRecorded(f"{vmid}/{drive}", f"{offset}+{length}", str(exc)) from None

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
            {
                "drive": i.drive,
                "size": str(i.size),
                "chunk_size": str(i.chunk_size),
                "epoch": new_epoch(),
            }
            for i in items
        ]
        # Registered before the freeze, forgotten after commit/rollback: a producer that dies
        # in between leaves an entry, and the reaper gives the frozen bits back.
        self.redis.zadd(self.keys.bitmap_txns(), {backup: time.time()})
        try:
            counts = self._freeze(keys=keys, args=[vmid, json.dumps(plan)])
        except ResponseError:
            raise TransactionStateError(backup, "frozen", "freeze it again") from None
        return {
            item.drive: Frozen(int(n), bool(last), bool(whole), text(prior), p["epoch"])
            for item, p, (n, last, whole, prior) in zip(items, plan, counts, strict=True)
        }

    def frozen_bits(self, backup: str, drive: str, count: int) -> Iterator[bool]:
        """The frozen bits, block by block; IntegrityError if Redis loses them meanwhile."""
        key = self.keys.frozen_bits(backup, drive)
        for start in range(0, -(-count // 8), BITMAP_READ_BLOCK):
            raw = self._frozen_block(key, EPOCH_LENGTH + start, BITMAP_READ_BLOCK)
            block = raw.ljust(min(BITMAP_READ_BLOCK, -(-count // 8) - start), b"\0")
            for byte_no, byte in enumerate(block):
                for bit in range(8):
                    if (start + byte_no) * 8 + bit < count:
                        yield bool(byte & (0x80 >> bit))

    def _frozen_block(self, key: str, start: int, length: int) -> bytes:
        # Header and block in one MULTI: a header read back proves the block is of the key
        # that freeze checked, not of an empty key left by an eviction.
        pipe = self.redis.pipeline(transaction=True)
        pipe.getrange(key, 0, EPOCH_LENGTH - 1)
        pipe.getrange(key, start, start + length - 1)
        header, block = pipe.execute()
        if len(_bytes(header)) != EPOCH_LENGTH:
            raise IntegrityError(f"frozen dirty bits {key} vanished from Redis (evicted?)")
        return _bytes(block)

    def commit(self, backup: str, snapshot: str, repository: str) -> bool:
        """Drop the frozen bits and move every drive's base and epoch to the new snapshot."""
        keys = [*self._txn_keys(backup), self.keys.bitmap_txns()]
        return self._run(
            self._commit, backup, "commit", keys, [snapshot, repository, self.ttl, backup]
        )

    def rollback(self, backup: str) -> bool:
        """OR the frozen bits back into the active bitmaps; bases stay as they were."""
        keys = [*self._txn_keys(backup), self.keys.bitmap_txns()]
        return self._run(self._rollback, backup, "roll back", keys, [self.ttl, backup])

    def pending_since(self, before: float) -> list[str]:
        """Backups registered for a freeze before ``before``, not committed or rolled back."""
        members: list[bytes] = self.redis.zrangebyscore(  # type: ignore[assignment]
            self.keys.bitmap_txns(), "-inf", before
        )
        return [text(m) for m in members]

    def forget(self, backup: str) -> None:
        """Drop a registration whose freeze never happened (no transaction exists)."""
        self.redis.zrem(self.keys.bitmap_txns(), backup)

    def state(self, backup: str) -> TxnState | None:
        raw = self.redis.hget(self.keys.bitmap_txn(backup), "state")
        return TxnState(text(raw)) if raw else None

    def dirty_chunks(self, vmid: str, drive: str) -> set[int]:
        """The active bitmap's set chunks (for reports and tests)."""
        raw = _bytes(self.redis.get(self.keys.bitmap_bits(vmid, drive)) or b"")[EPOCH_LENGTH:]
        return {i * 8 + b for i, byte in enumerate(raw) for b in range(8) if byte & (0x80 >> b)}

    def _txn_keys(self, backup: str) -> list[str]:
        """The transaction's key, then meta, bits and frozen bits of each drive in order."""
        raw = self.redis.hmget(self.keys.bitmap_txn(backup), ["vmid", "drives"])
        if raw[0] is None or raw[1] is None:
            raise NotFound(f"bitmap transaction of backup {backup}")
        vmid = text(raw[0])
        keys = [self.keys.bitmap_txn(backup)]
        for item in json.loads(raw[1]):
            drive = item["drive"]
            keys += [
                self.keys.bitmap_meta(vmid, drive),
                self.keys.bitmap_bits(vmid, drive),
                self.keys.frozen_bits(backup, drive),
            ]
        return keys

    def _run(self, script: Any, backup: str, verb: str, keys: list[str], args: list[Any]) -> bool:
        try:
            return bool(script(keys=keys, args=args))
        except ResponseError as exc:
            state = str(exc).split()[-1]
            raise TransactionStateError(backup, state, verb) from None


def new_epoch() -> str:
    return secrets.token_hex(EPOCH_LENGTH // 2)


def _bytes(value: bytes | str) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value
