"""A unix-socket relay in front of QEMU's monitor that can drop a connection mid-command.

QEMU keeps running and keeps listening: only the worker's connection breaks, after QEMU ran
the command and before its reply reaches the worker (the worker's QMP connection lost, as a
monitor connection cut by a host-side proxy or a socket reset would be). Used once: after
the drop it relays faithfully.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path


class QmpProxy:
    def __init__(self, upstream: str, path: Path) -> None:
        self.upstream, self.path = upstream, str(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(8)
        self._drop_at: bytes | None = None
        self.dropped = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_at(self, command: str) -> None:
        """Cut the next connection that sends ``command``, once QEMU has answered it."""
        self._drop_at = f'"execute": "{command}"'.encode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        Path(self.path).unlink(missing_ok=True)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.upstream)
            armed = threading.Event()  # this connection sent the command: drop at its reply
            threading.Thread(target=self._up, args=(client, server, armed), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, armed), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, armed: threading.Event) -> None:
        while data := _recv(client):
            with self._lock:
                if self._drop_at is not None and self._drop_at in data:
                    self._drop_at = None
                    armed.set()
            _send(server, data)
        _close(client, server)

    def _down(self, server: socket.socket, client: socket.socket, armed: threading.Event) -> None:
        while data := _recv(server):
            if armed.is_set() and (b'"return"' in data or b'"error"' in data):
                self.dropped.set()
                break
            _send(client, data)
        _close(client, server)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
