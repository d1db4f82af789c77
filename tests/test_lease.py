"""A lease handed over: begin's work is done, its next step not yet in the broker. The lease
must not lapse while its worker lives, nor be taken back from the step that took it over."""

from __future__ import annotations

import time

from redis import Redis

from txnbackup.keys import Keys
from txnbackup.lease import Heartbeat, LeaseRole, Leases

TTL = 0.6  # renewed every 0.2 s


def test_a_kept_lease_outlives_its_ttl_until_released(redis_client: Redis, keys: Keys) -> None:
    leases = Leases(redis_client, keys)
    # Given a holder that kept its lease on leaving its work (handing over is slow)
    with Heartbeat(leases, "b1", LeaseRole.COPY, "begin", TTL) as beat:
        beat.keep(limit=30)
    time.sleep(3 * TTL)
    # Then the lease is still held, by it
    assert leases.holder("b1", LeaseRole.COPY) == "begin"
    # and once released, it expires (left to the taker, or to the reaper)
    beat.release()
    time.sleep(2 * TTL)
    assert not leases.leased("b1")


def test_a_kept_lease_is_not_taken_back_from_its_taker(redis_client: Redis, keys: Keys) -> None:
    leases = Leases(redis_client, keys)
    with Heartbeat(leases, "b1", LeaseRole.COPY, "begin", TTL) as beat:
        beat.keep(limit=30)
    # When the next step takes the lease over while the old holder still renews
    leases.touch("b1", LeaseRole.COPY, "copy", ttl=30)
    time.sleep(3 * TTL)
    # Then the taker holds it, and the old holder's late drop leaves it alone
    assert leases.holder("b1", LeaseRole.COPY) == "copy"
    beat.release()
    leases.drop("b1", LeaseRole.COPY, "begin")
    assert leases.holder("b1", LeaseRole.COPY) == "copy"


def test_a_kept_lease_stops_renewing_at_its_limit(redis_client: Redis, keys: Keys) -> None:
    leases = Leases(redis_client, keys)
    # Given a holder whose hand-over never comes (its task hung after its work)
    with Heartbeat(leases, "b1", LeaseRole.COPY, "begin", TTL) as beat:
        beat.keep(limit=TTL)
    # Then the lease expires after the limit, and the reaper can judge the backup
    time.sleep(4 * TTL)
    assert not leases.leased("b1")
    beat.release()
