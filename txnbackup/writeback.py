"""New chunk files made durable and named off the threads that write them.

A writer (``ChunkStore.put``) creates a new chunk file under a temporary name and hands it
over with ``submit``, with its bytes to write (``Contents``: past the page cache, see
txnbackup.direct), or written already and the kernel asked to start writing them back.
Background threads write what is to be written, fsync each file handed over and then call
the store's ``name`` for it (which names it and fsyncs its directory). So the threads that
hash and compress never wait for the disk, and the disk works on a chunk as soon as it is
written rather than when a thread reaches its fsync. Several fsyncs
are in flight at once (``threads``): concurrent fsyncs share journal commits, where one
after another each pays its own.

What it keeps:

- A file is named only after its fsync returned: a torn chunk file never appears under its
  final name (a crash leaves at most a ``.tmp-`` file, as before).
- ``drain`` returns only when every file submitted before it was fsynced and named, and raises
  the first error met since the last ``drain``; a file whose fsync or naming failed, and any
  taken up after that error, is not named. Only after ``drain`` may anything refer to them.
- At most ``depth`` files wait; a writer beyond that waits in ``submit`` (the disk binds, and
  txnbackup.compression sees it in what storing a chunk costs).

The threads run only while files wait, so an idle store holds none (and a process forked
while none wait loses none).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from txnbackup.errors import RepositoryWriteError
from txnbackup.fsutil import write_error

DEPTH = 32  # files written but not yet named, at most (of 4 MiB chunks: 128 MiB)
THREADS = 8  # fsyncs in flight, at most


class Contents(Protocol):
    """A file's bytes not yet written: the writeback thread writes them before its fsync
    (``write``, not after an error), then always lets them go (``release``)."""

    def write(self, fd: int) -> None: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class Written:
    """A file under its temporary name, still open, to be named ``path``: complete, or
    complete once ``contents`` are written."""

    fd: int
    tmp: Path
    path: Path
    key: str  # what the store knows it by (the digest)
    contents: Contents | None = None


Namer = Callable[[Written], None]  # names a durable file (its temporary name gone); on a thread
Done = Callable[[str], None]  # given the key once the file is named, or could not be


class Writeback:
    """fsync, then name, on background threads; ``drain`` waits for all of it."""

    def __init__(self, name: Namer, done: Done, depth: int = DEPTH, threads: int = THREADS) -> None:
        self._name, self._done, self._depth, self._threads = name, done, depth, threads
        self._cond = threading.Condition()
        self._queue: deque[Written] = deque()
        self._running = 0
        self._error: RepositoryWriteError | None = None

    def submit(self, written: Written) -> None:
        """Queue a written file (waiting while ``depth`` are queued). Raises the error the
        thread met, if any: the caller still owns ``written`` then."""
        with self._cond:
            while len(self._queue) >= self._depth and self._error is None:
                self._cond.wait()
            _raise(self._error)
            self._queue.append(written)
            if self._running < min(self._threads, len(self._queue)):
                self._start()

    def _start(self) -> None:
        self._running += 1
        try:
            threading.Thread(target=self._run, name="chunk-writeback", daemon=True).start()
        except RuntimeError:  # no thread to be had: a running one takes the file, or none does
            self._running -= 1
            if not self._running:
                self._queue.pop()
                raise

    def drain(self) -> None:
        """Wait until every submitted file is fsynced and named (helping with what is left);
        raise the first error."""
        with self._cond:
            helping = bool(self._queue)
            self._running += helping
        if helping:
            self._run()
        with self._cond:
            while self._running:
                self._cond.wait()
            error, self._error = self._error, None
        _raise(error)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._running -= 1
                    self._cond.notify_all()
                    return
                written = self._queue.popleft()
                failed = self._error is not None
                self._cond.notify_all()  # a writer waiting for room may go on
            error = self._complete(written, skip=failed)
            if error is not None:
                with self._cond:
                    self._error = self._error or error
                    self._cond.notify_all()

    def _complete(self, written: Written, *, skip: bool) -> RepositoryWriteError | None:
        """fsync and name one file (not after an error: the copy fails anyway); always close
        it, and remove its temporary name unless it was named."""
        named = False
        try:
            if not skip:
                if written.contents is not None:
                    written.contents.write(written.fd)
                os.fsync(written.fd)
                self._name(written)
                named = True
        except OSError as exc:
            return write_error(written.path, exc)
        except Exception as exc:  # never leave drain waiting for a thread that died
            return RepositoryWriteError(str(written.path), repr(exc))
        finally:
            if written.contents is not None:
                written.contents.release()
            _close_quietly(written.fd)
            if not named:
                with contextlib.suppress(OSError):
                    written.tmp.unlink(missing_ok=True)
            self._done(written.key)
        return None


def _raise(error: RepositoryWriteError | None) -> None:
    if error is not None:
        raise RepositoryWriteError(*error.args)  # a new one: several threads may raise it


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
