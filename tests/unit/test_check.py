"""The whole-repository check: reads only, names every problem, subsets cover everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.history import DRIVE, Past, make_history
from txnbackup.bitmap import RedisBitmaps
from txnbackup.check import ALL, Subset, check_repository
from txnbackup.errors import InvalidInput
from txnbackup.index import IndexReader
from txnbackup.manifest import MANIFEST_NAME
from txnbackup.repository import Repository

VM = "100"


@pytest.fixture
def history(repo: Repository, bitmaps: RedisBitmaps, tmp_path: Path) -> list[Past]:
    return make_history(repo, bitmaps, VM, tmp_path / "drives", 3)


def digests(repo: Repository, past: Past) -> list[str]:
    with IndexReader(repo.snapshot_dir(past.snapshot) / f"{DRIVE}.fidx") as reader:
        return [d.hex() for d in reader if any(d)]


def chunk_files(repo: Repository) -> list[str]:
    return sorted(p.name for p in (repo.path / "chunks").rglob("*") if p.is_file())


def test_a_healthy_repository_passes_and_read_data_reads_every_chunk(
    repo: Repository, history: list[Past]
) -> None:
    report = check_repository(repo, ALL)
    assert report.ok, report.problems
    assert (report.snapshots, report.chunks, report.read) == (3, 6, 6)


def test_subsets_read_disjoint_parts_that_cover_every_chunk(
    repo: Repository, history: list[Past]
) -> None:
    reads = [check_repository(repo, Subset(n, 3)).read for n in (1, 2, 3)]
    assert sum(reads) == 6
    assert reads == [check_repository(repo, Subset(n, 3)).read for n in (1, 2, 3)]


def test_a_missing_chunk_is_named_with_a_snapshot_referring_to_it(
    repo: Repository, history: list[Past]
) -> None:
    digest = digests(repo, history[0])[1]  # the chunk only the oldest backup has
    repo.chunks.path_for(digest).unlink()

    report = check_repository(repo)

    assert [(p.where, p.reason) for p in report.problems] == [
        (
            f"chunk {digest}",
            f"missing from the repository ({history[0].snapshot} {DRIVE} offset 65536)",
        )
    ]


def test_a_corrupt_chunk_is_found_by_read_data_only_and_left_where_it_is(
    repo: Repository, history: list[Past]
) -> None:
    digest = digests(repo, history[2])[0]
    path = repo.chunks.path_for(digest)
    damaged = bytearray(path.read_bytes())
    damaged[-10] ^= 1
    path.write_bytes(bytes(damaged))
    before = chunk_files(repo)

    assert check_repository(repo).ok
    report = check_repository(repo, ALL)

    assert [p.where for p in report.problems] == [f"chunk {digest}"]
    assert chunk_files(repo) == before


def test_damaged_indexes_blobs_and_manifests_are_each_named(
    repo: Repository, history: list[Past]
) -> None:
    index = repo.snapshot_dir(history[2].snapshot) / f"{DRIVE}.fidx"
    index.write_bytes(index.read_bytes()[:-32])
    blob = repo.snapshot_dir(history[1].snapshot) / "vm.conf.blob"
    blob.write_bytes(b"changed")
    (repo.snapshot_dir(history[0].snapshot) / MANIFEST_NAME).write_bytes(b"[")

    report = check_repository(repo)

    assert sorted(p.where for p in report.problems) == sorted(
        [
            f"{history[2].snapshot} {DRIVE}",
            f"{history[1].snapshot} blob vm.conf",
            str(history[0].snapshot),
        ]
    )


@pytest.mark.parametrize("text", ["0/3", "4/3", "1", "a/b"])
def test_a_bad_subset_is_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInput):
        Subset.parse(text)
