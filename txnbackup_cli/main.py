"""The ``txnbackup`` command: one click group, verbs registered from small modules.

Settings are read once, here, from the environment (``Settings.from_env``) and handed to every
verb as the click context object (``@click.pass_obj``); verbs never read the environment.
Failures become one line on stderr and an exit code (``txnbackup_cli.errors``).

Adding verbs: write a module in ``txnbackup_cli/`` (e.g. ``backup_verbs.py``) holding plain
``@click.command()`` functions and a ``COMMANDS`` tuple of them, then add the module to
``VERB_MODULES`` below. Verbs take ``settings: Settings`` through ``@click.pass_obj``, raise
``txnbackup.errors`` exceptions for every failure, and reuse ``txnbackup_cli.options``
(``--repo``, ``--json``), ``txnbackup_cli.output`` and ``txnbackup_cli.sizes``. Celery is
reached only through ``txnbackup_cli.fleet``, so that the repository verbs stay quick to start.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import click

from txnbackup.settings import Settings
from txnbackup_cli import (
    backup_verbs,
    check_verbs,
    demo_verbs,
    gc_verbs,
    key_verbs,
    repository_verbs,
    retention_verbs,
    snapshot_verbs,
    tracker_verbs,
)
from txnbackup_cli.errors import run

VERB_MODULES: tuple[ModuleType, ...] = (
    repository_verbs,
    key_verbs,
    gc_verbs,
    retention_verbs,
    check_verbs,
    snapshot_verbs,
    tracker_verbs,
    backup_verbs,
    demo_verbs,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


def register(*modules: ModuleType) -> None:
    """Add every command in each module's ``COMMANDS`` to the ``txnbackup`` group."""
    for module in modules:
        for command in module.COMMANDS:
            txnbackup.add_command(command)


register(*VERB_MODULES)


def main(args: Sequence[str] | None = None, settings: Settings | None = None) -> int:
    """Entry point of the ``txnbackup`` script; returns the exit code."""
    try:
        return run(txnbackup, args, obj=settings)
    except KeyboardInterrupt:
        return 130
