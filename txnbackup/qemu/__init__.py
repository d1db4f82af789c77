"""Running QEMU VMs as a drive source: discovery, fleecing with dirty bitmaps, NBD reads."""
