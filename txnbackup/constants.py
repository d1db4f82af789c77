"""Fixed numbers of the on-disk format and the Redis key layout."""

from __future__ import annotations

FORMAT_VERSION = 1  # version of the repository format this code reads and writes
ENCRYPTED_FORMAT_VERSION = 2  # the same layout, every object sealed (txnbackup.crypto)
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024  # bytes
MIN_CHUNK_SIZE = 64 * 1024  # bytes
MAX_CHUNK_SIZE = 16 * 1024 * 1024  # bytes
DIGEST_SIZE = 32  # bytes, SHA-256
ZERO_DIGEST = bytes(DIGEST_SIZE)  # index entry of an all-zero chunk, which is never stored
ZSTD_LEVEL = 1  # zstd level for chunks: fast, and most of the gain of higher levels
BITMAP_READ_BLOCK = 64 * 1024  # bytes of bitmap fetched from Redis per round trip
DEFAULT_KEY_PREFIX = "txnbackup:"  # every Redis key of txnbackup starts with this
DEFAULT_STATE_TTL = 7 * 24 * 3600  # seconds a finished backup's records are kept
DEFAULT_VISIBILITY_TIMEOUT = 12 * 3600  # seconds before Redis redelivers an unacked task
STOP_CHECK_INTERVAL = 0.2  # seconds between a running drive's checks for cancellation
