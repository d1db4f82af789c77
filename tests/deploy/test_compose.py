"""docker-compose.yml and the Dockerfile are validated, not run: the build machines have no
Docker engine.

The Compose file is checked against the Compose Specification's JSON schema, the copy that
check-jsonschema ships (``--builtin-schema vendor.compose-spec``, nothing downloaded), then
for what the README promises of the fleet it describes; every txnbackup command in it must
parse with the real command line.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from ruamel.yaml import YAML

from txnbackup.drive import Drive
from txnbackup_cli.main import txnbackup

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
WORKERS = {"worker-node1": "node1", "worker-node2": "node2"}


def schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    program = Path(sys.executable).parent / "check-jsonschema"
    argv = [str(program), "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text())
    return loaded


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def parse_txnbackup(argv: list[str]) -> click.Context:
    """Parse ``txnbackup ARGV`` with the real verbs (usage errors raise), running nothing."""
    command = txnbackup.get_command(click.Context(txnbackup), argv[0])
    assert command is not None, f"no verb {argv[0]!r}"
    return command.make_context(argv[0], argv[1:])


def test_the_compose_file_matches_the_compose_specification() -> None:
    result = schema_check(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_service_with_an_unknown_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  worker:\n    image: txnbackup\n    volume: [repo:/r]\n")
    result = schema_check(broken)
    assert result.returncode == 1
    assert "'volume' was unexpected" in result.stdout


def test_redis_persists_append_only_and_has_a_healthcheck(compose: dict[str, Any]) -> None:
    redis = services(compose)["redis"]
    assert redis["command"][:3] == ["redis-server", "--appendonly", "yes"]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_redis_cannot_lose_dirty_bits_silently(compose: dict[str, Any]) -> None:
    # Eviction would drop a bits key; an fsync per second could lose the last marks in a crash.
    argv = services(compose)["redis"]["command"]
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert options["--maxmemory-policy"] == "noeviction"
    assert (options["--appendonly"], options["--appendfsync"]) == ("yes", "always")


@pytest.mark.parametrize(("service", "node"), sorted(WORKERS.items()))
def test_each_worker_serves_its_node_and_reads_its_drives(
    compose: dict[str, Any], service: str, node: str
) -> None:
    worker = services(compose)[service]
    ctx = parse_txnbackup(worker["command"])
    assert ctx.params["node"] == node
    assert f"./drives/{node}:/drives/{node}:ro" in worker["volumes"]
    assert "repository:/repository" in worker["volumes"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert worker["build"] == "." and (ROOT / "Dockerfile").is_file()


def test_flower_is_celerys_own_on_port_5555(compose: dict[str, Any]) -> None:
    flower = services(compose)["flower"]
    assert flower["entrypoint"] == ["celery", "-A", "tasks", "flower"]
    assert "127.0.0.1:5555:5555" in flower["ports"]
    # the image puts the fleet's Flower config where the command names it
    conf = next(a.split("=", 1)[1] for a in flower["command"] if a.startswith("--conf="))
    assert f"COPY tasks/flowerconfig.py {conf}" in DOCKERFILE.read_text()


def producer_commands(compose: dict[str, Any]) -> list[list[str]]:
    script = services(compose)["producer"]["command"][0].replace("\\\n", " ")
    lines = [shlex.split(line.split("||")[-1]) for line in script.splitlines() if line.strip()]
    return [argv[1:] for argv in lines if argv and argv[0] == "txnbackup"]


def test_the_producer_inits_the_repository_once_and_backs_up_across_both_nodes(
    compose: dict[str, Any],
) -> None:
    producer = services(compose)["producer"]
    assert producer["profiles"] == ["example"] and producer["restart"] == "no"
    script = producer["command"][0]
    assert "[ -f /repository/config.json ] || txnbackup init /repository" in script
    commands = {argv[0]: parse_txnbackup(argv) for argv in producer_commands(compose)}
    assert set(commands) == {"init", "backup", "snapshots"}
    drives = [Drive.parse(spec) for spec in commands["backup"].params["drives"]]
    assert {d.node for d in drives} == set(WORKERS.values())
    for d in drives:
        # the producer sizes every drive at the path its node's worker reads it
        mount = f"./drives/{d.node}:{Path(d.path).parent}:ro"
        assert mount in producer["volumes"]
        assert mount in services(compose)[f"worker-{d.node}"]["volumes"]


def dockerfile_stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("FROM "):
            stages.append([])
        if stages and line and not line.startswith("#"):
            stages[-1].append(line)
    return stages


def test_the_image_is_slim_python_run_as_a_user_without_build_tools() -> None:
    final = dockerfile_stages()[-1]
    assert final[0].startswith("FROM python:3.11-slim")
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    text = "\n".join(final)
    assert "apt-get install" not in text and "gcc" not in text
    assert "COPY --from=build /install /usr/local" in text


def test_every_file_the_image_copies_exists() -> None:
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
