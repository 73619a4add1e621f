"""How ``chammi`` subcommands answer a user's mistake: one line on stderr and exit status 2, no traceback.

Exit statuses: 0 success, 1 the command ran and found problems (``chammi validate``), 2 a user error (a
missing release or features folder, bad features, an output that exists without ``--overwrite``, a
manifest that does not parse, bad arguments; argparse uses 2 as well). Anything else is a bug and keeps
its traceback. ``CHAMMI_DEBUG=1`` shows the traceback of user errors too.

User errors are :class:`UserError` (raised by the CLI modules themselves) and the exception types the
library uses for bad input: ``ValueError`` (and its subclasses: ``EvaluationInputError``,
``OfficialFormatError``, ``CellIdError``, ...) and the ``OSError`` kinds about paths.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

#: Exit status of a command stopped by a user error (argparse's status for bad arguments, too).
EXIT_USER_ERROR = 2
#: Exit status of a command that ran and found problems (``chammi validate``).
EXIT_PROBLEMS = 1
#: Set to 1 to see the traceback of user errors.
DEBUG_ENV = "CHAMMI_DEBUG"


class UserError(Exception):
    """A mistake in what the user asked for; the message says what and, where it can, how to fix it."""


#: Exceptions answered with one line and :data:`EXIT_USER_ERROR`.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (an ``OSError`` as "reason: path", without "[Errno N]")."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def report_user_error(prog: str, exc: BaseException) -> int:
    """Print ``prog: error: <one line>`` on stderr; returns :data:`EXIT_USER_ERROR`."""
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def handles_user_errors(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorator for a subcommand's ``main(args) -> int``: user errors become one line + exit status 2."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            try:
                return main(*args, **kwargs)
            except USER_ERRORS as exc:
                if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
                    raise
                return report_user_error(prog, exc)

        return run

    return wrap
