"""Byte sizes on the command line: ``64K``, ``4M``, ``16M``, ``1G`` or plain bytes, and back."""

from __future__ import annotations

import re

import click

from txnbackup.units import format_size

__all__ = ["format_size", "parse_size", "size_option_value"]

# Binary multiples, as Proxmox and qemu-img read them: 4M is 4 MiB.
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SIZE_RE = re.compile(r"(?P<number>[0-9]+)\s*(?P<unit>[KMGT]?)(?:I?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``text``; ValueError naming the text when it is not a size."""
    match = SIZE_RE.fullmatch(text.strip())
    if match is None:
        if SIZE_RE.fullmatch(text.strip().removeprefix("-")):
            raise ValueError(f"{text!r} is negative; sizes and offsets start at 0")
        raise ValueError(f"{text!r} is not a size like 4096, 64K, 4M or 1G")
    return int(match["number"]) * UNITS[match["unit"].upper()]


def size_option_value(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """click callback for size parameters: a bad size is a usage error (exit 2)."""
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
