"""The benchmark's pure parts: which cost binds the floor, the 2-drive split, the data mixes,
the CLI overhead's estimate."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.floor import Floor, binding, measure_shared, measure_write
from bench.image import MIXES, Generator, split
from bench.measure import PageCache
from bench.report import cli_overhead
from bench.run import CLI, TXN, MixResults
from tests.unit.refusals import refuse_opening_direct

MIB = 1024 * 1024


def test_the_slowest_part_binds_the_floor() -> None:
    assert binding({"read": 0.7, "write": 4.3, "cpu": 1.2}) == ("write", 4.3)
    assert binding({"read": 2.0, "cpu": 1.5}) == ("read", 2.0)


def test_a_tie_names_the_first_part() -> None:
    assert binding({"read": 1.0, "write": 1.0, "cpu": 0.5}) == ("read", 1.0)


def test_a_floor_without_parts_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        binding({})


def test_the_write_part_counts_once_measured_with_its_median() -> None:
    # Given a floor where reading was slower than the CPU's share
    floor = Floor(size=MIB, cores=2, threads=4, in_flight=4, read=1.0, sha256_cpu=1.0, zstd_cpu=1.0)
    assert (floor.binds, floor.seconds) == ("read", 1.0)
    # When writing what the backup stored turns out slower
    floor.write += [3.0, 1.5, 2.5]
    # Then writing binds, at the median of its samples
    assert (floor.binds, floor.seconds) == ("write", 2.5)


@pytest.mark.parametrize("direct", ["taken", "refused"])
def test_the_write_floor_takes_the_faster_way_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: str
) -> None:
    # Given a directory whose file system takes direct writes, or refuses them (EINVAL)
    if direct == "refused":
        refuse_opening_direct(monkeypatch)
    # When the write floor writes a size that ends mid-block
    seconds, way = measure_write(tmp_path, 5 * MIB + 1000)
    # Then it is timed, names the way that was faster (only the cache where direct writes
    # are refused), and its file is gone
    assert seconds > 0
    assert way == "cached" if direct == "refused" else way in {"cached", "direct"}
    assert list(tmp_path.iterdir()) == []


def test_reading_and_writing_at_once_is_shown_beside_the_floor_not_judged(
    tmp_path: Path,
) -> None:
    # Given a floor whose write part was measured, and a drive to read
    drive = tmp_path / "drive.raw"
    drive.write_bytes(os.urandom(3 * MIB))
    floor = Floor(
        size=3 * MIB, cores=2, threads=4, in_flight=4, read=0.5, sha256_cpu=1.0, zstd_cpu=1.0
    )
    floor.read_way = "direct"
    floor.write_bytes = 2 * MIB + 1000
    floor.add_write(*measure_write(tmp_path, floor.write_bytes))
    judged = (floor.binds, floor.seconds)
    # When the drive is read while the stored bytes are written, at once
    seconds = measure_shared([drive], tmp_path, floor, PageCache(False))
    floor.add_shared(seconds)
    # Then it is timed, its file is gone, and the floor the targets judge is unchanged
    assert floor.shared_seconds == seconds > 0
    assert [p.name for p in tmp_path.iterdir()] == ["drive.raw"]
    assert (floor.binds, floor.seconds) == judged


def test_the_two_drives_hold_the_image_in_whole_chunks(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(bytes(range(256)) * (9 * MIB // 256 + 3))
    halves = [tmp_path / "a", tmp_path / "b"]
    split(image, halves, MIB)
    assert halves[0].stat().st_size == 4 * MIB
    assert halves[0].read_bytes() + halves[1].read_bytes() == image.read_bytes()


def test_the_second_mix_is_other_data_and_repeatable(tmp_path: Path) -> None:
    first, again, default = tmp_path / "1", tmp_path / "2", tmp_path / "d"
    kinds = Generator(7, MIXES["second"]).write_image(first, 8 * MIB)
    Generator(7, MIXES["second"]).write_image(again, 8 * MIB)
    Generator(7, MIXES["default"]).write_image(default, 8 * MIB)
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != default.read_bytes()
    assert set(kinds) == {"zero", "text", "random", "binary"}
    assert sum(kinds.values()) == 8 * MIB


def _full2(api: list[float], cli: list[float]) -> MixResults:
    m = MixResults("default")
    for tool, values in ((TXN, api), (CLI, cli)):
        for v in values:
            m.time("full2", tool).add(v)
    return m


def test_the_cli_overhead_is_the_median_of_each_rounds_difference() -> None:
    # a slow round (5.0 -> 6.5) moves both runs of its pair, not the estimate
    m = _full2(api=[4.0, 3.0, 5.0], cli=[4.3, 3.4, 6.5])
    assert cli_overhead(m) == pytest.approx(0.4)


def test_no_cli_overhead_without_a_run_of_each_per_round() -> None:
    assert cli_overhead(_full2(api=[4.0, 3.0], cli=[4.3])) is None
    assert cli_overhead(_full2(api=[4.0], cli=[])) is None
