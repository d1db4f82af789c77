"""The demo's steps, in order; the two that break a backup on purpose are in ``faults``."""

from __future__ import annotations

from collections.abc import Callable

from rich.table import Table

from txnbackup.repository import Repository
from txnbackup.restore import restore_drive
from txnbackup.snapshot import SnapshotId
from txnbackup.verify import verify_snapshot
from txnbackup_cli.demo.faults import failing_backup, revoked_backup
from txnbackup_cli.demo.narration import sizes
from txnbackup_cli.demo.scenario import DRIVES, Scenario, drive
from txnbackup_cli.demo.vm import content, same_content, vm_config
from txnbackup_cli.demo.walkthrough import VMID
from txnbackup_cli.sizes import format_size


def sample_vm(s: Scenario) -> None:
    """VM 100 gets three raw drives on two nodes (each node has a worker that reads only its
    own drives), a config file, and an empty repository."""
    Repository.init(s.repo, s.vm.chunk_size)
    for seed, spec in enumerate(DRIVES, start=1):
        s.vm.create(spec, s.drive_size, seed)
    s.config.write_text(vm_config(VMID, s.vm.drives, s.drive_size))
    s.narrator.show(_drive_table(s))
    s.narrator.say(
        f"repository {s.repo} (chunk size {format_size(s.vm.chunk_size)}), config {s.config.name}"
    )
    sizes_ok = all(s.vm.size(spec.name) == s.drive_size for spec in DRIVES)
    s.check(sizes_ok, f"3 drives of {format_size(s.drive_size)}, {s.chunks} chunks each")


def _drive_table(s: Scenario) -> Table:
    table = Table("drive", "node", "content", "path", box=None, padding=(0, 2))
    for spec in DRIVES:
        table.add_row(spec.name, spec.node, spec.about, str(s.vm.path(spec.name)))
    return table


def full_backup(s: Scenario) -> None:
    """No drive has a dirty bitmap yet (action 'new'), so every chunk is read. The drives are
    copied one after another, each by the worker of its node; all-zero chunks are counted,
    not stored; the snapshot is published only after the last drive."""
    status = s.committed_backup()
    s.check(all(d.action == "new" for d in status.drives), "every bitmap action 'new'")
    s.check(status.dirty == status.total, "every byte read", sizes(("read", status.dirty)))
    zeros = drive(status, "scsi2")
    s.check(zeros.zero_bytes == zeros.size, "the all-zero drive needed no chunk stored")


def incremental_backup(s: Scenario) -> None:
    """The guest writes to two drives; after each write completes, the writer reports the
    range with mark_dirty. The next backup reads only the chunks marked dirty and takes every
    other chunk's digest from the last snapshot."""
    _guest_writes(s)
    status = s.committed_backup(incremental=True)
    copied = drive(status, "scsi2")
    s.check(
        copied.reused >= 2 * s.vm.chunk_size,
        "the copied chunks were found in the repository: reused, not stored again",
        sizes(("reused", copied.reused)),
    )
    share = f"{100 * status.dirty / status.total:.1f} %"
    s.narrator.say(f"read {format_size(status.dirty)} of {format_size(status.total)} ({share})")


def _guest_writes(s: Scenario) -> None:
    cs = s.vm.chunk_size
    s.vm.write("scsi0", s.offset(0.1, 100), next(content("text", 64 << 10, 31)))
    s.vm.write("scsi0", s.offset(0.4) + cs - 2048, next(content("text", 4096, 32)))
    s.vm.write("scsi2", s.offset(0.25), s.vm.read("scsi1", 0, 2 * cs))
    s.vm.write("scsi2", s.offset(0.8, 512), b"hello from the guest\n" * 100)
    s.narrator.say(
        "guest: appends 64 KiB of logs to scsi0 and writes 4 KiB across a chunk boundary; "
        f"copies {format_size(2 * cs)} of the database disk to scsi2; writes a small file there"
    )


def catch_up_backup(s: Scenario) -> None:
    """One more incremental backup. The failed and the cancelled backup returned their frozen
    bits, and the write made during the cancelled one went to the active bitmap: this backup
    must read every chunk changed since the snapshot of step 3, and only those."""
    status = s.committed_backup(incremental=True)
    if status.reused:
        s.narrator.say(
            f"{format_size(status.reused)} of it was reused: chunks the failed and the "
            "cancelled backup had stored stay in the repository (unreferenced until now)"
        )
    left = {name: s.producer.rt.bitmaps.dirty_chunks(VMID, name) for name in s.vm.drives}
    s.check(not any(left.values()), "every bitmap is clean again", left)


def restore_and_verify(s: Scenario) -> None:
    """Every drive of the last snapshot is restored to a new file and compared byte for byte
    with the drive it was taken from; then every chunk of the snapshot is verified."""
    snapshot = SnapshotId.parse(s.snapshots[-1])
    s.narrator.say(f"snapshot {snapshot}")
    repo = Repository.open(s.repo)
    target_dir = s.workdir / "restore"
    target_dir.mkdir()
    for name in s.vm.drives:
        target = target_dir / f"{name}.raw"
        result = restore_drive(repo, snapshot, name, target)
        same = same_content(s.vm.path(name), target)
        s.check(same, f"{name}: {format_size(result.size)} restored, identical to the source")
    report = verify_snapshot(repo, snapshot)
    s.check(report.ok, f"verify: {report.chunks} chunks and the config blob good", report.problems)
    s.check(len(s.published()) == 3, f"repository holds 3 snapshots of VM {VMID}", s.published())


Step = Callable[[Scenario], None]
STEPS: tuple[tuple[str, Step], ...] = (
    ("A sample VM", sample_vm),
    ("Full backup", full_backup),
    ("Incremental backup", incremental_backup),
    ("A drive fails mid-copy", failing_backup),
    ("Revoking one task", revoked_backup),
    ("Nothing was lost", catch_up_backup),
    ("Restore and verify", restore_and_verify),
)
