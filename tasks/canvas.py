"""The canvas of one backup: the drives in a chain, the chain the only chord part.

    chord([chain(copy d1 -> copy d2 -> ... -> copy dn)], commit).on_error(rollback)

A running QEMU VM's backup starts the chain with ``begin`` (freeze in QEMU, on the VM's node)
and runs every task on that node's queue. When its drives are discovered by begin, the chain
is just ``begin``, which replaces itself with the copies it found (tasks/begin.py).

The chain is wrapped in a list because a chain given directly as a chord header is unrolled
into a group, whose drives would run in parallel. Every signature is immutable: drive tasks
pass nothing along; their results live in the staging area.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from celery import Celery, chain, chord, uuid
from celery.canvas import Signature

from tasks.names import BEGIN, COMMIT, COPY_DRIVE, ROLLBACK
from tasks.queues import finishing_queue, node_queue
from txnbackup.transaction import BackupPlan


@dataclass(frozen=True)
class TaskIds:
    """Chosen before dispatch, so a revoke of any of them can be mapped to the backup.
    ``begin`` is '' for a file backup; ``all`` keeps copies first and commit last."""

    copies: tuple[str, ...]
    commit: str
    begin: str = ""

    @classmethod
    def new(cls, drives: int, *, begin: bool = False) -> TaskIds:
        return cls(tuple(uuid() for _ in range(drives)), uuid(), uuid() if begin else "")

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.copies, *([self.begin] if self.begin else []), self.commit)


def copies(plan: BackupPlan, ids: Sequence[str], app: Celery) -> list[Signature]:
    n = len(plan.drives)
    return [
        app.signature(
            COPY_DRIVE,
            (plan.backup, d.name),
            {"vm": plan.vmid, "part": f"{i}/{n}"},
            options=_shown(plan, f"drive {d.name} ({i}/{n})", f", node {d.node}"),
            immutable=True,
        ).set(queue=node_queue(d.node), task_id=task_id)
        for i, (d, task_id) in enumerate(zip(plan.drives, ids, strict=True), start=1)
    ]


def build(plan: BackupPlan, ids: TaskIds, app: Celery) -> Signature:
    """The canvas, bound to ``app`` (the producer's, configured from its own settings)."""
    steps = copies(plan, ids.copies, app)
    if plan.qemu is not None:
        begin = app.signature(
            BEGIN,
            (plan.backup,),
            {"vm": plan.vmid, "discover": not plan.drives},
            options=_shown(plan, "begin in QEMU", f", node {plan.qemu.node}"),
            immutable=True,
        ).set(queue=node_queue(plan.qemu.node), task_id=ids.begin)
        steps.insert(0, begin)
    queue = finishing_queue(plan)
    body = app.signature(
        COMMIT,
        (plan.backup,),
        options=_shown(plan, f"commit {len(plan.drives) or 'all'} drive(s)"),
        immutable=True,
    ).set(queue=queue, task_id=ids.commit)
    errback = app.signature(
        ROLLBACK, (plan.backup,), options=_shown(plan, "rollback"), immutable=True
    ).set(queue=queue)
    return chord([chain(*steps, app=app)], body, app=app).on_error(errback)


def _shown(plan: BackupPlan, what: str, where: str = "") -> dict[str, str]:
    """How monitors (Flower, `celery inspect`) show a task: ids and names only, never data."""
    return {"argsrepr": f"vm {plan.vmid}, {what}", "kwargsrepr": f"backup {plan.backup}{where}"}
