"""The chunk codec: how one chunk's plaintext becomes the bytes of its file, and back.

A chunk file is a 16-byte header followed by the payload:
magic ``TXBC``, codec version (u8), compression (u8: 0 raw, 1 zstd), reserved (u16, zero),
plaintext length (u32), CRC-32 of the payload (u32); all big-endian. The file's name is the
SHA-256 of the plaintext, which decoding checks as well.

The writer picks the compression: raw for a chunk whose samples do not compress (no zstd pass
over random data), else zstd at the level the caller asks for (txnbackup.compression), kept
only when it saves at least 1/64. A reader needs nothing but the header: any zstd level
decodes alike.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from enum import IntEnum

import zstandard

# The header's CRC-32, the values zlib gives, by zlib-ng: carry-less multiplication makes it
# ~12 times as fast as the system zlib's (38 against 3.1 GiB/s here), and on a full backup
# zlib's own was ~5% of the CPU (engine alone, 1 GiB: ~0.15 CPU-s). zlib's is the fallback.
try:
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - zlib-ng is a dependency
    from zlib import crc32

from txnbackup.constants import MAX_CHUNK_SIZE, ZSTD_LEVEL
from txnbackup.errors import CorruptChunk

MAGIC = b"TXBC"
CODEC_VERSION = 1
HEADER = struct.Struct(">4sBBHII")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PROBE_SIZE = HEADER.size + len(ZSTD_MAGIC)  # bytes ``plausible`` looks at
SAMPLES = 8  # pieces of a chunk tried before compressing it whole (``_incompressible``)
SAMPLE_SIZE = 8 * 1024  # bytes per piece
TRIAL_MIN = 4 * SAMPLES * SAMPLE_SIZE  # bytes: smaller chunks are compressed without a trial


class Compression(IntEnum):
    RAW = 0
    ZSTD = 1


_local = threading.local()


def _compressor(level: int = ZSTD_LEVEL) -> zstandard.ZstdCompressor:
    # zstd (de)compressor objects are not thread-safe; the engine hashes and compresses
    # on a thread pool, so each thread keeps its own, one per level.
    comps: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if comps is None:
        comps = _local.compressors = {}
    comp = comps.get(level)
    if comp is None:
        comp = comps[level] = zstandard.ZstdCompressor(level=level)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if dec is None:
        dec = _local.decompressor = zstandard.ZstdDecompressor()
    return dec


def digest_of(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def encode(data: bytes | memoryview, level: int = ZSTD_LEVEL) -> bytes:
    """Compress with zstd, or store raw when compression does not pay (random data)."""
    return b"".join(encode_parts(data, level))


def encode_parts(
    data: bytes | memoryview, level: int = ZSTD_LEVEL
) -> tuple[bytes, bytes | memoryview]:
    """``encode`` as (header, payload), which a writer can write without joining them:
    the raw payload is ``data`` itself, not a copy."""
    method, payload = compress(data, level)
    header = HEADER.pack(MAGIC, CODEC_VERSION, method, 0, len(data), crc32(payload))
    return header, payload


def compress(
    data: bytes | memoryview, level: int = ZSTD_LEVEL
) -> tuple[Compression, bytes | memoryview]:
    """The payload and its compression.

    A large chunk whose samples (``_incompressible``) all fail to compress is stored raw
    without compressing the whole of it; any other is compressed at ``level`` and kept
    compressed when that saves at least 1/64 of it.
    """
    if not _incompressible(data):
        compressed = _compressor(level).compress(data)
        if _pays(len(compressed), len(data)):
            return Compression.ZSTD, compressed
    return Compression.RAW, data


def is_compressed(header: bytes) -> bool:
    """Whether a chunk file's header (plain or sealed: the field is at the same place) says
    its payload is compressed."""
    return bool(HEADER.unpack_from(header)[2] == Compression.ZSTD)


def _pays(compressed: int, plain: int) -> bool:
    return compressed < plain - plain // 64


def _incompressible(data: bytes | memoryview) -> bool:
    """Whether every one of SAMPLES pieces of SAMPLE_SIZE, spread evenly over the chunk,
    fails to compress at zstd 1 (random data): 1/64 of the chunk compressed instead of all
    of it. Chunks under TRIAL_MIN are compressed whole: the trial would not save much."""
    if len(data) < TRIAL_MIN:
        return False
    step = len(data) // SAMPLES
    comp = _compressor(ZSTD_LEVEL)
    view = memoryview(data)
    return not any(
        _pays(len(comp.compress(view[i : i + SAMPLE_SIZE])), SAMPLE_SIZE)
        for i in range(0, step * SAMPLES, step)
    )


def plausible(head: bytes, file_size: int) -> bool:
    """Whether a chunk file whose first PROBE_SIZE bytes are ``head`` looks whole, without
    reading its payload: the header parses and the file's length fits it (exactly for a raw
    chunk; for zstd, the frame's magic and a length the writer could have produced). Damage
    inside a compressed payload is found by ``decode`` only (verify, restore)."""
    if len(head) < HEADER.size:
        return False
    magic, version, method, reserved, length, _ = HEADER.unpack_from(head)
    if magic != MAGIC or version != CODEC_VERSION or reserved or not 0 < length <= MAX_CHUNK_SIZE:
        return False
    payload = file_size - HEADER.size
    if method == Compression.RAW:
        return bool(payload == length)
    if method == Compression.ZSTD:
        framed = head[HEADER.size :] == ZSTD_MAGIC
        return framed and bool(len(ZSTD_MAGIC) < payload < length - length // 64)
    return False


def decode(blob: bytes | memoryview, digest: str) -> bytes:
    """Return the plaintext of a chunk file, or raise CorruptChunk naming what is wrong."""
    method, length, crc, payload = _parse(blob, digest)
    if crc32(payload) != crc:
        raise CorruptChunk(digest, "CRC mismatch")
    data = decompress(payload, method, length, digest)
    if len(data) != length or digest_of(data) != digest:
        raise CorruptChunk(digest, "content does not match its digest")
    return data


def _parse(blob: bytes | memoryview, digest: str) -> tuple[int, int, int, memoryview]:
    """(compression, plaintext length, CRC, payload) of a chunk file whose header is sound."""
    if len(blob) < HEADER.size:
        raise CorruptChunk(digest, "truncated header")
    magic, version, method, reserved, length, crc = HEADER.unpack_from(blob)
    if magic != MAGIC or version != CODEC_VERSION or reserved != 0:
        raise CorruptChunk(digest, "bad magic, codec version or reserved field")
    return method, length, crc, memoryview(blob)[HEADER.size :]


def decode_into(blob: bytes | memoryview, digest: str, out: memoryview) -> memoryview:
    """``decode`` into ``out`` (at least as long as the chunk): the plaintext is ``out``'s
    start, returned. The digest of the plaintext proves it, so the payload's CRC is computed
    only when decoding fails, to say whether the file's bytes changed (a restore's CPU is
    better spent elsewhere)."""
    method, length, crc, payload = _parse(blob, digest)
    try:
        if length > len(out):
            raise CorruptChunk(digest, f"length {length}, longer than expected")
        data = out[:length]
        decompress_into(payload, method, data, digest)
        if digest_of(data) != digest:
            raise CorruptChunk(digest, "content does not match its digest")
    except CorruptChunk:
        if crc32(payload) != crc:
            raise CorruptChunk(digest, "CRC mismatch") from None
        raise
    return data


def decompress_into(payload: memoryview, method: int, out: memoryview, digest: str) -> None:
    """Fill ``out`` with the plaintext of a payload, which must be exactly that long;
    CorruptChunk when it is not."""
    if method == Compression.RAW:
        if len(payload) != len(out):
            raise CorruptChunk(digest, f"length {len(payload)}, expected {len(out)}")
        out[:] = payload
        return
    if method != Compression.ZSTD:
        raise CorruptChunk(digest, f"unknown compression {method}")
    try:
        with _decompressor().stream_reader(payload, read_size=len(payload)) as reader:
            got = 0
            while got < len(out) and (n := reader.readinto(out[got:])):
                got += n
            longer = got == len(out) and reader.read(1)
    except zstandard.ZstdError as exc:
        raise CorruptChunk(digest, f"zstd: {exc}") from None
    if got != len(out) or longer:
        raise CorruptChunk(digest, f"payload decompresses to a length other than {len(out)}")


def decompress(payload: memoryview, method: int, length: int, digest: str) -> bytes:
    """The plaintext of a payload (at most ``length`` bytes); CorruptChunk when it is not."""
    if method == Compression.RAW:
        return bytes(payload)
    if method == Compression.ZSTD:
        try:
            return bytes(_decompressor().decompress(payload, max_output_size=length))
        except zstandard.ZstdError as exc:
            raise CorruptChunk(digest, f"zstd: {exc}") from None
    raise CorruptChunk(digest, f"unknown compression {method}")
