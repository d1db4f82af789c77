"""The error tree of txnbackup.

Every error's docstring is its message template (``str.format`` with the constructor's
arguments) and its ``exit_code`` is what the CLI exits with. ``.args`` are exactly the
constructor's arguments, so Celery can rebuild any of them on the producer side from JSON.
"""

from __future__ import annotations

from typing import ClassVar


class TxnBackupError(Exception):
    """{}"""

    exit_code: ClassVar[int] = 1

    def __str__(self) -> str:
        template = (self.__doc__ or "{}").strip()
        try:
            return template.format(*self.args)
        except (IndexError, KeyError):
            return f"{type(self).__name__}{self.args!r}"


class InvalidInput(TxnBackupError):
    """invalid input: {}"""

    exit_code = 2


class NotFound(TxnBackupError):
    """not found: {}"""

    exit_code = 3


class DriveNotFound(NotFound):
    """drive {}: path {} does not exist"""


class SnapshotNotFound(NotFound):
    """snapshot {} not found"""


class NoCompleteSnapshot(NotFound):
    """{}: VM {} has no complete snapshot"""


class RepositoryNotFound(NotFound):
    """no txnbackup repository at {}"""


class RepositoryError(TxnBackupError):
    """repository error: {}"""

    exit_code = 4


class RepositoryExists(RepositoryError):
    """{} exists and is not empty; refusing to create a repository there"""


class FormatVersionMismatch(RepositoryError):
    """repository {} has format version {}, this txnbackup reads versions {}"""


class IntegrityError(TxnBackupError):
    """integrity error: {}"""

    exit_code = 5


class ManifestInvalid(IntegrityError):
    """manifest of {} is invalid: {}"""


class CorruptChunk(IntegrityError):
    """chunk {} is corrupt: {}"""


class VerifyFailed(IntegrityError):
    """snapshot {} failed verification: {} bad chunk(s)"""


class EndNotConfirmed(IntegrityError):
    """backup {}: the record says done, snapshot {}, but the repository disagrees: {}"""


class CheckFailed(IntegrityError):
    """repository check found {} problem(s)"""


class KeyProblem(TxnBackupError):
    """key error: {}"""

    exit_code = 10


class PassphraseMissing(KeyProblem):
    """repository {} is encrypted: set TXNBACKUP_PASSPHRASE_FILE or TXNBACKUP_PASSPHRASE"""


class WrongPassphrase(KeyProblem):
    """wrong passphrase for key {} (or the key file is damaged)"""


class KeyMissing(KeyProblem):
    """repository {} is encrypted and its key {} is missing; `txnbackup key import FILE`"""


class KeyInvalid(KeyProblem):
    """key {}: {}"""


class EncryptionDowngrade(KeyProblem):
    """repository {} says it is not encrypted but {}: refused (a downgraded config.json?)"""


class ConflictError(TxnBackupError):
    """conflict: {}"""

    exit_code = 6


class BackupRunning(ConflictError):
    """backup already running: {}"""


class SnapshotProtected(ConflictError):
    """snapshot {} is protected; run unprotect first"""


class PruneBlocked(ConflictError):
    """backup running: {} (VM {}); none of its snapshots removed"""


class TransactionStateError(ConflictError):
    """backup {} is already {}; cannot {}"""


class ServiceUnavailable(TxnBackupError):
    """cannot reach {}: {}"""

    exit_code = 7


class MarkNotRecorded(ServiceUnavailable):
    """mark of drive {} bytes {} was NOT recorded: {}; the writer must report the write again"""


class RedisTlsFailed(ServiceUnavailable):
    """TLS with Redis at {} failed: {}"""


class RedisAuthFailed(InvalidInput):
    """Redis at {}: authentication failed ({}); check the user and password in the Redis URL"""


class RedisPermissionDenied(InvalidInput):
    """Redis at {} denied a command: {}; the Redis user needs the ACL in README, Redis settings"""


class DriveIOError(TxnBackupError):
    """I/O error: {}"""

    exit_code = 8


class DriveUnreadable(DriveIOError):
    """drive {}: cannot read {}: {}"""


class DriveReadError(DriveIOError):
    """drive {}: read failed at offset {}: {}"""


class DriveSizeChanged(DriveIOError):
    """drive {}: size changed from {} to {} bytes"""


class RepositoryWriteError(DriveIOError):
    """cannot write to repository {}: {}"""


class TargetWriteError(DriveIOError):
    """cannot write restore target {}: {}"""


class Cancelled(TxnBackupError):
    """backup cancelled: {}"""

    exit_code = 9


class QemuError(TxnBackupError):
    """QEMU at {}: {}"""

    exit_code = 7


class QmpUnavailable(QemuError):
    """cannot talk to QEMU's monitor at {}: {}"""


class QmpCommandFailed(QemuError):
    """QEMU at {}: {} failed: {}"""

    @property
    def desc(self) -> str:
        """QEMU's own message (its ``desc``)."""
        return str(self.args[2])


class QmpTimeout(QemuError):
    """QEMU at {}: no {} within {} s"""


class QemuDriveError(QemuError):
    """drive {}: {}"""


class QemuDirUnusable(QemuError):
    """QEMU {} directory {}: {}"""


class Refused(TxnBackupError):
    """refused: {}"""


class UntrustedRecord(Refused):
    """backup {}: {}; refusing to act on the record"""


class RecordNotAuthentic(UntrustedRecord):
    """backup {}: the record failed authentication ({}); refusing to act on it"""


class DriveNotAllowed(Refused):
    """drive {}: {} is outside this worker's allowed drives (TXNBACKUP_DRIVE_ROOTS={})"""


class RepositoryNotAllowed(Refused):
    """repository {} is not this worker's repository (TXNBACKUP_REPOSITORY={})"""


class RepositoryIdMismatch(Refused):
    """the repository at {} has id {}, not this worker's {} (TXNBACKUP_REPOSITORY_ID)"""
