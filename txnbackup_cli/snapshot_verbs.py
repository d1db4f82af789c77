"""Looking into one snapshot: show, cat (the repository alone; no Redis, no Celery)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from txnbackup.blob import read_blob
from txnbackup.latest import resolve
from txnbackup.manifest import Manifest
from txnbackup.protection import is_protected
from txnbackup.repository import Repository
from txnbackup.settings import Settings
from txnbackup.snapshot import SnapshotId
from txnbackup.verify import failed_verification
from txnbackup_cli.options import json_option, open_repository, repo_option
from txnbackup_cli.output import print_json, print_table
from txnbackup_cli.sizes import format_size


@click.command()
@repo_option
@click.argument("snapshot")
@json_option
@click.pass_obj
def show(settings: Settings, repo: Path | None, snapshot: str, as_json: bool) -> None:
    """Show SNAPSHOT (vm/<vmid>/<time> or vm/<vmid>/latest): its drives and config blobs.

    \b
    --json prints:
      {"snapshot": str, "vmid": str, "time": str, "backup": "<uuid>", "protected": bool,
       "verify_failed": bool,
       "drives": [{"name": str, "size": int, "chunks": int, "action": str, "dirty": int,
                   "transferred": int, "zero_bytes": int, "reused": int, "stored": int}],
       "configs": [{"name": str, "size": int, "sha256": str}]}
    """
    repository = open_repository(settings, repo)
    snap = resolve(repository, snapshot)
    data = _describe(repository, snap, repository.manifest(snap))
    if as_json:
        print_json(data)
        return
    flags = [f for f in ("protected", "verify_failed") if data[f]]
    click.echo(f"{snap}  backup {data['backup']}{'  ' + ', '.join(flags) if flags else ''}")
    print_table(
        ("drive", "size", "chunks", "action", "dirty", "transferred", "zero", "reused"),
        [
            (
                d["name"],
                format_size(d["size"]),
                str(d["chunks"]),
                d["action"],
                *(format_size(d[k]) for k in ("dirty", "transferred", "zero_bytes", "reused")),
            )
            for d in data["drives"]
        ],
    )
    if data["configs"]:
        print_table(
            ("config", "size"), [(c["name"], format_size(c["size"])) for c in data["configs"]]
        )


@click.command()
@repo_option
@click.argument("snapshot")
@click.argument("name")
@click.pass_obj
def cat(settings: Settings, repo: Path | None, snapshot: str, name: str) -> None:
    """Write the config blob NAME of SNAPSHOT to stdout, checked against its checksum."""
    repository = open_repository(settings, repo)
    data = read_blob(repository, resolve(repository, snapshot), name)
    click.echo(data, nl=False)  # bytes go to the binary stream as they are


def _describe(repo: Repository, snapshot: SnapshotId, manifest: Manifest) -> dict[str, Any]:
    return {
        "snapshot": str(snapshot),
        "vmid": snapshot.vmid,
        "time": snapshot.time,
        "backup": manifest.backup,
        "protected": is_protected(repo, snapshot),
        "verify_failed": failed_verification(repo, snapshot),
        "drives": [
            {
                "name": d.name,
                "size": d.size,
                "chunks": d.chunks,
                "action": d.action,
                "dirty": d.stats.dirty,
                "transferred": d.stats.transferred,
                "zero_bytes": d.stats.zero_bytes,
                "reused": d.stats.reused,
                "stored": d.stats.stored,
            }
            for d in manifest.drives
        ],
        "configs": [{"name": b.name, "size": b.size, "sha256": b.sha256} for b in manifest.blobs],
    }


COMMANDS = (show, cat)
