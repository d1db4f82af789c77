"""Running the demo: its work directory, its services and environment, the steps, clean-up.

Everything the demo creates is inside the work directory (drives, repository, restored
files, logs, a private Redis's files) or, on a shared Redis, under its own key prefix, which
it deletes at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from txnbackup.errors import InvalidInput
from txnbackup.redisconn import redacted
from txnbackup.repository import Repository
from txnbackup.settings import Settings
from txnbackup.tracker import Tracker
from txnbackup_cli import fleet
from txnbackup_cli.demo.narration import Narrator, StepResult
from txnbackup_cli.demo.scenario import NODES, Scenario
from txnbackup_cli.demo.services import (
    DemoServiceError,
    RedisChoice,
    delete_keys,
    redis_for_demo,
    worker_fleet,
)
from txnbackup_cli.demo.steps import STEPS
from txnbackup_cli.demo.vm import SampleVM
from txnbackup_cli.demo.walkthrough import VMID

if TYPE_CHECKING:
    from tasks.producer import Producer

STATE_TTL = 600  # seconds: what the demo leaves on a shared Redis (rollback results) expires


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path | None
    keep: bool
    drive_size: int
    chunk_size: int
    qemu: bool = False  # a running QEMU VM instead of the sample VM's files
    qemu_daemon: bool = False  # that VM a qemu-storage-daemon even where a guest can run


def run_demo(options: DemoOptions, settings: Settings, narrator: Narrator | None = None) -> None:
    """Run every step; raise DemoFailed (or the error met) unless all came out as expected."""
    narrator = narrator or Narrator()
    started = time.monotonic()
    workdir, temporary = prepare_workdir(options.workdir)
    narrator.say(f"[bold]txnbackup demo[/] · work directory {workdir}")
    succeeded = False
    try:
        with stop_on_sigterm():
            results = run_in(workdir, options, settings, narrator)
        succeeded = True
    finally:
        if succeeded and temporary and not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
            narrator.say(f"removed the work directory {workdir}")
        else:
            narrator.say(f"kept the work directory {workdir} (drives, repository, logs)")
    narrator.summary(results, time.monotonic() - started)


def prepare_workdir(path: Path | None) -> tuple[Path, bool]:
    """The work directory and whether the demo made it up (then it may remove it)."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="txnbackup-demo-")), True
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()):
        raise InvalidInput(f"work directory {path} is not empty")
    return path.resolve(), False


def run_in(
    workdir: Path, options: DemoOptions, settings: Settings, narrator: Narrator
) -> list[StepResult]:
    prefix = f"txnbackup-demo:{uuid.uuid4().hex[:10]}:"
    with ExitStack() as stack:
        redis = stack.enter_context(redis_for_demo(settings.redis_url, workdir))
        narrator.say(describe_redis(redis, prefix))
        env = demo_environment(redis.url, prefix, workdir / "repository")
        env |= fleet_trust(workdir)
        if options.qemu:
            return run_qemu(stack, workdir, options, narrator, env, redis, prefix)
        producer = make_producer(env)
        scenario = new_scenario(narrator, producer, workdir, options, env)
        if not redis.private:
            stack.callback(forget_keys, narrator, producer, scenario.backups, redis.url, prefix)
        start_workers(stack, NODES, env, workdir, producer, narrator)
        return scenario.run(STEPS)


def run_qemu(
    stack: ExitStack,
    workdir: Path,
    options: DemoOptions,
    narrator: Narrator,
    env: dict[str, str],
    redis: RedisChoice,
    prefix: str,
) -> list[StepResult]:
    """The --qemu scenario: a running VM on one node, its worker allowed only its sockets."""
    from txnbackup_cli.demo.qemu.run import running_vm  # noqa: PLC0415
    from txnbackup_cli.demo.qemu.scenario import NODE, QemuScenario  # noqa: PLC0415
    from txnbackup_cli.demo.qemu.steps import STEPS as QEMU_STEPS  # noqa: PLC0415

    vm = stack.enter_context(
        running_vm(workdir, options.drive_size, narrator, daemon=options.qemu_daemon)
    )
    env["TXNBACKUP_DRIVE_ROOTS"] = str(vm.dir)
    producer = make_producer(env)
    repo = Path(env["TXNBACKUP_REPOSITORY"])
    Repository.init(repo, options.chunk_size)
    scenario = QemuScenario(narrator, producer, repo, workdir, vm=vm, chunk_size=options.chunk_size)
    if not redis.private:
        stack.callback(forget_keys, narrator, producer, scenario.backups, redis.url, prefix)
    start_workers(stack, (NODE,), env, workdir, producer, narrator)
    return scenario.run(QEMU_STEPS)


