"""The point-in-time view of all drives of a QEMU VM for one backup, and its two endings.

Begin is one QMP ``transaction``: per drive, a new persistent bitmap starts recording, the
previous one is disabled (the frozen bits this backup reads) and ``blockdev-backup
sync=none`` starts copying-before-write into a temporary overlay backed by the drive. Each
overlay is then exported over NBD with the frozen bitmap attached. Commit removes the frozen
bitmaps; rollback merges each into the new one. Both tear the exports, jobs and overlays
down first, since an exported bitmap cannot be touched.

Every step looks at QEMU's actual state and does only what is still needed, and every name
derives from the backup uuid (naming.py), so any process of the VM's node may repeat or
finish an ending another one started. Nothing that matters is kept in memory.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from txnbackup.action import Decision
from txnbackup.errors import QemuDirUnusable, QemuDriveError, QemuError, QmpCommandFailed
from txnbackup.qemu import dirs as dirs_
from txnbackup.qemu import naming
from txnbackup.qemu.bitmaps import Bitmap, BitmapState, bitmap_states, node_bitmaps
from txnbackup.qemu.discover import QemuDrive
from txnbackup.qemu.leftovers import Leftovers, find_leftovers
from txnbackup.qemu.qmp import QmpClient
from txnbackup.settings import DEFAULT_QEMU_RUN_DIR, QemuDirs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriveView:
    """Where one drive's point-in-time view is read: an NBD export and its frozen bitmap."""

    drive: QemuDrive
    socket: str
    export: str
    bitmap: str | None  # the frozen bits' name; None when the drive must be read in full

    @property
    def uri(self) -> str:
        return f"nbd+unix:///{self.export}?socket={self.socket}"


