"""The fleet runtime: worker start-up per node, signal handlers, the revoke watcher."""
