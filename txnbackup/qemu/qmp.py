"""A synchronous QMP client over a unix socket: commands, their errors, and events.

QEMU answers commands in order on one connection and interleaves asynchronous events, so
events read while waiting for a reply are kept until someone waits for them.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from txnbackup.errors import QmpCommandFailed, QmpTimeout, QmpUnavailable

Message = dict[str, Any]
DEFAULT_TIMEOUT = 30.0


class QmpClient:
    """One QMP connection; one thread at a time may use it."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self.events: deque[Message] = deque(maxlen=1000)  # unclaimed events age out
        self._buffer = b""
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
            greeting = self._receive()
            if "QMP" not in greeting:
                raise QmpUnavailable(path, f"not a QMP greeting: {greeting!r}")
            self.execute("qmp_capabilities")
        except OSError as exc:
            self._sock.close()
            raise QmpUnavailable(path, exc.strerror or str(exc)) from None
        except BaseException:
            self._sock.close()
            raise

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run ``command``; return its ``return`` value or raise QmpCommandFailed with
        QEMU's ``desc``."""
        request: Message = {"execute": command}
        if arguments:
            request["arguments"] = dict(arguments)
        self._send(request)
        while True:
            reply = self._receive()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                error = reply["error"]
                raise QmpCommandFailed(self.path, command, error.get("desc", str(error)))
            elif "return" in reply:
                return reply["return"]

    def wait_event(
        self,
        name: str,
        timeout: float,
        match: Callable[[Mapping[str, Any]], bool] = lambda data: True,
    ) -> Message:
        """The first event ``name`` whose data ``match`` accepts, kept or yet to come;
        events of other kinds stay kept for later waits."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name and match(event.get("data", {})):
                    self.events.remove(event)
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpTimeout(self.path, f"event {name}", timeout)
            self.events.append(self._receive(left))

    def wait_absent(self, query: str, key: str, value: str, timeout: float = 10.0) -> None:
        """Wait until ``query`` lists no entry whose ``key`` is ``value`` (an export or job
        being deleted); re-asking after each event works whoever started the deletion."""
        deadline = time.monotonic() + timeout
        while any(entry.get(key) == value for entry in self.execute(query)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpTimeout(self.path, f"removal of {value}", timeout)
            with contextlib.suppress(QmpTimeout):
                self.events.append(self._receive(min(left, 0.05)))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> QmpClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, message: Message) -> None:
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise QmpUnavailable(self.path, exc.strerror or str(exc)) from None

    def _receive(self, timeout: float | None = None) -> Message:
        while b"\n" not in self._buffer:
            self._sock.settimeout(self.timeout if timeout is None else max(timeout, 0.001))
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise QmpTimeout(self.path, "reply", timeout or self.timeout) from None
            except OSError as exc:
                raise QmpUnavailable(self.path, exc.strerror or str(exc)) from None
            if not data:
                raise QmpUnavailable(self.path, "QEMU closed the monitor connection")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: Message = json.loads(line)
        return message
