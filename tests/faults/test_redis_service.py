"""Redis that refuses rather than fails to answer (issue 12): out of memory, a wrong password,
URL options it cannot use. Each gets its own message and exit code, never a traceback, and a
writer is never told its mark was kept when it was not. Each scenario runs a private
redis-server of its own (skipped when there is none to start)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from redis import Redis

from tests.redis_server import private_redis
from tests.unit.builders import CS, track
from txnbackup.bitmap import RedisBitmaps
from txnbackup.errors import MarkNotRecorded
from txnbackup.keys import Keys

TXNBACKUP = str(Path(sys.executable).parent / "txnbackup")
VM, DRIVE = "100", "scsi0"


def txnbackup(url: str, *args: str, prefix: str = "t:") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXNBACKUP_")}
    env |= {"TXNBACKUP_REDIS_URL": url, "TXNBACKUP_KEY_PREFIX": prefix}
    return subprocess.run(
        [TXNBACKUP, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_a_mark_refused_for_lack_of_memory_is_unavailable_not_bad_input(tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis", "--maxmemory-policy", "noeviction") as port:
        # Given a tracked drive on a Redis that then runs out of memory (noeviction)
        client = Redis(port=port)
        keys = Keys(f"t-{uuid.uuid4().hex[:8]}:")
        bitmaps = RedisBitmaps(client, keys, 3600)
        track(bitmaps, VM, DRIVE, 16 * CS)
        client.config_set("maxmemory", 1)

        # When a writer reports a write, through the API and the command line
        with pytest.raises(MarkNotRecorded) as raised:
            bitmaps.mark_dirty(VM, DRIVE, CS, 1)
        result = txnbackup(
            f"redis://127.0.0.1:{port}/0", "mark-dirty", VM, DRIVE, "64K", "1", prefix=keys.prefix
        )

        # Then both say Redis is the problem and the mark was NOT kept (exit 7, retry)
        assert raised.value.exit_code == 7
        assert (result.returncode, result.stdout) == (7, ""), result.stderr
        assert "maxmemory" in result.stderr and "NOT recorded" in result.stderr
        assert "report the write again" in result.stderr
        assert "beyond the end" not in result.stderr and "Traceback" not in result.stderr
        client.config_set("maxmemory", 0)
        assert bitmaps.dirty_chunks(VM, DRIVE) == set()
        # and a range past the end is still the writer's bad input
        past = txnbackup(
            f"redis://127.0.0.1:{port}/0", "mark-dirty", VM, DRIVE, "1M", "1", prefix=keys.prefix
        )
        assert past.returncode == 2 and "beyond the end" in past.stderr


@pytest.mark.parametrize(
    "credentials", [":wrong-password@", "default:wrong-password@", ""], ids=["pw", "user", "none"]
)
def test_a_wrong_password_says_authentication_failed(tmp_path: Path, credentials: str) -> None:
    with private_redis(tmp_path / "redis", "--requirepass", "s3cret") as port:
        result = txnbackup(
            f"redis://{credentials}127.0.0.1:{port}/0", "mark-dirty", VM, DRIVE, "0", "1"
        )

    assert result.returncode == 2, result.stderr
    assert "authentication failed" in result.stderr
    assert "cannot reach" not in result.stderr and "Traceback" not in result.stderr
    assert "wrong-password" not in result.stderr


def test_the_right_password_works(tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis", "--requirepass", "s3cret") as port:
        result = txnbackup(f"redis://:s3cret@127.0.0.1:{port}/0", "mark-dirty", VM, DRIVE, "0", "1")

    assert result.returncode == 0, result.stderr
    assert "no dirty bitmap yet" in result.stdout


@pytest.mark.parametrize(
    ("url", "exit_code", "says"),
    [
        ("rediss://127.0.0.1:{port}/0?ssl_cert_reqs=CERT_REQUIRED", 2, "ssl_cert_reqs"),
        ("rediss://127.0.0.1:{port}/0?ssl_cert_reqs=bogus", 2, "ssl_cert_reqs"),
        ("redis://127.0.0.1:{port}/0?socket_timeout=abc", 2, "socket_timeout"),
        ("rediss://127.0.0.1:{port}/0?ssl_ca_certs=/nonexistent/ca.pem", 2, "/nonexistent/ca.pem"),
        ("rediss://127.0.0.1:{port}/0", 7, "TLS"),
    ],
    ids=["cert-reqs-constant", "cert-reqs-bogus", "timeout-not-a-number", "no-ca-file", "no-tls"],
)
def test_url_options_redis_cannot_use_get_a_clear_message(
    tmp_path: Path, url: str, exit_code: int, says: str
) -> None:
    with private_redis(tmp_path / "redis") as port:
        result = txnbackup(url.format(port=port), "mark-dirty", VM, DRIVE, "0", "1")

    assert result.returncode == exit_code, result.stderr
    assert says in result.stderr
    assert result.stderr.startswith("txnbackup: error: ") and result.stderr.count("\n") == 1
