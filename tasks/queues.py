"""Queue names: one control queue for commit/rollback, one queue per node for drive copies."""

from __future__ import annotations

from txnbackup.names import check_node

CONTROL_QUEUE = "txnbackup"  # commit and rollback; every worker consumes it
NODE_QUEUE_PREFIX = "txnbackup.node."


def node_queue(node: str) -> str:
    return f"{NODE_QUEUE_PREFIX}{check_node(node)}"
