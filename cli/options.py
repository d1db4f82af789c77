"""Options several verbs share, and the repository they name."""

from __future__ import annotations

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
    """The repository named by ``--repo``, else by TXNBACKUP_REPOSITORY."""
    path = repo if repo is not None else settings.repository
    if path is None:
        raise InvalidInput("no repository given: pass --repo or set TXNBACKUP_REPOSITORY")
    return Repository.open(path)
