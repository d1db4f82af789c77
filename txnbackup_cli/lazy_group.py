"""A click group whose verbs are imported when one is run, not when the program starts.

Each verb lives in a module of ``txnbackup_cli`` with a ``COMMANDS`` tuple; the group knows
only which module holds which verb, so ``txnbackup backup`` imports the backup verbs and
nothing of the repository, retention or demo verbs. ``txnbackup --help`` lists every verb,
and so imports every verb module.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click


class LazyGroup(click.Group):
    """``verbs``: verb name -> name of the module (in ``txnbackup_cli``) that defines it."""

    def __init__(self, *args: Any, verbs: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.verbs = dict(verbs)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.verbs})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.verbs:
            self.load(self.verbs[cmd_name])
        return self.commands.get(cmd_name)

    def load(self, module_name: str) -> None:
        """Import a verb module and add every command of its ``COMMANDS``."""
        module = importlib.import_module(f"txnbackup_cli.{module_name}")
        for command in module.COMMANDS:
            self.add_command(command)
