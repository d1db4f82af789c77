"""Where a QEMU backup keeps its socket and overlays: settings and the checks on them."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from txnbackup.errors import InvalidInput, QemuDirUnusable
from txnbackup.qemu import dirs
from txnbackup.settings import QemuDirs, Settings
from txnbackup.trust import warnings

BACKUP = "0b8c6a4e-3f1d-4c56-9a0e-2d7f5b1c8e90"


@pytest.fixture
def short() -> Iterator[Path]:
    """A directory with a path short enough for unix sockets (pytest's tmp_path is not)."""
    path = Path(tempfile.mkdtemp(prefix="txnb-dirs-", dir="/tmp"))
    yield path
    shutil.rmtree(path)


def test_the_defaults_are_tmp_and_the_run_directory() -> None:
    settings = Settings.from_env({})
    assert settings.qemu == QemuDirs(Path("/tmp"), None)
    assert dirs.scratch_dir(settings.qemu, BACKUP) == dirs.run_dir(settings.qemu, BACKUP)
    assert dirs.nbd_socket(settings.qemu, BACKUP) == f"/tmp/txnbackup-qemu-{BACKUP}/nbd.sock"
    assert not dirs.problems(settings.qemu)


def test_the_settings_are_read_and_must_be_absolute() -> None:
    env = {"TXNBACKUP_QEMU_RUN_DIR": "/run/txnb", "TXNBACKUP_QEMU_SCRATCH_DIR": "/var/tmp"}
    assert Settings.from_env(env).qemu == QemuDirs(Path("/run/txnb"), Path("/var/tmp"))
    with pytest.raises(
        InvalidInput, match="TXNBACKUP_QEMU_SCRATCH_DIR='scratch' must be an absolute path"
    ):
        Settings.from_env({"TXNBACKUP_QEMU_SCRATCH_DIR": "scratch"})


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: None, "No such file or directory"),
        (lambda p: p.write_text(""), "is not a directory"),
        (lambda p: p.symlink_to("/tmp"), "is a symbolic link"),
        (lambda p: (p.mkdir(), p.chmod(0o777)), "writable by others and not sticky"),
    ],
    ids=["missing", "file", "link", "open"],
)
def test_a_root_that_is_unusable_or_open_to_tampering_is_named(
    short: Path, make: object, problem: str
) -> None:
    root = short / "root"
    assert callable(make)
    make(root)
    found = dirs.problems(QemuDirs(short, root))
    assert len(found) == 1 and f"QEMU scratch directory {root}: " in found[0]
    assert problem in found[0]
    assert any(problem in w for w in warnings(Settings(qemu=QemuDirs(root))))


def test_a_sticky_shared_root_is_fine_and_a_run_root_too_long_for_sockets_is_not(
    short: Path,
) -> None:
    shared = short / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    assert not dirs.problems(QemuDirs(shared))
    deep = short / ("d" * 60)
    deep.mkdir()
    assert "too long for unix sockets" in " ".join(dirs.problems(QemuDirs(deep)))


def test_a_backup_s_directory_must_be_private_to_us(tmp_path: Path) -> None:
    mine = tmp_path / "txnbackup-qemu-x"
    dirs.make_private("run", mine)
    assert mine.stat().st_mode & 0o777 == 0o700
    dirs.make_private("run", mine)  # a second delivery of the same begin
    mine.chmod(0o755)
    with pytest.raises(QemuDirUnusable, match="exists and is not private to us"):
        dirs.make_private("run", mine)
