"""Options several verbs share, and the repository they name."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click

from txnbackup.errors import InvalidInput
from txnbackup.repository import Repository
from txnbackup.settings import Settings

repo_option = click.option(
    "--repo",
    type=click.Path(path_type=Path),
    default=None,
    metavar="REPO",
    help="Repository directory. [default: $TXNBACKUP_REPOSITORY]",
)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (shape documented above)."
)


def open_repository(settings: Settings, repo: Path | None) -> Repository:
    """The repository named by ``--repo``, else by TXNBACKUP_REPOSITORY; an encrypted one
    unlocked now, so that a wrong or missing key fails before anything is read or written."""
    path = repo if repo is not None else settings.repository
    if path is None:
        raise InvalidInput("no repository given: pass --repo or set TXNBACKUP_REPOSITORY")
    repository = Repository.open(path, settings.key_access())
    if repository.encrypted and settings.passphrase is None and sys.stdin.isatty():
        keys = replace(settings.key_access(), passphrase=ask_passphrase("Passphrase"))
        repository = Repository.open(path, keys)
    repository.unlock()
    return repository


def ask_passphrase(prompt: str, *, confirm: bool = False) -> bytes:
    """A passphrase typed at the terminal (not echoed), for a user without
    TXNBACKUP_PASSPHRASE(_FILE); never a command-line argument."""
    text: str = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)
    if not text:
        raise InvalidInput("an empty passphrase")
    return text.encode()
