"""A minimal NBD server whose block status says exactly what a test scripts.

QEMU answers block status the way its image formats see it; the NBD protocol allows more
(a hole whose content is unknown, extents that do not line up with anything). This server
exports a byte string read-only over a unix socket (fixed newstyle, structured replies) and
answers ``base:allocation`` and one ``qemu:dirty-bitmap:<name>`` context from lists of
(length, flags) the test gives, so the NBD reader can be tried against what a server may say.
Subclasses change what a read or a block status answers (``_read``, ``_status``); the server
counts the connections it accepted and the block status requests it answered.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import tempfile
import threading
from pathlib import Path
from types import TracebackType

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
STRUCTURED_MAGIC = 0x668E33EF
OPT_GO, OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT, OPT_INFO = 7, 8, 10, 6
REP_ACK, REP_INFO, REP_META_CONTEXT, REP_ERR_UNSUP = 1, 3, 4, 0x80000001
CMD_READ, CMD_DISC, CMD_BLOCK_STATUS = 0, 2, 7
REPLY_FLAG_DONE, REPLY_OFFSET_DATA, REPLY_BLOCK_STATUS = 1, 1, 5
HAS_FLAGS, READ_ONLY, CAN_MULTI_CONN = 1, 2, 1 << 8

HOLE, ZERO = 1, 2  # base:allocation flags
DIRTY = 1  # qemu:dirty-bitmap flag

Extents = list[tuple[int, int]]  # (length, flags), in order from offset 0


class ScriptedNbd:
    """Serves ``data`` as the export ``name``; block status answers from ``allocation`` and
    ``dirty`` (None: the context is not offered), each clipped to the request unless
    ``clip`` is False (a server that says more than it was asked)."""

    def __init__(
        self,
        data: bytes,
        allocation: Extents,
        dirty: Extents | None = None,
        *,
        name: str = "drive",
        bitmap: str = "txnbackup-test",
        clip: bool = True,
        multi_conn: bool = False,
    ) -> None:
        self.data, self.name, self.clip = data, name, clip
        self.flags = HAS_FLAGS | READ_ONLY | (CAN_MULTI_CONN if multi_conn else 0)
        self.connections = self.status_requests = 0
        self._counting = threading.Lock()
        self.contexts = {"base:allocation": allocation}
        if dirty is not None:
            self.contexts[f"qemu:dirty-bitmap:{bitmap}"] = dirty
        self.dir = Path(tempfile.mkdtemp(prefix="txnb-nbd-", dir="/tmp"))
        self.path = str(self.dir / "nbd.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def uri(self) -> str:
        return f"nbd+unix:///{self.name}?socket={self.path}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        Path(self.path).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    def __enter__(self) -> ScriptedNbd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._session, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _session(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, ConnectionError):
            ids = self._negotiate(conn)
            if ids is not None:
                self._transmit(conn, ids)

    def _negotiate(self, conn: socket.socket) -> dict[int, str] | None:
        """Option haggling; the meta context ids once the client goes to transmission."""
        conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 1 | 2))  # fixed newstyle, no zeroes
        _recv(conn, 4)  # client flags
        ids: dict[int, str] = {}
        while True:
            magic, option, length = struct.unpack(">QII", _recv(conn, 16))
            if magic != IHAVEOPT:
                return None
            if self._option(conn, option, _recv(conn, length), ids):
                return ids

    def _option(
        self, conn: socket.socket, option: int, payload: bytes, ids: dict[int, str]
    ) -> bool:
        """Answer one option; True when it was NBD_OPT_GO, which ends the haggling."""
        if option == OPT_STRUCTURED_REPLY:
            _reply(conn, option, REP_ACK)
        elif option == OPT_SET_META_CONTEXT:
            for query in _queries(payload):
                if query in self.contexts:
                    ids[len(ids) + 1] = query
                    _reply(
                        conn, option, REP_META_CONTEXT, struct.pack(">I", len(ids)) + query.encode()
                    )
            _reply(conn, option, REP_ACK)
        elif option in (OPT_GO, OPT_INFO):
            info = struct.pack(">HQH", 0, len(self.data), self.flags)
            _reply(conn, option, REP_INFO, info)
            _reply(conn, option, REP_ACK)
            return option == OPT_GO
        else:
            _reply(conn, option, REP_ERR_UNSUP)
        return False

    def _transmit(self, conn: socket.socket, ids: dict[int, str]) -> None:
        while True:
            magic, _flags, kind, handle, offset, length = struct.unpack(">IHHQQI", _recv(conn, 28))
            if magic != REQUEST_MAGIC or kind == CMD_DISC:
                return
            if kind == CMD_READ:
                body = struct.pack(">Q", offset) + self._read(offset, length)
                _chunk(conn, REPLY_FLAG_DONE, REPLY_OFFSET_DATA, handle, body)
            elif kind == CMD_BLOCK_STATUS:
                with self._counting:
                    self.status_requests += 1
                items = list(ids.items())
                for n, (cid, context) in enumerate(items):
                    extents = self._status(self.contexts[context], offset, length)
                    body = struct.pack(">I", cid) + b"".join(
                        struct.pack(">II", ln, fl) for ln, fl in extents
                    )
                    done = REPLY_FLAG_DONE if n == len(items) - 1 else 0
                    _chunk(conn, done, REPLY_BLOCK_STATUS, handle, body)

    def _read(self, offset: int, length: int) -> bytes:
        """What a read answers (raise ConnectionError to drop the connection instead)."""
        return self.data[offset : offset + length]

    def _status(self, script: Extents, offset: int, length: int) -> Extents:
        """The scripted extents from ``offset`` on: those the request covers, clipped to it,
        or unless told to clip, every one to the end of the script."""
        found: Extents = []
        at, end = 0, offset + length
        for ext_len, flags in script:
            start, stop = max(at, offset), at + ext_len
            at = stop
            if stop <= offset:
                continue
            if self.clip:
                stop = min(stop, end)
            if stop > start:
                found.append((stop - start, flags))
            if self.clip and at >= end:
                break
        return found


def _recv(conn: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        part = conn.recv(n - len(got))
        if not part:
            raise ConnectionError("client went away")
        got += part
    return got


def _reply(conn: socket.socket, option: int, kind: int, data: bytes = b"") -> None:
    conn.sendall(struct.pack(">QIII", REPLY_MAGIC, option, kind, len(data)) + data)


def _chunk(conn: socket.socket, flags: int, kind: int, handle: int, body: bytes) -> None:
    conn.sendall(struct.pack(">IHHQI", STRUCTURED_MAGIC, flags, kind, handle, len(body)) + body)


def _queries(payload: bytes) -> list[str]:
    (name_len,) = struct.unpack_from(">I", payload)
    at = 4 + name_len
    (count,) = struct.unpack_from(">I", payload, at)
    at += 4
    queries = []
    for _ in range(count):
        (n,) = struct.unpack_from(">I", payload, at)
        queries.append(payload[at + 4 : at + 4 + n].decode())
        at += 4 + n
    return queries
