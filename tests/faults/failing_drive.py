"""A drive whose disk fails: a FUSE file system serving one image, read-only, that answers
reads of a chosen byte range with EIO (as a dying disk does) while ``<image>.fail`` exists.

Run as ``python -m tests.faults.failing_drive IMAGE MOUNTPOINT``; the image appears as
``MOUNTPOINT/<image name>``. ``<image>.fail`` holds ``OFFSET LENGTH`` in bytes. Needs libfuse 2
and /dev/fuse (fusepy); tests skip when they are missing.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path
from typing import Any

from fuse import FUSE, FuseOSError, Operations


class FailingDrive(Operations):  # type: ignore[misc]
    def __init__(self, image: Path) -> None:
        self.image = image
        self.fail = image.with_name(f"{image.name}.fail")
        self.fd = os.open(image, os.O_RDONLY)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        if path == f"/{self.image.name}":
            size = os.fstat(self.fd).st_size
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": size}
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", self.image.name]

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if self._failing(offset, size):
            raise FuseOSError(errno.EIO)
        return os.pread(self.fd, size, offset)

    def _failing(self, offset: int, size: int) -> bool:
        try:
            start, length = (int(n) for n in self.fail.read_text().split())
        except FileNotFoundError:
            return False
        return offset < start + length and start < offset + size


def main(image: str, mountpoint: str) -> None:
    # direct_io: every read reaches us as asked, no page cache or read-ahead in between
    FUSE(FailingDrive(Path(image)), mountpoint, foreground=True, ro=True, direct_io=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
