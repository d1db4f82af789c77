"""Which snapshots the dirty bitmaps in Redis are relative to (their bases).

A bitmap's bits are the chunks changed since its base. Removing the base does not make the
bits wrong, only unusable: the next backup finds the base missing, decides ``invalid`` and
reads the drive in full (txnbackup.action). Prune uses this map to say so in its output.
"""

from __future__ import annotations

import re

from redis import Redis

from txnbackup.keys import Keys
from txnbackup.redisconn import text

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def bitmap_bases(
    redis: Redis, keys: Keys, repository: str, vmid: str = "*"
) -> dict[str, list[str]]:
    """``{snapshot id: ["<vmid>/<drive>", …]}`` for every bitmap (of the VM, when given)
    whose base is in the repository. A vmid holds no glob character (txnbackup.names)."""
    pattern = _GLOB_SPECIAL.sub(r"\\\1", keys.prefix) + f"bitmap:{vmid}:*:meta"
    found: dict[str, list[str]] = {}
    for raw_key in redis.scan_iter(match=pattern, count=1000):
        key = text(raw_key)
        vmid, _, drive = (
            key[len(keys.prefix) :].removeprefix("bitmap:").removesuffix(":meta").partition(":")
        )
        base, repo = (text(v) if v else "" for v in redis.hmget(key, ["base", "repository"]))
        if base and repo == repository:
            found.setdefault(base, []).append(f"{vmid}/{drive}")
    return {base: sorted(drives) for base, drives in found.items()}
