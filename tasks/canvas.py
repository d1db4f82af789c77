"""The canvas of one backup: the drives in a chain, the chain the only chord part.

    chord([chain(copy d1 -> copy d2 -> ... -> copy dn)], commit).on_error(rollback)

The chain is wrapped in a list because a chain given directly as a chord header is unrolled
into a group, whose drives would run in parallel. Every signature is immutable: drive tasks
pass nothing along; their results live in the staging area.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import chain, chord, uuid
from celery.canvas import Signature

from tasks.copy import copy_drive
from tasks.finish import commit, rollback
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


def build(plan: BackupPlan, ids: TaskIds) -> Signature:
    n = len(plan.drives)
    copies = [
        copy_drive.si(plan.backup, d.name, vm=plan.vmid, part=f"{i}/{n}").set(
            queue=node_queue(d.node), task_id=task_id
        )
        for i, (d, task_id) in enumerate(zip(plan.drives, ids.copies, strict=True), start=1)
    ]
    body = commit.si(plan.backup).set(queue=CONTROL_QUEUE, task_id=ids.commit)
    errback = rollback.si(plan.backup).set(queue=CONTROL_QUEUE)
    return chord([chain(*copies)], body).on_error(errback)
