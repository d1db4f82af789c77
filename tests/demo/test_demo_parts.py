"""The demo's parts on their own; the whole demo runs as the smoke step of scripts/test.sh.

What matters to a user here: the demo starts a Redis only when none answers and leaves
nothing running, cleans up only its own keys, says what to install when it cannot run, and
refuses bad sizes before starting anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis

from tests.conftest import TEST_REDIS_URL
from txnbackup.bitmap import RedisBitmaps
from txnbackup.tracker import Tracker
from txnbackup_cli.demo import services
from txnbackup_cli.demo.scenario import DRIVES
from txnbackup_cli.demo.services import (
    DemoServiceError,
    delete_keys,
    find_redis_server,
    free_port,
    private_redis,
    redis_answers,
    redis_for_demo,
)
from txnbackup_cli.demo.vm import SampleVM, content
from txnbackup_cli.main import main

CHUNK = 64 * 1024


def test_an_answering_redis_is_used_and_nothing_is_started(tmp_path: Path) -> None:
    with redis_for_demo(TEST_REDIS_URL, tmp_path) as choice:
        assert choice.url == TEST_REDIS_URL and not choice.private
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(find_redis_server() is None, reason="no redis-server to start")
def test_a_private_redis_answers_until_the_demo_ends(tmp_path: Path) -> None:
    binary = find_redis_server()
    assert binary is not None
    with private_redis(binary, tmp_path / "redis") as url:
        assert redis_answers(url)
    assert not redis_answers(url)


def test_without_any_redis_the_demo_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "find_redis_server", lambda: None)
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    with (
        pytest.raises(DemoServiceError, match="apt-get install redis-server"),
        redis_for_demo(nobody, tmp_path),
    ):
        pass


def test_clean_up_deletes_the_demos_keys_and_no_other(redis_client: Redis) -> None:
    prefix = "txnbackup-demo-test:keys:"
    redis_client.set(f"{prefix}a", 1)
    redis_client.set(f"{prefix}b", 2)
    redis_client.set("celery-task-meta-demo-test-id", 3)
    redis_client.set("txnbackup-demo-test:other", 4)
    try:
        assert delete_keys(TEST_REDIS_URL, prefix, ["demo-test-id"]) == 0
        assert redis_client.exists(f"{prefix}a", f"{prefix}b", "celery-task-meta-demo-test-id") == 0
        assert redis_client.get("txnbackup-demo-test:other") == b"4"
    finally:
        redis_client.delete("txnbackup-demo-test:other")


@pytest.mark.parametrize("size", ["5M", "16M"])
def test_a_drive_size_the_steps_cannot_use_is_refused_before_anything_starts(
    tmp_path: Path, size: str
) -> None:
    workdir = tmp_path / "work"
    assert main(["demo", "--workdir", str(workdir), "--drive-size", size]) == 2
    assert not workdir.exists()


def test_sample_drives_have_their_size_and_text_chunks_never_repeat() -> None:
    text = b"".join(content("text", 40 * CHUNK + 100, seed=1))
    assert len(text) == 40 * CHUNK + 100
    chunks = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)]
    assert len(set(chunks)) == len(chunks)
    assert len(b"".join(content("random", 3 * CHUNK + 1, seed=2))) == 3 * CHUNK + 1
    assert list(content("zeros", CHUNK, seed=3)) == []


def test_a_guest_write_across_a_chunk_boundary_is_pending_on_both_chunks(
    tmp_path: Path, bitmaps: RedisBitmaps
) -> None:
    vm = SampleVM("demo-test", tmp_path, CHUNK, Tracker(bitmaps))
    vm.create(DRIVES[0], 8 * CHUNK, seed=1)
    vm.write("scsi0", 3 * CHUNK - 10, b"x" * 20)
    assert vm.pending["scsi0"] == {2, 3}
    assert vm.read("scsi0", 3 * CHUNK - 10, 20) == b"x" * 20
    assert vm.dirty_bytes("scsi0", vm.pending["scsi0"]) == 2 * CHUNK
