"""How repository objects become bytes on disk: as they are, or sealed (encrypted).

A ``Codec`` is the one seam between the repository and encryption. Every place that writes or
reads a chunk, an index, a manifest or a config blob goes through the repository's codec:

- ``PLAIN`` (an unencrypted repository) writes exactly the bytes of format version 1: chunk
  ids are SHA-256 of the plaintext, objects are stored as they are.
- ``SealedCodec`` (an encrypted repository, format version 2) keys chunk ids with
  HMAC-SHA-256 (``ids`` key) so that nobody without the key can tell whether a known block is
  stored, and seals every object with AES-256-GCM (``encryption`` key) after compression. The
  object's identity (kind plus chunk id, or the path that names it) is associated data: an
  object moved to another name, or of another kind, fails authentication.

Nonces are 96 random bits per object (os.urandom); one key seals at most a few billion
objects before the birthday bound matters (2^32 objects: 16 PiB of 4 MiB chunks).

Layouts (docs/format.md, "Encryption"):

- chunk: the version-1 chunk header with codec version 2 and the CRC field zero, then the
  nonce, then the ciphertext of the (compressed) payload and its 16-byte tag; associated data
  is the 16-byte header followed by the raw chunk id;
- index, manifest, blob: ``TXBE``, version u8, kind u8, identity length u16, identity (UTF-8),
  nonce, ciphertext and tag; associated data is everything before the nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from txnbackup import chunk
from txnbackup.aead import Aead, Forged
from txnbackup.constants import MAX_CHUNK_SIZE, ZSTD_LEVEL
from txnbackup.errors import CorruptChunk

CIPHER = "aes-256-gcm"
CHUNK_IDS = "hmac-sha256"
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
SEALED_CHUNK_VERSION = 2
OBJECT_MAGIC = b"TXBE"
OBJECT_VERSION = 1
OBJECT_HEADER = struct.Struct(">4sBBH")
CHUNK_OVERHEAD = NONCE_SIZE + TAG_SIZE
TAMPERED = "failed authentication (damaged, tampered with, or moved from another name)"


class Kind(IntEnum):
    CHUNK = 1
    INDEX = 2
    MANIFEST = 3
    BLOB = 4


class Unsealable(Exception):
    """An object that does not open; ``args[0]`` says why. Callers name the object."""

    @property
    def reason(self) -> str:
        return str(self.args[0])


Parts = tuple[bytes, bytes | memoryview]  # a chunk file in two pieces, written without a join


class Codec(Protocol):
    """Chunk ids, chunk files and whole objects, plain or sealed."""

    @property
    def encrypted(self) -> bool: ...

    def chunk_id(self, data: bytes | memoryview) -> bytes: ...

    def encode_chunk(
        self, chunk_id: bytes, data: bytes | memoryview, level: int = ZSTD_LEVEL
    ) -> Parts: ...

    def decode_chunk(self, blob: bytes | memoryview, chunk_id: str) -> bytes: ...

    def decode_chunk_into(
        self, blob: bytes | memoryview, chunk_id: str, out: memoryview
    ) -> memoryview: ...

    def plausible_chunk(self, head: bytes, file_size: int) -> bool: ...

    def seal(self, kind: Kind, identity: str, data: bytes) -> bytes: ...

    def open(self, kind: Kind, blob: bytes, identity: str | None) -> bytes: ...

    def identity(self, blob: bytes) -> str | None: ...


class PlainCodec:
    """Format version 1: SHA-256 ids, objects stored as they are."""

    encrypted = False

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return hashlib.sha256(data).digest()

    def encode_chunk(
        self, chunk_id: bytes, data: bytes | memoryview, level: int = ZSTD_LEVEL
    ) -> Parts:
        return chunk.encode_parts(data, level)

    def decode_chunk(self, blob: bytes | memoryview, chunk_id: str) -> bytes:
        return chunk.decode(blob, chunk_id)

    def decode_chunk_into(
        self, blob: bytes | memoryview, chunk_id: str, out: memoryview
    ) -> memoryview:
        return chunk.decode_into(blob, chunk_id, out)

    def plausible_chunk(self, head: bytes, file_size: int) -> bool:
        return chunk.plausible(head, file_size)

    def seal(self, kind: Kind, identity: str, data: bytes) -> bytes:
        return data

    def open(self, kind: Kind, blob: bytes, identity: str | None) -> bytes:
        return blob

    def identity(self, blob: bytes) -> str | None:
        return None


PLAIN = PlainCodec()


@dataclass(frozen=True)
class MasterKeys:
    """The repository's random secrets: ``encryption`` seals objects, ``ids`` keys chunk ids."""

    encryption: bytes
    ids: bytes

    @classmethod
    def generate(cls) -> MasterKeys:
        return cls(os.urandom(KEY_SIZE), os.urandom(KEY_SIZE))

    def to_bytes(self) -> bytes:
        return self.encryption + self.ids

    @classmethod
    def from_bytes(cls, raw: bytes) -> MasterKeys:
        if len(raw) != 2 * KEY_SIZE:
            raise ValueError(f"master keys are {2 * KEY_SIZE} bytes, not {len(raw)}")
        return cls(raw[:KEY_SIZE], raw[KEY_SIZE:])


