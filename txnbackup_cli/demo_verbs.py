"""The demo verb: a private two-node fleet and the whole life of a backup, narrated and checked."""

from __future__ import annotations

from pathlib import Path

import click

from txnbackup.errors import InvalidInput
from txnbackup.repository import check_chunk_size
from txnbackup.settings import Settings
from txnbackup_cli.demo.run import DemoOptions, run_demo
from txnbackup_cli.sizes import size_option_value

MIN_CHUNKS = 8  # the steps write at eight different places of a drive


def optional_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    return None if value is None else size_option_value(ctx, param, value)


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
    metavar="SIZE",
    callback=optional_size,
    help="Size of each drive: a multiple of the chunk size, at least 8 chunks. "
    "[default: 96M; 64M with --qemu]",
)
@click.option(
    "--chunk-size",
    metavar="SIZE",
    callback=optional_size,
    help="Chunk size of the demo's repository. [default: 4M; 64K with --qemu]",
)
@click.option(
    "--qemu",
    is_flag=True,
    help="Back up a running QEMU VM instead: a guest (KVM, else TCG) writing to two disks, "
    "or a qemu-storage-daemon with a writer where no guest can run.",
)
@click.option(
    "--qemu-daemon",
    is_flag=True,
    help="With --qemu: the qemu-storage-daemon and writer even where a guest could run.",
)
@click.pass_obj
def demo(
    settings: Settings,
    workdir: Path | None,
    keep: bool,
    drive_size: int | None,
    chunk_size: int | None,
    qemu: bool,
    qemu_daemon: bool,
) -> None:
    """Show the whole idea on a private two-node fleet, and check it.

    Uses the Redis at TXNBACKUP_REDIS_URL when one answers (under its own key prefixes,
    deleted at the end), else starts a private redis-server; starts one worker per node;
    then: a sample VM, a full backup, an incremental one, a backup whose drive fails
    mid-copy, one cancelled by revoking one task, an incremental that still has every
    change, and a restore compared byte for byte. Everything it starts is stopped.

    With --qemu, a running VM's life instead: full, incremental, a revoked backup rolled
    back in QEMU, the next incremental, and each snapshot restored and checked to be one
    instant across both disks.

    Exit code 0 only if every step came out as expected.
    """
    qemu = qemu or qemu_daemon
    drive_size = drive_size or (64 << 20 if qemu else 96 << 20)
    chunk_size = chunk_size or (64 << 10 if qemu else 4 << 20)
    check_chunk_size(chunk_size)
    if drive_size % chunk_size or drive_size < MIN_CHUNKS * chunk_size:
        raise InvalidInput(
            f"--drive-size {drive_size} must be a multiple of the chunk size {chunk_size} "
            f"and at least {MIN_CHUNKS} chunks"
        )
    options = DemoOptions(workdir, keep, drive_size, chunk_size, qemu, qemu_daemon)
    run_demo(options, settings)


COMMANDS = (demo,)
