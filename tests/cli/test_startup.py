"""What `txnbackup backup` loads: its own verbs and what a submit needs, nothing more.

Start-up is most of what the command adds to a backup (issue 16: within 0.5 s of the API
path, docs/performance.md); these tests guard the imports that made it shorter, never a time.
`txnbackup --help` still lists every verb, each verb module's commands included.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import click

from tasks.producer import Producer
from tests.fleet import SampleVM, env_for_workers
from tests.fleet_plugin import FLEET_ENV
from txnbackup.repository import Repository
from txnbackup_cli.main import VERBS, txnbackup

TXNBACKUP = str(Path(sys.executable).parent / "txnbackup")
MIB = 1024 * 1024

# Modules a `backup` that prints JSON has no use for: the other verbs, rich (people's
# output), the worker layer and its metrics, the QMP client (only for --qmp), Celery's worker
# (its Django fix-up), the ciphers of encrypted repositories (txnbackup.aead: redis-py looks
# at cryptography's version only), and what only tests, the demo or Flower use.
NOT_FOR_BACKUP = (
    "rich",
    "cryptography.hazmat",
    "workers",
    "prometheus_client",
    "celery.worker",
    "celery.fixups",
    "nbd",
    "txnbackup.qemu.qmp",
    "txnbackup.qemu.begin",
    "txnbackup_cli.demo",
    "txnbackup_cli.demo_verbs",
    "txnbackup_cli.repository_verbs",
    "txnbackup_cli.retention_verbs",
    "txnbackup_cli.gc_verbs",
    "txnbackup_cli.check_verbs",
    "txnbackup_cli.key_verbs",
    "txnbackup_cli.snapshot_verbs",
    "txnbackup_cli.tracker_verbs",
    "txnbackup_cli.status_view",
    "txnbackup_cli.progress_view",
    "hypothesis",
    "pytest",
    "flower",
    "tornado",
)

# The command's own imports before it submits: the program, the `backup` verb as the group
# resolves it, and the producer (txnbackup_cli.fleet imports it when the verb runs).
BEFORE_SUBMIT = """
import sys, click
from txnbackup_cli.main import txnbackup
txnbackup.get_command(click.Context(txnbackup), "backup")
import tasks.producer
print("\\n".join(sorted(sys.modules)))
"""

# The installed script run as is, reporting every module it imported when it exits.
RECORDING = """
import atexit, json, runpy, sys
report, script = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(report, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def unwanted(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(f"{p}.") for p in NOT_FOR_BACKUP)]


def test_the_backup_verb_loads_only_what_a_submit_needs() -> None:
    # When a Python loads what `txnbackup backup` loads before it submits
    done = subprocess.run(
        [sys.executable, "-c", BEFORE_SUBMIT], capture_output=True, text=True, check=True
    )
    modules = done.stdout.split()

    # Then the backup verbs and the producer are there, and nothing of the list above
    assert {"txnbackup_cli.backup_verbs", "tasks.producer", "click"} <= set(modules)
    assert unwanted(modules) == []


def test_backup_wait_json_imports_no_rich_nor_worker_modules(
    producer: Producer, vm: SampleVM, pipeline_repo: Repository, tmp_path: Path
) -> None:
    # Given a 2-drive VM on the fleet's two nodes
    vm.add_drive("scsi0", MIB, seed=31)
    vm.add_drive("scsi1", MIB, seed=32, node="node2")
    drives = [f"--drive={d.name}={d.path}@{d.node}" for d in vm.drives]
    report = tmp_path / "modules.json"

    # When the installed command backs it up with --wait --json, recording its imports
    done = subprocess.run(
        [sys.executable, "-c", RECORDING, str(report), TXNBACKUP, "backup", vm.vmid, *drives,
         "--repo", str(pipeline_repo.path), "--wait", "--json"],
        capture_output=True, text=True, timeout=120, env=env_for_workers(FLEET_ENV), check=False,
    )  # fmt: skip

    # Then the backup is done, and the command never imported what JSON output has no use for
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "done"
    modules = json.loads(report.read_text())
    assert "tasks.producer" in modules
    assert unwanted(modules) == []


def test_help_lists_every_verb_of_every_verb_module() -> None:
    # Given every command that the verb modules define
    defined = {
        command.name
        for module in set(VERBS.values())
        for command in importlib.import_module(f"txnbackup_cli.{module}").COMMANDS
    }

    # When a user asks for the program's help
    done = subprocess.run([TXNBACKUP, "--help"], capture_output=True, text=True, check=True)
    listed = done.stdout.split("Commands:", 1)[1].split()

    # Then each is listed, by the name the group loads it under
    assert defined <= set(listed)
    assert defined == set(VERBS)


def test_each_verb_runs_from_a_fresh_start() -> None:
    # When each verb's help is asked of a new process (its module loaded for it alone)
    for name in VERBS:
        argv = [TXNBACKUP, name, "--help"]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)

        # Then it is that verb's help
        assert done.returncode == 0, (name, done.stderr)
        assert done.stdout.startswith(f"Usage: txnbackup {name} "), name


def test_a_verb_resolves_to_a_command_of_its_module() -> None:
    ctx = click.Context(txnbackup)
    for name, module in VERBS.items():
        command = txnbackup.get_command(ctx, name)
        assert command in importlib.import_module(f"txnbackup_cli.{module}").COMMANDS, name
