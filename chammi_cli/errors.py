"""The one way every command answers: one line on stderr for a user's mistake, exit statuses that mean one
thing.

Exit statuses: 0 success, 1 the command ran and found problems (``chammi validate``, a failed build), 2 a user
error (a missing release or features folder, bad features, a malformed config, an output that exists, a
scheduler that cannot be reached, missing credentials, bad arguments; argparse uses 2 as well), 130 stopped by
Ctrl-C. Anything else is a bug and keeps its traceback. ``CHAMMI_DEBUG=1`` shows the traceback of user errors
too.

Every command runs through :func:`run_command`: the ``chammi`` dispatcher wraps each subcommand's ``main`` in
it, ``chammi-build`` its build, and ``torchrun -m chammi_cli train`` each rank's run (a rank other than 0
prefixes its line with its rank, so N ranks print N lines, never N tracebacks).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import yaml

from chammi_data.errors import UserError

#: Exit status of a command stopped by a user error (argparse's status for bad arguments, too).
EXIT_USER_ERROR = 2
#: Exit status of a command that ran and found problems (``chammi validate``, a failed build).
EXIT_PROBLEMS = 1
#: Exit status after Ctrl-C (128 + SIGINT, what shells report).
EXIT_INTERRUPTED = 130
#: Set to 1 to see the traceback of user errors.
DEBUG_ENV = "CHAMMI_DEBUG"

#: Exceptions answered with one line and :data:`EXIT_USER_ERROR`: the library's input errors. ``KeyError`` is
#: what the registries raise for an unknown name (model, source, channel, config key).
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    ValueError,
    KeyError,
    yaml.YAMLError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)

__all__ = ["UserError", "USER_ERRORS", "ArgumentParser", "run_command", "one_line", "report_user_error"]


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (an ``OSError`` as "reason: path", without "[Errno N]"; a
    ``KeyError`` without the quotes ``str`` adds)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.strerror}: {exc.filename}"
    elif isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    else:
        text = str(exc) or type(exc).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _rank_tag() -> str:
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    return f" (rank {rank})" if rank not in (None, "0") and world not in (None, "1") else ""


def report_user_error(prog: str, exc: BaseException) -> int:
    """Print ``prog: error: <one line>`` on stderr; returns :data:`EXIT_USER_ERROR`."""
    print(f"{prog}: error{_rank_tag()}: {one_line(exc)}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def debugging() -> bool:
    """True when ``$CHAMMI_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def run_command(prog: str, main: Callable[..., int | None], *args: Any) -> int:
    """``main(*args)`` as a command: its exit status, one line + 2 for a user error, one line + 130 on
    Ctrl-C."""
    try:
        return int(main(*args) or 0)
    except KeyboardInterrupt:
        if debugging():
            raise
        print(f"{prog}: interrupted{_rank_tag()}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except USER_ERRORS as exc:
        if debugging():
            raise
        return report_user_error(prog, exc)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the same one-line answer for bad arguments: ``prog: error: message (see prog --help)``,
    exit status 2 (argparse's own answer puts the whole usage text first)."""

    def error(self, message: str) -> Any:
        print(
            f"{self.prog}: error: {one_line(ValueError(message))} (see {self.prog} --help)", file=sys.stderr
        )
        raise SystemExit(EXIT_USER_ERROR)
