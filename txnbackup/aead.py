"""AES-256-GCM and scrypt from ``cryptography``, loaded when a key is first used.

The only module that imports ``cryptography``. Its Rust extension is a 14 MiB shared object
whose import took 30-35 ms warm and more from a cold page cache, which every command paid at
start-up, plain repositories included, because the settings name the key's location
(issue 16: what `txnbackup backup` adds to the API path). It is loaded now by the first
``Aead`` or ``scrypt`` call, that is, only by a process that opens or makes an encrypted
repository or key.

A failed authentication is ``Forged``, so callers never name the library's exception.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class Forged(Exception):
    """The tag does not authenticate the ciphertext and associated data (changed, moved, or
    sealed with another key)."""


class Aead:
    """One AES-256-GCM key; thread-safe, as the library's cipher object keeps no state."""

    def __init__(self, key: bytes) -> None:
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

        self._cipher: AESGCM = AESGCM(key)
        self._invalid: type[Exception] = InvalidTag  # what decrypt turns into Forged

    def encrypt(self, nonce: bytes, data: bytes | memoryview, aad: bytes) -> bytes:
        return self._cipher.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, sealed: bytes | memoryview, aad: bytes) -> bytes:
        try:
            return self._cipher.decrypt(nonce, sealed, aad)
        except self._invalid:
            raise Forged from None


def scrypt(passphrase: bytes, salt: bytes, length: int, n: int, r: int, p: int) -> bytes:
    """scrypt's key of ``length`` bytes (ValueError or MemoryError for parameters out of range)."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt  # noqa: PLC0415

    return Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(passphrase)


def preload() -> None:
    """Load the library now. A prefork worker's parent does (workers.app), so that its pool
    processes share the loaded extension rather than each loading it from disk on its first
    encrypted job."""
    import cryptography.exceptions  # noqa: PLC0415
    import cryptography.hazmat.primitives.ciphers.aead  # noqa: PLC0415
    import cryptography.hazmat.primitives.kdf.scrypt  # noqa: PLC0415, F401
