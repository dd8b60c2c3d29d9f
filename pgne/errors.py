"""The one user-error type: caught once in the CLI, printed as a message, never a traceback."""
from __future__ import annotations

from typing import Iterable

# The exit statuses of every command (README's command table lists them per command).
EXIT_OK = 0
EXIT_RUNTIME = 1  # apply failed, status found drift, the demo could not start; an internal error
EXIT_CONFIG = 2  # invalid config or flag: retrying the same command cannot help
# `pgne run`: the HTTP server cannot listen on --web.listen-address (the port is in use, the host
# is unknown or not this machine's, a privileged port): may succeed later, so a service manager
# may retry it (deploy/pgne.service does), unlike EXIT_CONFIG.
EXIT_LISTEN = 3


def printable(text: str) -> str:
    """`text` with every character that is not printable escaped (`\\r`, `\\x1b`, `\\ud800`).

    Messages quote names and values from the config, which may hold any character: a carriage
    return would split a message into lines that do not name their file, an escape sequence
    would rewrite the operator's terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def first_line(exc: BaseException) -> str:
    """The first line of an error's message: for an error the PostgreSQL server sent, its primary
    message (psycopg2's `diag`); else the exception's text, or its type's name if it has none.
    (libpq's connection errors never contain the password.)"""
    diag = getattr(exc, "diag", None)
    text = ((diag.message_primary if diag is not None else None) or str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UserError(Exception):
    """A problem the user can fix. Carries one or more message lines and an exit code."""

    def __init__(self, lines: str | Iterable[str], exit_code: int = EXIT_CONFIG):
        self.lines = [printable(line) for line in ([lines] if isinstance(lines, str) else lines)]
        self.exit_code = exit_code
        super().__init__("\n".join(self.lines))
