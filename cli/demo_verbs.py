"""The demo verb: a private two-node fleet and the whole life of a backup, narrated and checked."""

from __future__ import annotations

from pathlib import Path

import click

from cli.demo.run import DemoOptions, run_demo
from cli.sizes import size_option_value
from txnbackup.errors import InvalidInput
from txnbackup.repository import check_chunk_size
from txnbackup.settings import Settings

MIN_CHUNKS = 8  # the steps write at eight different places of a drive


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where drives, repository, restored files and logs go: new or empty, and kept. "
    "[default: a temporary directory, removed after a successful run]",
)
@click.option("--keep", is_flag=True, help="Keep the temporary work directory.")
@click.option(
    "--drive-size",
    default="96M",
    show_default=True,
    metavar="SIZE",
    callback=size_option_value,
    help="Size of each of the three drives: a multiple of the chunk size, at least 8 chunks.",
)
@click.option(
    "--chunk-size",
    default="4M",
    show_default=True,
    metavar="SIZE",
    callback=size_option_value,
    help="Chunk size of the demo's repository.",
)
@click.pass_obj
def demo(
    settings: Settings, workdir: Path | None, keep: bool, drive_size: int, chunk_size: int
) -> None:
    """Show the whole idea on a private two-node fleet, and check it.

    Uses the Redis at TXNBACKUP_REDIS_URL when one answers (under its own key prefixes,
    deleted at the end), else starts a private redis-server; starts one worker per node;
    then: a sample VM, a full backup, an incremental one, a backup whose drive fails
    mid-copy, one cancelled by revoking one task, an incremental that still has every
    change, and a restore compared byte for byte. Everything it starts is stopped.

    Exit code 0 only if every step came out as expected.
    """
    check_chunk_size(chunk_size)
    if drive_size % chunk_size or drive_size < MIN_CHUNKS * chunk_size:
        raise InvalidInput(
            f"--drive-size {drive_size} must be a multiple of the chunk size {chunk_size} "
            f"and at least {MIN_CHUNKS} chunks"
        )
    run_demo(DemoOptions(workdir, keep, drive_size, chunk_size), settings)


COMMANDS = (demo,)
