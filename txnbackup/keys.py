"""The Redis key layout; every key starts with the configured prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    def bitmap_meta(self, vmid: str, drive: str) -> str:
        """Hash: size (bytes), chunk_size (bytes), base (snapshot id or ''), repository (id)."""
        return f"{self.prefix}bitmap:{vmid}:{drive}:meta"

    def bitmap_bits(self, vmid: str, drive: str) -> str:
        """String: the active dirty bitmap, bit i (MSB first) = chunk i changed."""
        return f"{self.prefix}bitmap:{vmid}:{drive}:bits"

    def frozen_bits(self, backup: str, drive: str) -> str:
        """String: the bits a running backup copies; gone after its commit or rollback."""
        return f"{self.prefix}frozen:{backup}:{drive}"

    def bitmap_txn(self, backup: str) -> str:
        """Hash: state (frozen|committed|rolledback), vmid, drives (JSON), snapshot."""
        return f"{self.prefix}bitmaptxn:{backup}"

    def pattern(self) -> str:
        return f"{self.prefix}*"
