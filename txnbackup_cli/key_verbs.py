"""The key of an encrypted repository: export, import, change-passphrase (no Redis).

These open the repository without unlocking it first: import is how a missing key comes
back. Passphrases come from the environment (TXNBACKUP_PASSPHRASE_FILE or
TXNBACKUP_PASSPHRASE; the new one from TXNBACKUP_NEW_PASSPHRASE_FILE or
TXNBACKUP_NEW_PASSPHRASE) or, at a terminal, a prompt; never from the command line.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click

from txnbackup.errors import InvalidInput
from txnbackup.keyfile import KeyAccess
from txnbackup.keyops import change_passphrase, export_key, import_key
from txnbackup.repository import Repository
from txnbackup.settings import Settings
from txnbackup_cli.options import ask_passphrase, repo_option


@click.group()
def key() -> None:
    """Export, import or re-protect the key of an encrypted repository."""


@key.command("export")
@repo_option
@click.argument("file", type=click.Path(path_type=Path))
@click.pass_obj
def export(settings: Settings, repo: Path | None, file: Path) -> None:
    """Write the repository's key, still protected by its passphrase, to the new FILE.

    Without the key (or its passphrase) nothing in the repository can be read: keep the
    copy somewhere else than the repository.
    """
    repository = _open(settings, repo)
    source = export_key(repository, settings.key_access(), file)
    click.echo(f"exported the key of {repository.path} ({source}) to {file}")


@key.command("import")
@repo_option
@click.argument("file", type=click.Path(path_type=Path))
@click.pass_obj
def import_(settings: Settings, repo: Path | None, file: Path) -> None:
    """Install the exported key FILE as the repository's key (after checking that the
    passphrase unlocks it and that it opens the repository)."""
    repository = _open(settings, repo)
    target = import_key(repository, _with_passphrase(settings), file)
    click.echo(f"imported {file} as the key of {repository.path} ({target})")


@key.command("change-passphrase")
@repo_option
@click.pass_obj
def change(settings: Settings, repo: Path | None) -> None:
    """Protect the key with a new passphrase (TXNBACKUP_NEW_PASSPHRASE_FILE or
    TXNBACKUP_NEW_PASSPHRASE). The data is not re-encrypted: the keys stay the same."""
    repository = _open(settings, repo)
    keys = _with_passphrase(settings)
    new = settings.new_passphrase
    if new is None and sys.stdin.isatty():
        new = ask_passphrase("New passphrase", confirm=True)
    if new is None:
        raise InvalidInput("no new passphrase: set TXNBACKUP_NEW_PASSPHRASE_FILE or ..._PASSPHRASE")
    target = change_passphrase(repository, keys, new)
    click.echo(f"changed the passphrase of {target}")


def _open(settings: Settings, repo: Path | None) -> Repository:
    path = repo if repo is not None else settings.repository
    if path is None:
        raise InvalidInput("no repository given: pass --repo or set TXNBACKUP_REPOSITORY")
    return Repository.open(path, settings.key_access())


def _with_passphrase(settings: Settings) -> KeyAccess:
    keys = settings.key_access()
    if keys.passphrase is None and sys.stdin.isatty():
        keys = replace(keys, passphrase=ask_passphrase("Passphrase"))
    return keys


COMMANDS = (key,)