class SealedCodec:
    """Format version 2: HMAC-SHA-256 chunk ids, AES-256-GCM objects (one cipher object,
    shared by every thread: it keeps no state between calls)."""

    encrypted = True

    def __init__(self, keys: MasterKeys) -> None:
        self._aead = Aead(keys.encryption)
        self._id_key = keys.ids

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return hmac.digest(self._id_key, data, "sha256")

    def encode_chunk(
        self, chunk_id: bytes, data: bytes | memoryview, level: int = ZSTD_LEVEL
    ) -> Parts:
        method, payload = chunk.compress(data, level)
        header = chunk.HEADER.pack(chunk.MAGIC, SEALED_CHUNK_VERSION, method, 0, len(data), 0)
        nonce = os.urandom(NONCE_SIZE)
        return header + nonce, self._aead.encrypt(nonce, payload, header + chunk_id)

    def decode_chunk(self, blob: bytes | memoryview, chunk_id: str) -> bytes:
        method, length, payload = self._open_chunk(blob, chunk_id)
        data = chunk.decompress(memoryview(payload), method, length, chunk_id)
        self._check(data, length, chunk_id)
        return data

    def decode_chunk_into(
        self, blob: bytes | memoryview, chunk_id: str, out: memoryview
    ) -> memoryview:
        method, length, payload = self._open_chunk(blob, chunk_id)
        if length > len(out):
            raise CorruptChunk(chunk_id, f"length {length}, longer than expected")
        data = out[:length]
        chunk.decompress_into(memoryview(payload), method, data, chunk_id)
        self._check(data, length, chunk_id)
        return data

    def _open_chunk(self, blob: bytes | memoryview, chunk_id: str) -> tuple[int, int, bytes]:
        """(compression, plaintext length, payload) of a sealed chunk file, authenticated."""
        size = chunk.HEADER.size
        if len(blob) < size + CHUNK_OVERHEAD:
            raise CorruptChunk(chunk_id, "truncated")
        header = bytes(blob[:size])
        magic, version, method, reserved, length, zero = chunk.HEADER.unpack(header)
        if magic != chunk.MAGIC or version != SEALED_CHUNK_VERSION or reserved or zero:
            raise CorruptChunk(chunk_id, "bad magic, codec version or reserved field")
        nonce, sealed = bytes(blob[size : size + NONCE_SIZE]), memoryview(blob)[size + NONCE_SIZE :]
        try:
            payload = self._aead.decrypt(nonce, sealed, header + bytes.fromhex(chunk_id))
        except Forged:
            raise CorruptChunk(chunk_id, TAMPERED) from None
        return method, length, payload

    def _check(self, data: bytes | memoryview, length: int, chunk_id: str) -> None:
        if len(data) != length or not hmac.compare_digest(self.chunk_id(data).hex(), chunk_id):
            raise CorruptChunk(chunk_id, "content does not match its id")

    def plausible_chunk(self, head: bytes, file_size: int) -> bool:
        """The header parses and the file's length fits it, as for a plain chunk file."""
        if len(head) < chunk.HEADER.size:
            return False
        magic, version, method, reserved, length, zero = chunk.HEADER.unpack_from(head)
        if magic != chunk.MAGIC or version != SEALED_CHUNK_VERSION or reserved or zero:
            return False
        if not 0 < length <= MAX_CHUNK_SIZE:
            return False
        payload = file_size - chunk.HEADER.size - CHUNK_OVERHEAD
        if method == chunk.Compression.RAW:
            return bool(payload == length)
        if method == chunk.Compression.ZSTD:
            return bool(0 < payload < length - length // 64)
        return False

    def seal(self, kind: Kind, identity: str, data: bytes) -> bytes:
        name = identity.encode()
        header = OBJECT_HEADER.pack(OBJECT_MAGIC, OBJECT_VERSION, kind, len(name)) + name
        nonce = os.urandom(NONCE_SIZE)
        return header + nonce + self._aead.encrypt(nonce, data, header)

    def open(self, kind: Kind, blob: bytes, identity: str | None) -> bytes:
        """The plaintext of a sealed object of ``kind`` named ``identity`` (None: whatever
        name it carries; a caller that passes None checks ``identity(blob)`` itself)."""
        header, claimed, found_kind = _object_header(blob)
        if found_kind != kind:
            raise Unsealable(f"is a sealed object of another kind ({found_kind})")
        if identity is not None and claimed != identity:
            raise Unsealable(f"is sealed as {claimed!r}, not {identity!r} (moved or swapped)")
        nonce = blob[len(header) : len(header) + NONCE_SIZE]
        try:
            return self._aead.decrypt(nonce, blob[len(header) + NONCE_SIZE :], header)
        except Forged:
            raise Unsealable(TAMPERED) from None

    def identity(self, blob: bytes) -> str | None:
        try:
            return _object_header(blob)[1]
        except Unsealable:
            return None


def _object_header(blob: bytes) -> tuple[bytes, str, int]:
    """(header bytes, identity, kind) of a sealed object; Unsealable when it is none."""
    fixed = OBJECT_HEADER.size
    if len(blob) < fixed:
        raise Unsealable("truncated (not a sealed object)")
    magic, version, kind, length = OBJECT_HEADER.unpack_from(blob)
    if magic != OBJECT_MAGIC or version != OBJECT_VERSION:
        raise Unsealable("is not a sealed object (bad magic or version)")
    if len(blob) < fixed + length + NONCE_SIZE + TAG_SIZE:
        raise Unsealable("truncated")
    try:
        identity = blob[fixed : fixed + length].decode()
    except UnicodeDecodeError:
        raise Unsealable("its identity is not UTF-8") from None
    return blob[: fixed + length], identity, kind


class LazyCodec:
    """A sealed codec unlocked on first use (the key derivation is slow by design, and a
    process that only rolls back or sweeps staging areas never needs the key)."""

    encrypted = True

    def __init__(self, unlock: Callable[[], MasterKeys]) -> None:
        self._unlock = unlock
        self._codec: SealedCodec | None = None
        self._lock = threading.Lock()

    def unlocked(self) -> SealedCodec:
        if self._codec is None:
            with self._lock:
                if self._codec is None:
                    self._codec = SealedCodec(self._unlock())
        return self._codec

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        return self.unlocked().chunk_id(data)

    def encode_chunk(
        self, chunk_id: bytes, data: bytes | memoryview, level: int = ZSTD_LEVEL
    ) -> Parts:
        return self.unlocked().encode_chunk(chunk_id, data, level)

    def decode_chunk(self, blob: bytes | memoryview, chunk_id: str) -> bytes:
        return self.unlocked().decode_chunk(blob, chunk_id)

    def decode_chunk_into(
        self, blob: bytes | memoryview, chunk_id: str, out: memoryview
    ) -> memoryview:
        return self.unlocked().decode_chunk_into(blob, chunk_id, out)

    def plausible_chunk(self, head: bytes, file_size: int) -> bool:
        return self.unlocked().plausible_chunk(head, file_size)

    def seal(self, kind: Kind, identity: str, data: bytes) -> bytes:
        return self.unlocked().seal(kind, identity, data)

    def open(self, kind: Kind, blob: bytes, identity: str | None) -> bytes:
        return self.unlocked().open(kind, blob, identity)

    def identity(self, blob: bytes) -> str | None:
        return self.unlocked().identity(blob)


def index_identity(backup: str, drive: str) -> str:
    """An index is written before its snapshot has a time: it is named by backup and drive
    (the manifest, sealed under the snapshot's path, holds its SHA-256)."""
    return f"{backup}/{drive}.fidx"


def manifest_identity(vmid: str, time: str) -> str:
    return f"vm/{vmid}/{time}/manifest.json"


def blob_identity(vmid: str, time: str, name: str) -> str:
    return f"vm/{vmid}/{time}/{name}.blob"
