"""The tools under test, behind one small interface: init, backup, restore.

txnbackup runs through its real pipeline (producer, Redis, worker processes, commit), either
from Python (the API path) or as the ``txnbackup`` command a user types (the CLI path); restic
and borg run as the Debian packages' commands with their defaults, borg without encryption
(restic cannot be told not to encrypt). txnbackup also backs up into an encrypted repository
(the API path, ``txnbackup-enc``). Every tool backs up the same files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench.fleet import BENCH_PASSPHRASE, Fleet
from txnbackup.drive import Drive
from txnbackup.keyfile import KdfParams, KeyAccess, KeyMode, NewKey
from txnbackup.repository import Repository
from txnbackup.restore import DRIVE_FILE_SUFFIX
from txnbackup_cli.demo.services import worker_program

BACKUP_TIMEOUT = 3600.0  # seconds a single backup may take before the benchmark gives up
POLL = 0.005  # seconds between looks at a backup's status (the submit->done resolution)


class BenchError(Exception):
    """A measured operation did not do what it should; the benchmark stops."""


class Tool(Protocol):
    name: str
    note: str

    def init(self, repo: Path) -> None: ...

    def backup(self, repo: Path) -> None: ...

    def restore(self, repo: Path, into: Path) -> list[Path]:
        """Restore the latest backup of the drives below ``into``; the restored files, in the
        drives' order."""
        ...


@dataclass
class TxnbackupTool:
    """What both ways of running txnbackup (API, CLI) share: the fleet, the drives, the snapshot."""

    fleet: Fleet
    drives: list[Drive]
    vmid: str
    name: str = "txnbackup"
    note: str = ""
    snapshot: str = ""

    def init(self, repo: Path) -> None:
        Repository.init(repo)


@dataclass
class Txnbackup(TxnbackupTool):
    """The API path: the producer submits, the benchmark polls every ``POLL`` seconds."""

    note: str = "producer -> Redis -> worker -> commit; fixed 4 MiB chunks, zstd-1, no encryption"

    def backup(self, repo: Path) -> None:
        self.snapshot = run_backup(self.fleet, self.vmid, self.drives, repo)

    def restore(self, repo: Path, into: Path) -> list[Path]:
        return restore_each(self.fleet.env, repo, self.snapshot, self.drives, into)


@dataclass
class TxnbackupEncrypted(Txnbackup):
    """The API path into an encrypted repository. Every full run gets a new, empty repository,
    all with the first one's id and key (copied): the producer and the worker unlock the key
    once, in the first run, as a long-running worker does once per repository."""

    name: str = "txnbackup-enc"
    note: str = (
        "the API path into an encrypted repository: repokey, AES-256-GCM, HMAC-SHA-256 chunk "
        "ids; one key for every run (the first run pays the unlock, scrypt n=2^14 here)"
    )
    first: Path | None = None

    def init(self, repo: Path) -> None:
        if self.first is None:
            passphrase = BENCH_PASSPHRASE.encode()
            key = NewKey(KeyMode.REPOKEY, passphrase, KeyAccess(), KdfParams(n=2**14))
            Repository.init(repo, encryption=key)
            self.first = repo
            return
        repo.mkdir(mode=0o700)
        for sub in ("chunks", "vm", "staging"):
            (repo / sub).mkdir(mode=0o700)
        for name in ("key", "config.json"):  # config.json last: then it is a repository
            shutil.copy2(self.first / name, repo / name)


@dataclass
class TxnbackupCli(TxnbackupTool):
    """What a user types: ``txnbackup backup VMID --drive ... --wait``, one process."""

    note: str = "the txnbackup command: backup --wait (--json for the snapshot id), restore --all"

    def backup(self, repo: Path) -> None:
        argv = [str(worker_program()), "backup", self.vmid, "--repo", str(repo), "--wait"]
        for d in self.drives:
            argv += ["--drive", f"{d.name}={d.path}@{d.node}"]
        status = json.loads(run([*argv, "--json"], self.fleet.env))
        if status.get("status") != "done":
            raise BenchError(f"{' '.join(argv)} ended {status.get('status')}: {status}")
        self.snapshot = str(status["snapshot"])

    def restore(self, repo: Path, into: Path) -> list[Path]:
        """Every drive with one ``txnbackup restore SNAPSHOT --all DIR``, as a user would."""
        argv = [str(worker_program()), "restore", "--repo", str(repo), self.snapshot]
        run([*argv, "--all", str(into)], self.fleet.env)
        return [into / f"{d.name}{DRIVE_FILE_SUFFIX}" for d in self.drives]


