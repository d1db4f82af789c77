"""A running VM for the demo (``txnbackup demo --qemu``) and the guest tests (tests/guest).

- ``kit``: where the guest kit is (scripts/ensure-guest.sh unpacks it) and why a KVM guest
  cannot run here, if it cannot;
- ``initramfs``: the guest's initramfs (cpio newc, gzip), written in Python at run time; its
  ``/init`` writes numbered records to both disks, alternately, forever;
- ``records``: the record format, and the last record of a (restored) disk image;
- ``guest``: the KVM guest (``qemu-system-x86_64``), started and always stopped;
- ``daemon``: the fallback without KVM, a ``qemu-storage-daemon`` and a writer thread writing
  the same records through NBD;
- ``process``: what both (and tests/qemu's daemon) share: the qcow2 images, the storage
  daemon's command line, a clean quit.
"""
