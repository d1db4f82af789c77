"""The guest kit (scripts/ensure-guest.sh) and whether a KVM guest can run here."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

ENSURE = "scripts/ensure-guest.sh"


@dataclass(frozen=True)
class Kit:
    path: Path
    modules: tuple[str, ...]  # in load order; empty when all are built in

    @property
    def vmlinuz(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def busybox(self) -> Path:
        return self.path / "busybox"

    @property
    def version(self) -> str:
        return (self.path / "VERSION").read_text().strip()


def kit_dir(env: dict[str, str] | None = None) -> Path:
    """Where ensure-guest.sh unpacks the kit (the same rule as the script's)."""
    env = dict(os.environ) if env is None else env
    if env.get("TXNBACKUP_GUEST_KIT"):
        return Path(env["TXNBACKUP_GUEST_KIT"])
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "txnbackup-guest"


def find_kit(path: Path | None = None) -> Kit | None:
    path = path or kit_dir()
    order = path / "modules" / "ORDER"
    if not all(p.is_file() for p in (path / "vmlinuz", path / "busybox", path / "VERSION")):
        return None
    modules = tuple(order.read_text().split()) if order.is_file() else ()
    return Kit(path, modules)


def kvm_problem() -> str | None:
    """Why KVM cannot be used here, or None."""
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist (no KVM on this host)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not accessible to this user (add it to the kvm group)"
    if os.path.exists("/sys/module/kvm_pvm"):
        # Measured: more than 40 s without reaching the guest's userspace (TCG: 2-3 s).
        return "KVM here is PVM (kvm_pvm), too slow for an unmodified guest kernel"
    return None


@dataclass(frozen=True)
class Accel:
    name: str  # QEMU's accelerator: kvm or tcg
    cpu: str
    why: str  # for the narration and test output


def choose_accel(env: dict[str, str] | None = None) -> Accel:
    """KVM where it works, else TCG (software emulation: slower, the same guest);
    TXNBACKUP_GUEST_ACCEL=kvm or tcg forces one."""
    env = dict(os.environ) if env is None else env
    forced = env.get("TXNBACKUP_GUEST_ACCEL", "")
    problem = kvm_problem()
    if forced == "kvm" or (not forced and problem is None):
        return Accel("kvm", "host", "KVM")
    why = "TXNBACKUP_GUEST_ACCEL=tcg" if forced == "tcg" else str(problem)
    return Accel("tcg", "max", f"TCG, software emulation ({why})")


def guest_problem() -> str | None:
    """Why the guest cannot run here, or None."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (Debian qemu-system-x86)"
    if shutil.which("setpriv") is None:
        return "setpriv is not installed (util-linux)"
    if find_kit() is None:
        return f"no guest kit in {kit_dir()} ({ENSURE} unpacks it)"
    return None
