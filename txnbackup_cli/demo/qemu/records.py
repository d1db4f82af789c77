"""The guest's records: round ``n`` writes one 4 KiB block holding ``n`` to disk A, then the
same to disk B, at slot ``n mod slots``. At any instant B's last record is A's or one behind;
a backup that froze both disks at one instant restores to the same relation."""

from __future__ import annotations

import re
from pathlib import Path

RECORD = 4096
MAGIC = b"TXNREC "
DIGITS = 12
_PATTERN = re.compile(re.escape(MAGIC) + rb"(\d{%d})\n" % DIGITS)


def record(n: int) -> bytes:
    """Record ``n`` as the guest writes it (the block padded with zeros)."""
    return (MAGIC + b"%0*d\n" % (DIGITS, n)).ljust(RECORD, b"\0")


def slot(n: int, disk_size: int) -> int:
    return n % (disk_size // RECORD)


def last_record(image: Path) -> int:
    """The highest record number on a raw image (0: none), scanning every 4 KiB block."""
    best = 0
    with open(image, "rb") as fh:
        while block := fh.read(1024 * RECORD):
            for offset in range(0, len(block), RECORD):
                if block.startswith(MAGIC, offset):
                    match = _PATTERN.match(block, offset)
                    if match:
                        best = max(best, int(match.group(1)))
    return best


def consistent(last_a: int, last_b: int) -> bool:
    """Both disks at one instant: B holds A's last round, or A is one round ahead."""
    return last_b in (last_a, last_a - 1)


class DiskMismatch(AssertionError):
    pass


def _expected(last: int, index: int, slots: int) -> bytes:
    """Slot ``index`` after rounds 1..last: the latest round that wrote it, or zeros."""
    n = last - (last - index) % slots
    return record(n) if n >= 1 else bytes(RECORD)


def check_disk(image: Path) -> int:
    """The image's last record, after checking every block is exactly what the guest had
    written by then (nothing older, newer or missing); DiskMismatch names the first wrong
    block. A restore of a point-in-time view passes; one missing changed chunks does not."""
    last = last_record(image)
    slots = image.stat().st_size // RECORD
    with open(image, "rb") as fh:
        for index in range(slots):
            if fh.read(RECORD) != _expected(last, index, slots):
                raise DiskMismatch(
                    f"{image.name}: block {index} is not record "
                    f"{last - (last - index) % slots} (last record {last})"
                )
    return last
