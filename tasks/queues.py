"""Queue names: one control queue for commit/rollback, one queue per node for drive copies."""

from __future__ import annotations

from txnbackup.names import check_node
from txnbackup.transaction import BackupPlan

CONTROL_QUEUE = "txnbackup"  # commit and rollback; every worker consumes it
NODE_QUEUE_PREFIX = "txnbackup.node."


def node_queue(node: str) -> str:
    return f"{NODE_QUEUE_PREFIX}{check_node(node)}"


def finishing_queue(plan: BackupPlan | None) -> str:
    """Where a backup's commit and rollback run: anywhere, except for a QEMU VM, whose
    monitor only its own node reaches."""
    if plan is not None and plan.qemu is not None:
        return node_queue(plan.qemu.node)
    return CONTROL_QUEUE
