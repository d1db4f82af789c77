"""The seal of a backup record: an HMAC-SHA256, with the fleet secret, over what the producer
decided (the plan, the repository, the speed limit, the config blobs, the queue timeout).

Redis and the broker are shared infrastructure: whoever can write to them could otherwise make
a worker read any file or write any directory. A worker configured with the secret acts only on
a record whose seal it can recompute (txnbackup.trust).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence


def seal(secret: bytes, parts: Sequence[str]) -> str:
    """The seal of ``parts`` (the record's fields, as stored, in a fixed order)."""
    message = json.dumps(list(parts), separators=(",", ":")).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def is_sealed(secret: bytes, parts: Sequence[str], claimed: str) -> bool:
    return hmac.compare_digest(seal(secret, parts), claimed)
