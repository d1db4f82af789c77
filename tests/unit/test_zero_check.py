"""The engine's zero check, whatever buffer a reader hands it: a zero chunk is stored as
nothing, so a chunk with one byte set must never pass for zeros."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from txnbackup.engine import is_zero

SIZE = 64 * 1024
AS: dict[str, Callable[[bytearray], bytes | bytearray | memoryview]] = {
    "bytes": bytes,  # a buffered read
    "bytearray": lambda b: b,  # an NBD read (libnbd)
    "view": memoryview,  # a direct read: a view of the thread's buffer
}


@pytest.mark.parametrize("kind", list(AS))
def test_only_all_zero_data_is_zero(kind: str) -> None:
    convert = AS[kind]
    assert is_zero(convert(bytearray(SIZE)))
    # one byte set anywhere, the places the quick look skips included
    for at in (0, 1, SIZE // 2 - 1, SIZE // 2, SIZE // 2 + 1, SIZE - 2, SIZE - 1):
        data = bytearray(SIZE)
        data[at] = 1
        assert not is_zero(convert(data)), at
