"""Failpoints: named places where a test can make the process die, to prove recovery.

``TXNBACKUP_FAILPOINTS="commit.before_rename=kill-worker,copy.progress@scsi1=kill-process"``
arms them (for tests only; unset in production, where every call is one dict lookup).
``kill-process`` SIGKILLs the calling process (a pool child, as the OOM killer would);
``kill-worker`` SIGKILLs its whole process group (a worker and its pool: a host loss).
``sleep:<seconds>`` pauses there (a test acts while the process is at that step).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time

log = logging.getLogger(__name__)
ENV = "TXNBACKUP_FAILPOINTS"


@functools.cache
def _armed() -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    pairs = (item.split("=", 1) for item in spec.split(",") if "=" in item)
    return {name.strip(): action.strip() for name, action in pairs}


def failpoint(name: str, detail: str = "") -> None:
    armed = _armed()
    if not armed:
        return
    action = armed.get(f"{name}@{detail}") or armed.get(name)
    if action is None:
        return
    log.warning("failpoint %s%s: %s", name, f"@{detail}" if detail else "", action)
    if action == "kill-worker":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    elif action == "kill-process":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("sleep:"):
        time.sleep(float(action.removeprefix("sleep:")))
