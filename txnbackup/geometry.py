"""Chunk geometry: a drive of ``size`` bytes cut into chunks of ``chunk_size``, the last one
possibly short. Every offset <-> chunk number conversion of the engine, the bitmaps, the index
and restore goes through here (the bitmap's Lua scripts repeat it, as they run inside Redis).
"""

from __future__ import annotations


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def extent(index: int, size: int, chunk_size: int) -> tuple[int, int]:
    """(offset, length) of chunk ``index``; the last chunk ends at the end of the drive."""
    offset = index * chunk_size
    return offset, min(chunk_size, size - offset)


def dirty_bytes(size: int, chunk_size: int, dirty_chunks: int, last_dirty: bool) -> int:
    """Bytes covered by ``dirty_chunks`` chunks, the last (maybe short) one among them or not."""
    count = chunk_count(size, chunk_size)
    if not last_dirty or not count:
        return dirty_chunks * chunk_size
    return (dirty_chunks - 1) * chunk_size + size - (count - 1) * chunk_size
