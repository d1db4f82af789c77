"""QEMU tests run real qemu-storage-daemon processes, one per test, always cleaned up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.qemu.qsd import Guest, Qsd


@pytest.fixture
def qsd() -> Iterator[Qsd]:
    daemon = Qsd()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture
def guest(qsd: Qsd) -> Iterator[Guest]:
    writer = Guest(qsd)
    try:
        yield writer
    finally:
        writer.close()
