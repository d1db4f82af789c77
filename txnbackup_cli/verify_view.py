"""What a verify prints: ``txnbackup verify SNAPSHOT`` and ``backup --wait --verify``.

--json: ``{"snapshot": "vm/<vmid>/<time>", "ok": bool, "chunks": <index entries checked>,
"problems": [{"drive": str, "offset": <bytes> or null, "digest": str, "reason": str}]}``.
"""

from __future__ import annotations

from typing import Any

import click

from txnbackup.verify import Problem, VerifyReport
from txnbackup_cli.output import print_table


def report_json(report: VerifyReport) -> dict[str, Any]:
    problems = [
        {"drive": p.drive, "offset": _offset(p), "digest": p.digest, "reason": p.reason}
        for p in report.problems
    ]
    return {
        "snapshot": str(report.snapshot),
        "ok": report.ok,
        "chunks": report.chunks,
        "problems": problems,
    }


def show_report(report: VerifyReport) -> None:
    """One line when all is good, else a table of the bad chunks (drive, offset, digest)."""
    if report.ok:
        click.echo(f"{report.snapshot}: {report.chunks} chunks verified, all good")
        return
    rows = [(p.drive, _offset_text(p), p.digest, p.reason) for p in report.problems]
    print_table(("drive", "offset", "digest", "problem"), rows)


def _offset(problem: Problem) -> int | None:
    return problem.offset if problem.offset >= 0 else None


def _offset_text(problem: Problem) -> str:
    return str(problem.offset) if problem.offset >= 0 else "index"
