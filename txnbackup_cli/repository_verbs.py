"""Verbs over a repository alone (no Redis, no Celery): init, snapshots, restore, verify."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from txnbackup.blob import restore_blob
from txnbackup.errors import IntegrityError, PassphraseMissing, VerifyFailed
from txnbackup.keyfile import KeyMode, NewKey
from txnbackup.latest import resolve
from txnbackup.names import check_drive_name
from txnbackup.repository import Repository, check_chunk_size
from txnbackup.restore import RestoreResult, restore_all, restore_drive
from txnbackup.settings import Settings
from txnbackup.verify import verify_snapshot
from txnbackup_cli.options import ask_passphrase, json_option, open_repository, repo_option
from txnbackup_cli.output import print_json, print_table, warn
from txnbackup_cli.sizes import format_size, size_option_value
from txnbackup_cli.verify_view import report_json, show_report


@click.command()
@click.option(
    "--chunk-size",
    callback=size_option_value,
    default="4M",
    show_default=True,
    help="Chunk size: a power of two from 64K to 16M (plain bytes or K/M suffix).",
)
@click.option(
    "--encryption",
    type=click.Choice(["none", "repokey", "keyfile"]),
    default="none",
    show_default=True,
    help="Encrypt the repository; repokey keeps the passphrase-protected key in REPO, keyfile "
    "in $TXNBACKUP_KEY_FILE or ~/.config/txnbackup/keys/<repository id>.",
)
@click.argument("repo", type=click.Path(path_type=Path))
@click.pass_obj
def init(settings: Settings, chunk_size: int, encryption: str, repo: Path) -> None:
    """Create an empty repository in REPO (a new or empty directory).

    An encrypted repository's passphrase comes from TXNBACKUP_PASSPHRASE_FILE or
    TXNBACKUP_PASSPHRASE (or is asked for at a terminal), never from the command line.
    Export the key (`txnbackup key export FILE`) and keep it apart from the repository.
    """
    new_key = None
    if encryption != "none":
        check_chunk_size(chunk_size)
        passphrase = settings.passphrase
        if passphrase is None and sys.stdin.isatty():
            passphrase = ask_passphrase("New passphrase", confirm=True)
        if passphrase is None:
            raise PassphraseMissing(str(repo))
        new_key = NewKey(KeyMode(encryption), passphrase, settings.key_access())
    created = Repository.init(repo, chunk_size, new_key)
    click.echo(f"created repository {repo} (id {created.id}, chunk size {format_size(chunk_size)})")
    if new_key is not None:
        where = created.key_path(settings.key_access())
        click.echo(f"encrypted ({encryption}); key in {where}: export it and keep the copy safe")


@click.command()
@repo_option
@click.argument("vmid", required=False)
@json_option
@click.pass_obj
def snapshots(settings: Settings, repo: Path | None, vmid: str | None, as_json: bool) -> None:
    """List the published snapshots, newest first (of VM VMID only, when given).

    \b
    --json prints a list, newest first, of:
      {"snapshot": "vm/<vmid>/<time>", "vmid": str, "time": "<UTC RFC 3339>",
       "backup": "<backup uuid>", "size": <bytes, sum over drives>,
       "drives": [{"name": str, "size": <bytes>, "action": "new|used|invalid|not-used"}]}
    """
    found = _summaries(open_repository(settings, repo), vmid)
    if as_json:
        print_json(found)
    elif not found:
        click.echo("no snapshots")
    else:
        rows = [
            (
                s["snapshot"],
                ", ".join(d["name"] for d in s["drives"]),
                format_size(s["size"]),
                s["backup"],
            )
            for s in found
        ]
        print_table(("snapshot", "drives", "size", "backup"), rows)


def _summaries(repo: Repository, vmid: str | None) -> list[dict[str, Any]]:
    found = []
    for snapshot in repo.snapshots(vmid):
        try:
            manifest = repo.manifest(snapshot)
        except IntegrityError as exc:
            warn(f"skipping {snapshot}: {exc}")
            continue
        drives = [{"name": d.name, "size": d.size, "action": d.action} for d in manifest.drives]
        found.append(
            {
                "snapshot": str(snapshot),
                "vmid": snapshot.vmid,
                "time": snapshot.time,
                "backup": manifest.backup,
                "size": sum(d.size for d in manifest.drives),
                "drives": drives,
            }
        )
    return found


@click.command()
@repo_option
@click.argument("snapshot")
@click.argument("drive")
@click.argument("target", type=click.Path(path_type=Path), required=False)
@click.option(
    "--overwrite", is_flag=True, help="Replace TARGET if it exists; required for a block device."
)
@click.option(
    "--config", "config", metavar="NAME", help="Restore the config blob NAME instead of a drive."
)
@click.option(
    "--all",
    "all_drives",
    is_flag=True,
    help="Restore every drive of SNAPSHOT into the directory given instead of DRIVE.",
)
@click.pass_obj
def restore(
    settings: Settings,
    repo: Path | None,
    snapshot: str,
    drive: str,
    target: Path | None,
    overwrite: bool,
    config: str | None,
    all_drives: bool,
) -> None:
    """Write DRIVE of SNAPSHOT (vm/<vmid>/<time> or vm/<vmid>/latest) to TARGET.

    TARGET is a file (created sparse, appearing only complete) or a block device (written in
    place, opened exclusively, only with --overwrite; it must be at least as large as the
    drive). `restore SNAPSHOT --all DIR` writes every drive to DIR/<drive>.raw (DIR must
    exist; existing files are replaced only with --overwrite, and nothing is written when
    one is refused; all or nothing: a drive that fails leaves every file in DIR as it was).
    `restore SNAPSHOT --config NAME TARGET` writes the config blob NAME to the file TARGET
    instead.
    """
    repository = open_repository(settings, repo)
    snap = resolve(repository, snapshot)
    if config is not None or all_drives:
        if target is not None or (config is not None and all_drives):
            raise click.UsageError("with --config or --all give SNAPSHOT and one path only")
        if all_drives:
            for done in restore_all(repository, snap, Path(drive), overwrite=overwrite):
                _say_restored(done.name, str(snap), done.target, done.result)
            return
        size = restore_blob(repository, snap, str(config), Path(drive), overwrite=overwrite)
        click.echo(f"restored config {config} of {snap} to {drive}: {format_size(size)}")
        return
    if target is None:
        raise click.UsageError("missing argument 'TARGET'")
    check_drive_name(drive)
    _say_restored(
        drive,
        str(snap),
        target,
        restore_drive(repository, snap, drive, target, overwrite=overwrite),
    )


def _say_restored(drive: str, snapshot: str, target: Path, result: RestoreResult) -> None:
    click.echo(
        f"restored drive {drive} of {snapshot} to {target}: {format_size(result.size)}, "
        f"{result.chunks} chunks ({result.zero_chunks} all-zero)"
    )


@click.command()
@repo_option
@click.argument("snapshot")
@json_option
@click.pass_obj
def verify(settings: Settings, repo: Path | None, snapshot: str, as_json: bool) -> None:
    """Check that every chunk of SNAPSHOT is present, decodes and matches its digest.

    Each bad chunk is listed by drive and byte offset; the exit code is 5 when anything is
    bad. A damaged index or blob is listed with offset "index" (JSON: null).

    \b
    --json prints:
      {"snapshot": "vm/<vmid>/<time>", "ok": bool, "chunks": <index entries checked>,
       "problems": [{"drive": str, "offset": <bytes> or null, "digest": "<sha256 hex>",
                     "reason": str}]}
    """
    repository = open_repository(settings, repo)
    snap = resolve(repository, snapshot)
    report = verify_snapshot(repository, snap)
    if as_json:
        print_json(report_json(report))
    else:
        show_report(report)
    if not report.ok:
        raise VerifyFailed(str(snap), len(report.problems))


COMMANDS = (init, snapshots, restore, verify)
