"""The QEMU row: the same image backed up as a file drive and as a running QEMU's qcow2 drive
read over NBD (issue 14), then an incremental after a 1% change read from QEMU's own dirty
bitmap.

The qcow2 holds the raw image's bytes (``qemu-img convert``) and is served by a
qemu-storage-daemon (its image opened with cache=none, Proxmox VE's default for a guest's
disks) whose writable NBD export stands in for the guest; the 1% change (the
mix's clustered and scattered writes, one after the other) goes through that export, so only
QEMU's bitmap knows it. The two full backups alternate ``runs`` times (file drive, then NBD:
both in the same conditions), each into a new repository, the page cache dropped before each
where the kernel lets us; the row's figures are the medians. The incrementals follow the last
NBD full backup.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bench.fleet import NODE, Fleet
from bench.image import MIXES, Generator, Write
from bench.measure import PageCache, timed
from bench.tools import BACKUP_TIMEOUT, POLL, BenchError, run_backup
from txnbackup.constants import DEFAULT_CHUNK_SIZE
from txnbackup.drive import Drive
from txnbackup.qemu.vm import QemuVM
from txnbackup.repository import Repository
from txnbackup.status import BackupStatus
from txnbackup_cli.demo.qemu.run import qemu_problem

Say = Callable[[str], None]
FILE_VMID, QEMU_VMID = "400", "401"


def measure_qemu(
    fleet: Fleet, workdir: Path, size: int, seed: int, cache: PageCache, say: Say, runs: int = 1
) -> dict[str, object]:
    """``{"skipped": why}`` without QEMU; else the timings and the incrementals' reads."""
    problem = qemu_problem()
    if problem:
        return {"skipped": problem}
    qdir = workdir / "qemu"
    qdir.mkdir()
    generator = Generator(seed, MIXES["default"])
    raw, qcow2 = qdir / "drive.raw", qdir / "drive.qcow2"
    say(f"QEMU: writing the {size >> 20} MiB image, then the same bytes as qcow2")
    generator.write_image(raw, size)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True)
    out: dict[str, object] = {"size": size}
    with _daemon(qdir, qcow2) as daemon:
        vm = QemuVM(daemon.qmp, NODE, daemon.nbd)
        file_full, qemu_full = [], []
        for run in range(1, runs + 1):
            say(f"QEMU: full backup {run}/{runs} of the image as a file drive")
            cache.drop()
            file_full.append(timed(_file_backup, fleet, raw, qdir / f"repo-file-{run}"))
            repo = qdir / f"repo-qemu-{run}"
            Repository.init(repo)
            say(f"QEMU: full backup {run}/{runs} of the qcow2 through NBD (qemu-storage-daemon)")
            cache.drop()
            qemu_full.append(timed(_qemu_backup, fleet, vm, repo))
        raw.unlink()  # room: the qcow2 holds the same bytes
        out |= {"file_full": statistics.median(file_full), "file_full_runs": file_full}
        out |= {"qemu_full": statistics.median(qemu_full), "qemu_full_runs": qemu_full}
        for case in ("clustered", "scattered"):
            writes = getattr(generator, case)(size, 0)
            daemon.write(writes)
            say(f"QEMU: incremental after a {case} 1% change written through the guest export")
            cache.drop()
            status = _qemu_backup(fleet, vm, repo)
            out[case] = {
                "read": status.transferred,
                "dirty": status.dirty,
                "dirty_chunks_bytes": _chunk_bytes(writes, size),
                "action": status.drives[0].action,
            }
    return out


def _file_backup(fleet: Fleet, image: Path, repo: Path) -> None:
    Repository.init(repo)
    run_backup(fleet, FILE_VMID, [Drive("scsi0", str(image), NODE)], repo)


def _qemu_backup(fleet: Fleet, vm: QemuVM, repo: Path) -> BackupStatus:
    backup = fleet.producer.submit(QEMU_VMID, [], repository=repo, qmp=vm)
    status = fleet.producer.wait(backup, timeout=BACKUP_TIMEOUT, interval=POLL)
    if status.status != "done":
        raise BenchError(f"QEMU backup {backup} ended {status.status}: {status.errmsg}")
    return status


def _chunk_bytes(writes: Sequence[Write], size: int) -> int:
    """Bytes of the repository chunks the writes touched: what an exact reader reads."""
    cs = DEFAULT_CHUNK_SIZE
    touched = {
        i for w in writes for i in range(w.offset // cs, (w.offset + len(w.data) - 1) // cs + 1)
    }
    return sum(min(cs, size - i * cs) for i in touched)


class _Daemon:
    def __init__(self, qdir: Path) -> None:
        self.qmp = str(qdir / "qmp.sock")
        self.nbd = str(qdir / "nbd.sock")

    def write(self, writes: Sequence[Write]) -> None:
        import nbd  # noqa: PLC0415  (qemu_problem said it imports)

        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///guest?socket={self.nbd}")
        try:
            for w in writes:
                h.pwrite(w.data, w.offset)
            h.flush()
        finally:
            h.shutdown()


@contextmanager
def _daemon(qdir: Path, image: Path) -> Iterator[_Daemon]:
    if len(str(qdir / "qmp.sock")) > 100:  # unix socket paths: under 108 bytes
        raise BenchError(f"work directory {qdir} too long for QEMU's sockets")
    daemon = _Daemon(qdir)
    args = ["setpriv", "--pdeathsig", "TERM", "qemu-storage-daemon"]
    args += ["--nbd-server", f"addr.type=unix,addr.path={daemon.nbd}"]
    # As Proxmox VE runs a guest's disks by default (cache=none): QEMU reads the image past
    # the host's page cache, as the engine reads the file drive it is compared with.
    file_node = f"driver=file,node-name=drive0-file,filename={image},cache.direct=on,aio=native"
    args += ["--blockdev", file_node]
    args += ["--blockdev", "driver=qcow2,node-name=drive0,file=drive0-file"]
    args += ["--export", "type=nbd,id=guest,node-name=drive0,name=guest,writable=on"]
    args += ["--chardev", f"socket,id=qmp0,path={daemon.qmp},server=on,wait=off"]
    args += ["--monitor", "chardev=qmp0"]
    with open(qdir / "qsd.log", "ab") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while not (Path(daemon.qmp).exists() and Path(daemon.nbd).exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"qemu-storage-daemon did not start; see {qdir / 'qsd.log'}")
            time.sleep(0.01)
        yield daemon
    finally:
        proc.terminate()  # this daemon only
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for repo in qdir.glob("repo-*"):
            shutil.rmtree(repo, ignore_errors=True)