def run_backup(fleet: Fleet, vmid: str, drives: list[Drive], repo: Path) -> str:
    """Submit a backup and wait for its end; return its snapshot id."""
    backup = fleet.producer.submit(vmid, drives, repository=repo)
    status = fleet.producer.wait(backup, timeout=BACKUP_TIMEOUT, interval=POLL)
    if status.status != "done":
        raise BenchError(f"txnbackup backup {backup} ended {status.status}: {status.errmsg}")
    return status.snapshot


def restore_each(
    env: dict[str, str], repo: Path, snapshot: str, drives: list[Drive], into: Path
) -> list[Path]:
    """One ``txnbackup restore`` per drive, one after another."""
    targets = []
    for d in drives:
        target = into / Path(d.path).name
        run(
            [str(worker_program()), "restore", "--repo", str(repo), snapshot, d.name, str(target)],
            env,
        )
        targets.append(target)
    return targets


@dataclass
class Restic:
    images: list[Path]
    cache: Path
    name: str = "restic"
    note: str = (
        "defaults: content-defined chunks, AES-256 encryption (always on), repo format 'stable'"
    )
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(self.cache)}

    def init(self, repo: Path) -> None:
        run(["restic", "-r", str(repo), "init", "-q"], self.env)

    def backup(self, repo: Path) -> None:
        run(["restic", "-r", str(repo), "backup", "-q", *map(str, self.images)], self.env)

    def restore(self, repo: Path, into: Path) -> list[Path]:
        run(["restic", "-r", str(repo), "restore", "latest", "-q", "--target", str(into)], self.env)
        return [into / image.relative_to("/") for image in self.images]


@dataclass
class Borg:
    images: list[Path]
    base: Path
    name: str = "borg"
    note: str = "defaults (buzhash chunks, lz4) with --encryption none"
    env: dict[str, str] = field(default_factory=dict)
    archives: int = 0

    def __post_init__(self) -> None:
        self.env = {
            **os.environ,
            "BORG_BASE_DIR": str(self.base),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def init(self, repo: Path) -> None:
        run(["borg", "init", "--encryption", "none", str(repo)], self.env)

    def backup(self, repo: Path) -> None:
        self.archives += 1
        archive = f"{repo}::b{self.archives}"
        run(["borg", "create", archive, *map(str, self.images)], self.env)

    def restore(self, repo: Path, into: Path) -> list[Path]:
        run(["borg", "extract", f"{repo}::b{self.archives}"], self.env, cwd=into)
        return [into / image.relative_to("/") for image in self.images]


def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run a command to its end; its standard output."""
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout else "?"


def find_peers(install: bool) -> tuple[list[str], dict[str, str]]:
    """restic and borg when present (installing the Debian packages if asked and possible);
    the names found and, for each one missing, why it is skipped."""
    wanted = {"restic": "restic", "borg": "borgbackup"}
    missing = [cmd for cmd in wanted if shutil.which(cmd) is None]
    if missing and install:
        _apt_install([wanted[cmd] for cmd in missing])
    found = [cmd for cmd in wanted if shutil.which(cmd)]
    skipped = {
        cmd: f"`{cmd}` not on PATH (Debian package {wanted[cmd]}; "
        + ("apt-get install failed)" if install else "not installed: --no-install)")
        for cmd in wanted
        if cmd not in found
    }
    return found, skipped


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    argv = ["apt-get", "install", "-y", "-q", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(argv, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        subprocess.run(argv, env=env, capture_output=True, check=False)