def start_workers(
    stack: ExitStack,
    nodes: tuple[str, ...],
    env: dict[str, str],
    workdir: Path,
    producer: Producer,
    narrator: Narrator,
) -> None:
    workers = stack.enter_context(worker_fleet(nodes, env, workdir, producer.app))
    names = ", ".join(f"{w.name} (node {w.node})" for w in workers)
    narrator.say(f"workers ready: {names}; logs in {workdir / 'logs'}")


def describe_redis(redis: RedisChoice, prefix: str) -> str:
    if redis.private:
        return f"Redis: a private redis-server at {redis.url}, stopped at the end"
    return f"Redis: {redacted(redis.url)} (answering), keys under {prefix!r}, deleted at the end"


def demo_environment(redis_url: str, prefix: str, repository: Path) -> dict[str, str]:
    """The settings of the demo's processes: its own Redis keys and broker queues."""
    return {
        "TXNBACKUP_REDIS_URL": redis_url,
        "TXNBACKUP_BROKER_URL": redis_url,
        "TXNBACKUP_KEY_PREFIX": prefix,
        "TXNBACKUP_BROKER_KEY_PREFIX": prefix,
        "TXNBACKUP_REPOSITORY": str(repository),
        "TXNBACKUP_STATE_TTL": str(STATE_TTL),
    }


def fleet_trust(workdir: Path) -> dict[str, str]:
    """The demo's fleet runs as a fleet should: records sealed with a secret kept in a file
    only its owner reads, and workers reading only the demo's drives."""
    secret = workdir / "fleet.secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return {"TXNBACKUP_SECRET_FILE": str(secret), "TXNBACKUP_DRIVE_ROOTS": str(workdir / "drives")}


def make_producer(env: dict[str, str]) -> Producer:
    producer = fleet.producer(Settings.from_env(env))
    conf = producer.app.conf
    prefix = (conf.broker_transport_options or {}).get("global_keyprefix")
    if conf.broker_url != env["TXNBACKUP_BROKER_URL"] or prefix != env["TXNBACKUP_KEY_PREFIX"]:
        raise DemoServiceError("the Celery app was configured before the demo's settings")
    return producer


def new_scenario(
    narrator: Narrator, producer: Producer, workdir: Path, options: DemoOptions, env: dict[str, str]
) -> Scenario:
    drives = workdir / "drives"
    drives.mkdir()
    tracker = Tracker.from_settings(Settings.from_env(env))
    vm = SampleVM(VMID, drives, options.chunk_size, tracker)
    repo = Path(env["TXNBACKUP_REPOSITORY"])
    config = workdir / f"{VMID}.conf"
    return Scenario(
        narrator, producer, repo, workdir, vm=vm, config=config, drive_size=options.drive_size
    )


def forget_keys(
    narrator: Narrator, producer: Producer, backups: list[str], url: str, prefix: str
) -> None:
    """Delete the demo's keys from a shared Redis; a failure here only warns."""
    try:
        task_ids = [t for b in backups for t in producer.rt.records.task_ids(b)]
        left = delete_keys(url, prefix, task_ids)
    except Exception as exc:  # clean-up must not mask the outcome of the demo
        narrator.say(f"[yellow]could not delete the demo's Redis keys ({prefix}*): {exc}")
        return
    if left:
        narrator.say(f"[yellow]{left} key(s) under {prefix!r} reappeared after clean-up")
    else:
        narrator.say(f"deleted the demo's Redis keys ({prefix}*)")


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo like Ctrl-C does: through every clean-up step."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