class FleeceSession:
    """One backup's fleecing of a VM's drives, reconstructible from its three arguments.

    ``nbd_socket`` names the process's NBD server when it already runs one (QEMU allows only
    one and cannot tell its address); without it the session starts and stops its own in a
    private run directory under ``run_root``. Overlays go to a private directory under
    ``scratch`` (default: the run directory). Every process ending the session must be given
    the same (the node's QemuDirs setting).
    """

    def __init__(
        self,
        qmp: QmpClient,
        backup: str,
        drives: Sequence[QemuDrive],
        *,
        nbd_socket: str | None = None,
        scratch: Path | None = None,
        run_root: Path = DEFAULT_QEMU_RUN_DIR,
    ) -> None:
        self.qmp, self.backup, self.drives = qmp, backup, tuple(drives)
        dirs = QemuDirs(run_root, scratch)
        self.run_dir = dirs_.run_dir(dirs, backup)
        self.own_server = nbd_socket is None
        self.socket = nbd_socket or dirs_.nbd_socket(dirs, backup)
        self.scratch = dirs_.scratch_dir(dirs, backup)
        self.new_bitmap = naming.bitmap_name(backup)

    def bitmap_states(self) -> dict[str, BitmapState]:
        """Each drive's bitmaps other than this backup's own new one."""
        nodes = {d.name: d.node for d in self.drives}
        return bitmap_states(self.qmp, nodes, exclude=[self.new_bitmap])

    def begin(self) -> dict[str, Decision]:
        """Freeze every drive at one instant; the decision per drive says what to read."""
        found = find_leftovers(self.qmp)
        if found:
            raise QemuError(
                self.qmp.path,
                f"an earlier backup's objects are still there: {found}; on the VM's node,"
                f" `txnbackup qemu-clean --qmp {self.qmp.path}@NODE` ends them",
            )
        states = self.bitmap_states()
        try:
            self._prepare()
            self.qmp.execute("transaction", {"actions": self._begin_actions(states)})
        except BaseException:
            self.teardown()
            raise
        try:
            for drive in self.drives:
                self._export(drive, states[drive.name].current)
        except BaseException:
            self.rollback()
            raise
        return {name: state.decision() for name, state in states.items()}

    def started(self) -> bool:
        """Whether QEMU holds anything of this session (an earlier begin got that far)."""
        left = self.leftovers()
        ours = {naming.export_name(self.backup, d.name) for d in self.drives}
        ours |= {naming.overlay_node(self.backup, d.name) for d in self.drives}
        if ours & {*left.exports, *left.jobs, *left.nodes}:
            return True
        per_node = node_bitmaps(self.qmp)
        return any(b.name == self.new_bitmap for d in self.drives for b in per_node.get(d.node, []))

    def view(self, drive: QemuDrive) -> DriveView:
        """The view of ``drive`` while the session runs, as QEMU shows it."""
        usable = [
            b.name
            for d, b in self._frozen(node_bitmaps(self.qmp))
            if d == drive and not b.recording and not b.inconsistent
        ]
        bitmap = usable[0] if len(usable) == 1 else None
        return DriveView(drive, self.socket, naming.export_name(self.backup, drive.name), bitmap)

    def commit(self) -> None:
        """Tear down, then remove the frozen bitmaps: the new ones carry on alone."""
        self.teardown()
        actions = [
            _remove(drive.node, b.name)
            for drive, b in self._frozen(node_bitmaps(self.qmp))
            if not b.recording or b.inconsistent  # a recording one means begin never happened
        ]
        self._transaction(actions, "commit")

    def rollback(self) -> None:
        """Tear down, then merge the new bitmap into the frozen one and let that record
        again, so that the next backup reads both their bits relative to the old base; where
        that cannot be, drop both (a full read next)."""
        self.teardown()
        per_node = node_bitmaps(self.qmp)
        actions: list[dict[str, Any]] = []
        for drive in self.drives:
            actions += self._rollback_actions(drive, per_node.get(drive.node, []))
        self._transaction(actions, "rollback")

    def teardown(self) -> None:
        """Remove exports, jobs, overlays and the run directory, whatever is still there."""
        try:
            self._teardown_qemu()
        finally:
            for drive in self.drives:
                naming.overlay_file(self.scratch, self.backup, drive.name).unlink(missing_ok=True)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _teardown_qemu(self) -> None:
        exports = {e["id"] for e in self.qmp.execute("query-block-exports")}
        for drive in self.drives:
            export = naming.export_name(self.backup, drive.name)
            if export in exports:
                # Hard: the session ends whatever a reader still connected is doing.
                self._ignore_gone("block-export-del", {"id": export, "mode": "hard"})
                self.qmp.wait_absent("query-block-exports", "id", export)
        jobs = {j["device"] for j in self.qmp.execute("query-block-jobs")}
        for drive in self.drives:
            job = naming.job_id(self.backup, drive.name)
            if job in jobs:
                self._ignore_gone("block-job-cancel", {"device": job, "force": True})
                self.qmp.wait_absent("query-block-jobs", "device", job)
        nodes = {n["node-name"] for n in self.qmp.execute("query-named-block-nodes")}
        for drive in self.drives:
            overlay = naming.overlay_node(self.backup, drive.name)
            if overlay in nodes:
                self.qmp.execute("blockdev-del", {"node-name": overlay})
        if self.own_server and (self.run_dir.exists() or self.started()):
            # Only a session that got as far as its run directory may have started the
            # server: a begin refused at once must not stop the one another session runs.
            self._stop_server()

    def leftovers(self) -> Leftovers:
        """Anything of ours still in QEMU (tests and the reaper look here)."""
        return find_leftovers(self.qmp)

    def _frozen(self, per_node: dict[str, list[Bitmap]]) -> list[tuple[QemuDrive, Bitmap]]:
        return [
            (d, b)
            for d in self.drives
            for b in per_node.get(d.node, [])
            if b.name != self.new_bitmap
        ]

    def _prepare(self) -> None:
        dirs_.make_private("run", self.run_dir)
        if self.scratch != self.run_dir:
            dirs_.make_private("scratch", self.scratch)
        if self.own_server:
            if len(self.socket.encode()) > dirs_.SOCKET_PATH_MAX:
                raise QemuDirUnusable("run", str(self.run_dir), "too long for a unix socket")
            # nbd-server-start still takes the legacy address form, with "data".
            addr = {"type": "unix", "data": {"path": self.socket}}
            self.qmp.execute("nbd-server-start", {"addr": addr})
        for drive in self.drives:
            path = naming.overlay_file(self.scratch, self.backup, drive.name)
            _create_overlay(drive, path)
            self._drive_command(
                drive,
                "blockdev-add",
                {
                    "driver": "qcow2",
                    "node-name": naming.overlay_node(self.backup, drive.name),
                    "file": {"driver": "file", "filename": str(path)},
                    # Without a backing node the export reads unchanged data as zeros.
                    "backing": drive.node,
                },
            )

    def _begin_actions(self, states: dict[str, BitmapState]) -> list[dict[str, Any]]:
        actions = []
        for drive in self.drives:
            state = states[drive.name]
            if state.current is None:
                actions += [_remove(drive.node, b.name) for b in state.bitmaps]
            else:
                actions.append(
                    _action("block-dirty-bitmap-disable", node=drive.node, name=state.current.name)
                )
            actions.append(
                _action(
                    "block-dirty-bitmap-add",
                    node=drive.node,
                    name=self.new_bitmap,
                    persistent=drive.persistent,
                )
            )
            actions.append(
                _action(
                    "blockdev-backup",
                    **{
                        "job-id": naming.job_id(self.backup, drive.name),
                        "device": drive.node,
                        "target": naming.overlay_node(self.backup, drive.name),
                        "sync": "none",
                        "filter-node-name": naming.filter_node(self.backup, drive.name),
                        "auto-dismiss": True,
                    },
                )
            )
        return actions

    def _export(self, drive: QemuDrive, frozen: Bitmap | None) -> None:
        name = naming.export_name(self.backup, drive.name)
        args: dict[str, Any] = {
            "type": "nbd",
            "id": name,
            "name": name,
            "node-name": naming.overlay_node(self.backup, drive.name),
            "writable": False,
        }
        if frozen is not None:
            # The {node, name} form: a plain name would be looked up along the backing chain.
            args["bitmaps"] = [{"node": drive.node, "name": frozen.name}]
        self._drive_command(drive, "block-export-add", args)

    def _rollback_actions(self, drive: QemuDrive, bitmaps: list[Bitmap]) -> list[dict[str, Any]]:
        new = [b for b in bitmaps if b.name == self.new_bitmap]
        frozen = [b for b in bitmaps if b.name != self.new_bitmap]
        if not new:
            if any(b.recording for b in frozen):
                # Begin never happened here: a recording bitmap of ours is either the old one
                # (left alone), or another backup's new one, whose session froze the others.
                return []
            # QEMU lost the new one (restarted): the frozen ones miss the writes since begin.
            return [_remove(drive.node, b.name) for b in frozen]
        if new[0].inconsistent or any(b.inconsistent for b in frozen):
            return [_remove(drive.node, b.name) for b in bitmaps]
        if len(frozen) == 1:
            # The frozen bitmap records again, holding the new one's bits too: its name still
            # names the backup whose snapshot is its base (the keeper's rule for ``used``).
            return [
                _action(
                    "block-dirty-bitmap-merge",
                    node=drive.node,
                    target=frozen[0].name,
                    bitmaps=[self.new_bitmap],
                ),
                _action("block-dirty-bitmap-enable", node=drive.node, name=frozen[0].name),
                _remove(drive.node, self.new_bitmap),
            ]
        merge = [
            _action(
                "block-dirty-bitmap-merge",
                node=drive.node,
                target=self.new_bitmap,
                bitmaps=[b.name for b in frozen],
            )
        ]
        return (merge if frozen else []) + [_remove(drive.node, b.name) for b in frozen]

    def _transaction(self, actions: list[dict[str, Any]], ending: str) -> None:
        if actions:
            self.qmp.execute("transaction", {"actions": actions})
        log.info(
            "backup %s: %s in QEMU at %s, %d bitmap action(s)",
            self.backup,
            ending,
            self.qmp.path,
            len(actions),
        )

    def _drive_command(self, drive: QemuDrive, command: str, args: dict[str, Any]) -> None:
        try:
            self.qmp.execute(command, args)
        except QmpCommandFailed as exc:
            raise QemuDriveError(
                drive.name, f"{command} failed in QEMU at {exc.args[0]}: {exc.desc}"
            ) from None

    def _ignore_gone(self, command: str, args: dict[str, Any]) -> None:
        # Between our query and the command another process may have finished the step.
        try:
            self.qmp.execute(command, args)
        except QmpCommandFailed as exc:
            log.info("backup %s: %s: %s (already being removed)", self.backup, command, exc.desc)

    def _stop_server(self) -> None:
        try:
            self.qmp.execute("nbd-server-stop")
        except QmpCommandFailed as exc:
            if "not running" not in exc.desc:
                raise


def _action(kind: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, "data": data}


def _remove(node: str, name: str) -> dict[str, Any]:
    return _action("block-dirty-bitmap-remove", node=node, name=name)


def _create_overlay(drive: QemuDrive, path: Path) -> None:
    try:
        done = subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(drive.size)],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise QemuDriveError(drive.name, f"cannot run qemu-img: {exc}") from None
    if done.returncode != 0:
        raise QemuDriveError(drive.name, f"cannot create overlay {path}: {done.stderr.strip()}")
