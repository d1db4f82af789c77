"""Strict reading of the JSON files of a repository: exact fields, exact types, bounded ints.

A repository is data, not an authority: a field of the wrong type, out of range, unknown or
missing makes the whole file invalid (``SchemaError``), never a traceback or a guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

HEX64_RE = re.compile(r"[0-9a-f]{64}")
MAX_SIZE = 2**63 - 1  # bytes: the largest file offset (off_t); index headers hold u64


class SchemaError(ValueError):
    """What is wrong with a JSON document, in words for the user."""


def parse_object(raw: bytes) -> dict[str, Any]:
    """A JSON object; duplicate keys are refused (a reader must not pick one silently)."""
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SchemaError("not a JSON object")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen = [k for k, _ in pairs]
        twice = sorted({k for k in seen if seen.count(k) > 1})
        raise SchemaError(f"duplicate field(s) {', '.join(twice)}")
    return data


class Fields:
    """The fields of one JSON object, checked against the names it must and may have."""

    def __init__(
        self, data: object, what: str, required: Collection[str], optional: Collection[str] = ()
    ) -> None:
        if not isinstance(data, dict):
            raise SchemaError(f"{what} is not a JSON object")
        missing = sorted(set(required) - data.keys())
        unknown = sorted(data.keys() - set(required) - set(optional))
        if missing:
            raise SchemaError(f"{what}: missing field(s) {', '.join(missing)}")
        if unknown:
            raise SchemaError(f"{what}: unknown field(s) {', '.join(unknown)}")
        self.data: dict[str, Any] = data
        self.what = what

    def integer(
        self, key: str, low: int = 0, high: int = MAX_SIZE, default: int | None = None
    ) -> int:
        value = self.data.get(key, default)
        # bool is an int in Python, but never a size or a count in a manifest
        if type(value) is not int or not low <= value <= high:
            raise SchemaError(f"{self.what}: {key} {value!r} is not an integer in [{low}, {high}]")
        return value

    def text(self, key: str) -> str:
        value = self.data[key]
        if not isinstance(value, str) or not value:
            raise SchemaError(f"{self.what}: {key} {value!r} is not a non-empty string")
        return value

    def hex64(self, key: str) -> str:
        value = self.data[key]
        if not isinstance(value, str) or not HEX64_RE.fullmatch(value):
            raise SchemaError(f"{self.what}: {key} {value!r} is not 64 lowercase hex digits")
        return value

    def array(self, key: str) -> list[Any]:
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise SchemaError(f"{self.what}: {key} is not a list")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise SchemaError(f"{self.what}: {key} is not a JSON object")
        return value
