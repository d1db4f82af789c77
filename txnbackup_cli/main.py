"""The ``txnbackup`` command: one click group, verbs loaded from small modules when run.

Settings are read once, here, from the environment (``Settings.from_env``) and handed to every
verb as the click context object (``@click.pass_obj``); verbs never read the environment.
Failures become one line on stderr and an exit code (``txnbackup_cli.errors``).

Adding verbs: write a module in ``txnbackup_cli/`` (e.g. ``backup_verbs.py``) holding plain
``@click.command()`` functions and a ``COMMANDS`` tuple of them, then name each verb and its
module in ``VERBS`` below. Verbs take ``settings: Settings`` through ``@click.pass_obj``, raise
``txnbackup.errors`` exceptions for every failure, and reuse ``txnbackup_cli.options``
(``--repo``, ``--json``), ``txnbackup_cli.output`` and ``txnbackup_cli.sizes``.

Start-up time is part of every command (issue 16: `backup --wait` within 0.5 s of the API
path), so a verb's module is imported only when that verb runs (``LazyGroup``); Celery is
reached only through ``txnbackup_cli.fleet`` and rich only through ``txnbackup_cli.output``
and the view modules, when something is shown to a person (docs/design.md, "Start-up of
the command").
"""

from __future__ import annotations

import gc
from collections.abc import Sequence

import click

from txnbackup.settings import Settings
from txnbackup_cli.errors import run
from txnbackup_cli.lazy_group import LazyGroup

VERBS: dict[str, str] = {  # verb -> the module in txnbackup_cli whose COMMANDS has it
    **dict.fromkeys(("init", "snapshots", "restore", "verify"), "repository_verbs"),
    "key": "key_verbs",
    "gc": "gc_verbs",
    **dict.fromkeys(("prune", "forget", "protect", "unprotect"), "retention_verbs"),
    "check": "check_verbs",
    **dict.fromkeys(("show", "cat"), "snapshot_verbs"),
    "mark-dirty": "tracker_verbs",
    "qemu-clean": "qemu_verbs",
    **dict.fromkeys(
        ("backup", "watch", "status", "cancel", "backups", "worker", "reap"), "backup_verbs"
    ),
    "demo": "demo_verbs",
}


@click.group(cls=LazyGroup, verbs=VERBS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="txnbackup")
@click.pass_context
def txnbackup(ctx: click.Context) -> None:
    """Transactional, incremental, deduplicated backups of VM drives.

    Configuration comes from the environment: TXNBACKUP_REPOSITORY, TXNBACKUP_REDIS_URL,
    TXNBACKUP_KEY_PREFIX (see README "Configuration").

    \b
    Exit codes: 0 ok, 1 other error, 2 invalid input or usage, 3 not found,
    4 repository error, 5 integrity error (corrupt chunk, failed verify), 6 conflict,
    7 service unavailable (Redis), 8 I/O error, 9 cancelled, 10 key error (wrong or missing
    passphrase or key of an encrypted repository), 130 interrupted.
    """
    if not isinstance(ctx.obj, Settings):
        ctx.obj = Settings.from_env()


def main(args: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    """Entry point of the ``txnbackup`` script; returns the exit code."""
    try:
        return run(txnbackup, args, obj=settings)
    except KeyboardInterrupt:
        return 130
    finally:
        # The interpreter's exit would run full garbage collections over every object the
        # imports made (0.1-0.2 s here, as much as the submit and the wait together); the
        # process ends now, and the memory with it.
        gc.freeze()
