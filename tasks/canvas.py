"""The canvas of one backup: the drives in a chain, the chain the only chord part.

    chord([chain(copy d1 -> copy d2 -> ... -> copy dn)], commit).on_error(rollback)

The chain is wrapped in a list because a chain given directly as a chord header is unrolled
into a group, whose drives would run in parallel. Every signature is immutable: drive tasks
pass nothing along; their results live in the staging area.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery, chain, chord, uuid
from celery.canvas import Signature

from tasks.names import COMMIT, COPY_DRIVE, ROLLBACK
from tasks.queues import CONTROL_QUEUE, node_queue
from txnbackup.transaction import BackupPlan


@dataclass(frozen=True)
class TaskIds:
    """Chosen before dispatch, so a revoke of any of them can be mapped to the backup."""

    copies: tuple[str, ...]
    commit: str

    @classmethod
    def new(cls, drives: int) -> TaskIds:
        return cls(tuple(uuid() for _ in range(drives)), uuid())

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.copies, self.commit)


def build(plan: BackupPlan, ids: TaskIds, app: Celery) -> Signature:
    """The canvas, bound to ``app`` (the producer's, configured from its own settings)."""
    n = len(plan.drives)
    copies = [
        app.signature(
            COPY_DRIVE,
            (plan.backup, d.name),
            {"vm": plan.vmid, "part": f"{i}/{n}"},
            options=_shown(plan, f"drive {d.name} ({i}/{n})", f", node {d.node}"),
            immutable=True,
        ).set(queue=node_queue(d.node), task_id=task_id)
        for i, (d, task_id) in enumerate(zip(plan.drives, ids.copies, strict=True), start=1)
    ]
    body = app.signature(
        COMMIT, (plan.backup,), options=_shown(plan, f"commit {n} drive(s)"), immutable=True
    ).set(queue=CONTROL_QUEUE, task_id=ids.commit)
    errback = app.signature(
        ROLLBACK, (plan.backup,), options=_shown(plan, "rollback"), immutable=True
    ).set(queue=CONTROL_QUEUE)
    return chord([chain(*copies, app=app)], body, app=app).on_error(errback)


def _shown(plan: BackupPlan, what: str, where: str = "") -> dict[str, str]:
    """How monitors (Flower, `celery inspect`) show a task: ids and names only, never data."""
    return {"argsrepr": f"vm {plan.vmid}, {what}", "kwargsrepr": f"backup {plan.backup}{where}"}
