"""The Redis key layout; every key starts with the configured prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    def bitmap_meta(self, vmid: str, drive: str) -> str:
        """Hash: size (bytes), chunk_size (bytes), base (snapshot id or ''), repository (id),
        epoch (what the bits key's header must be; '' when the bits cannot prove themselves)."""
        return f"{self.prefix}bitmap:{vmid}:{drive}:meta"

    def bitmap_bits(self, vmid: str, drive: str) -> str:
        """String: the bitmap's epoch (16 bytes), then the active dirty bitmap, bit i (MSB
        first) = chunk i changed."""
        return f"{self.prefix}bitmap:{vmid}:{drive}:bits"

    def frozen_bits(self, backup: str, drive: str) -> str:
        """String: the bits a running backup copies (epoch header first, as the active bits);
        gone after its commit or rollback."""
        return f"{self.prefix}frozen:{backup}:{drive}"

    def bitmap_txn(self, backup: str) -> str:
        """Hash: state (frozen|committed|rolledback), vmid, snapshot, drives (JSON: drive, size,
        chunk_size, epoch of the fresh active bits, prior epoch if the frozen bits were whole)."""
        return f"{self.prefix}bitmaptxn:{backup}"

    def bitmap_txns(self) -> str:
        """Sorted set: backups that may have frozen bitmaps, scored by freeze time (seconds)."""
        return f"{self.prefix}bitmaptxns"

    def lease(self, backup: str, role: str) -> str:
        """String with a TTL: who works on the backup in ``role`` (copy or finish); it
        vanishes when its worker is gone."""
        return f"{self.prefix}lease:{backup}:{role}"

    def active(self) -> str:
        """Set: uuids of backups not yet finished (what the reaper watches)."""
        return f"{self.prefix}active"

    def reaping(self, backup: str) -> str:
        """String with a TTL: a reaper is acting on this backup; others keep off."""
        return f"{self.prefix}reaping:{backup}"

    def lock(self, vmid: str) -> str:
        """String: uuid of the VM's active backup; absent when none is active."""
        return f"{self.prefix}lock:{vmid}"

    def backup(self, backup: str) -> str:
        """Hash: the backup record (txnbackup.record)."""
        return f"{self.prefix}backup:{backup}"

    def ended(self, backup: str) -> str:
        """Pub/sub channel, not a key: the final phase, published once when the backup ends."""
        return f"{self.prefix}ended:{backup}"

    def cancel(self, backup: str) -> str:
        """String: the first reason the backup was asked to stop."""
        return f"{self.prefix}cancel:{backup}"

    def task(self, task_id: str) -> str:
        """String: uuid of the backup the Celery task belongs to."""
        return f"{self.prefix}task:{task_id}"

    def backups(self) -> str:
        """Sorted set: backup uuids scored by start time (seconds since the epoch)."""
        return f"{self.prefix}backups"

    def serving(self, node: str) -> str:
        """Sorted set: names of the workers consuming the node's queue, scored by when that
        stops being true unless renewed (seconds since the epoch; txnbackup.presence)."""
        return f"{self.prefix}serving:{node}"

    def qemu_unended(self) -> str:
        """Set: uuids of ended QEMU backups whose ending never reached QEMU (its monitor
        stayed unreachable); the reapers of the VM's node end them there."""
        return f"{self.prefix}qemu-unended"

    def pattern(self) -> str:
        return f"{self.prefix}*"
