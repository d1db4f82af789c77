"""How the command line ends: every failure is one line on stderr and a documented exit code.

- a TxnBackupError prints ``txnbackup: error: <message>`` and exits with its ``exit_code``;
- a Redis connection error or timeout is ServiceUnavailable (exit 7); failed authentication
  or a command the Redis user may not run is a settings error (exit 2);
- any other OSError (a user's path is missing, unreadable, not writable) is an I/O error
  (exit 8) naming the path;
- Ctrl-C exits 130 without a traceback; a closed pipe (``| head``) exits 141 quietly;
- click's usage errors keep click's own text and exit 2.

Anything else is a bug in txnbackup and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from txnbackup.errors import (
    DriveIOError,
    RedisAuthFailed,
    RedisPermissionDenied,
    ServiceUnavailable,
    TxnBackupError,
)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


def run(command: click.Command, args: Sequence[str] | None, obj: object = None) -> int:
    """Run ``command`` as the ``txnbackup`` program and return its exit code."""
    try:
        command.main(args=args, prog_name="txnbackup", standalone_mode=False, obj=obj)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort as exc:
        return _aborted(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _broken_pipe()
    except Exception as exc:
        error = as_txnbackup_error(exc)
        if error is None:
            raise
        click.echo(f"txnbackup: error: {error}", err=True)
        return error.exit_code
    return 0


def as_txnbackup_error(exc: Exception) -> TxnBackupError | None:
    """The error a user should see for ``exc``, or None when ``exc`` is a bug."""
    if isinstance(exc, TxnBackupError):
        return exc
    if isinstance(exc, AuthenticationError):
        return RedisAuthFailed("Redis", str(exc))
    if isinstance(exc, NoPermissionError):
        return RedisPermissionDenied("Redis", str(exc))
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return ServiceUnavailable("Redis", str(exc))
    if isinstance(exc, OSError):
        return DriveIOError(describe_os_error(exc))
    return None


def describe_os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename is not None else reason


def _aborted(exc: click.Abort) -> int:
    # click turns Ctrl-C into Abort (having printed a newline); EOF on a prompt as well.
    if isinstance(exc.__cause__, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    click.echo("Aborted!", err=True)
    return 1


def _broken_pipe() -> int:
    # The reader went away: point stdout at /dev/null so the interpreter's final flush
    # does not complain about the pipe a second time.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE
