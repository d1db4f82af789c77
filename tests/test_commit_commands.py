"""The commit of a backup talks to Redis in few round trips (docs/design.md, "Round trips")."""

from __future__ import annotations

from pathlib import Path

from redis import Redis

from bench.commit_commands import measure
from tests.conftest import TEST_REDIS_URL
from txnbackup.keys import Keys

# Measured with `python -m bench.commit_commands`: 13 commands in 12 round trips before the
# claim returned the record and the finish took the snapshot and the count along.
MAX_COMMANDS = 8
MAX_ROUND_TRIPS = 7


def test_one_commit_sends_few_redis_commands(
    tmp_path: Path, keys: Keys, redis_client: Redis
) -> None:
    # Given a backup of two drives whose copies are done, in a warmed-up process
    # When it is committed (measure checks that it ends done)
    count = measure(TEST_REDIS_URL, tmp_path, keys.prefix)

    # Then it sent no more commands, in no more round trips, than docs/design.md says
    assert count.commands <= MAX_COMMANDS
    assert count.round_trips <= MAX_ROUND_TRIPS
