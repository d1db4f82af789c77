"""The project's bytecode, written before anything is measured, as `pip install` writes it.

An installed txnbackup has its modules compiled at install time; a command run from this
tree with PYTHONDONTWRITEBYTECODE set (as in the sessions that run the benchmark) compiles
the ~60 modules `txnbackup backup` imports on every start instead, about 0.1 s that no
installed command pays. Python checks each file against its source, so nothing stale is used.
"""

from __future__ import annotations

import compileall
import os
from pathlib import Path

PACKAGES = ("txnbackup", "tasks", "workers", "txnbackup_cli")


def compile_tree(root: Path) -> str:
    """Compile the packages under ``root``; say what was done, for the report's conditions."""
    if not all(compileall.compile_dir(root / p, quiet=1) for p in PACKAGES):
        return "not compiled (compileall failed): every command compiles its modules"
    variable = os.environ.get("PYTHONDONTWRITEBYTECODE")
    note = " (PYTHONDONTWRITEBYTECODE is set here)" if variable else ""
    return f"compiled before the run, as pip install does{note}"
