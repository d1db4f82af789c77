"""`--json` is documented: every verb that has it is in docs/json.md, with the real shape."""

from __future__ import annotations

import dataclasses
import json
import re

import click

from tests.operators.fleet import REPO_ROOT
from txnbackup.status import BackupStatus, DriveStatus
from txnbackup_cli.main import txnbackup

DOC = (REPO_ROOT / "docs" / "json.md").read_text()


def test_every_verb_with_json_is_documented() -> None:
    ctx = click.Context(txnbackup)
    commands = {name: txnbackup.get_command(ctx, name) for name in txnbackup.list_commands(ctx)}
    verbs = [
        name
        for name, command in commands.items()
        if command is not None
        and any("--json" in p.opts for p in command.params if hasattr(p, "opts"))
    ]
    assert {"status", "watch", "backups", "snapshots", "verify"} <= set(verbs)
    missing = [v for v in verbs if not re.search(rf"`{v}\b", DOC)]
    assert missing == []


def test_the_documented_status_is_the_real_one() -> None:
    example = json.loads(DOC.split("```json", 1)[1].split("```", 1)[0])
    assert list(example) == [f.name for f in dataclasses.fields(BackupStatus)]
    assert list(example["drives"][0]) == [f.name for f in dataclasses.fields(DriveStatus)]
