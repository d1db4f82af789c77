"""The worker process's Runtime: made once per process on first use (in a prefork pool, in
each child after the fork), from the process's own environment."""

from __future__ import annotations

import functools

from txnbackup.runtime import Runtime
from txnbackup.settings import Settings


@functools.cache
def runtime() -> Runtime:
    return Runtime.from_settings(Settings.from_env())
