"""The one user-error type: caught once in the CLI, printed as a message, never a traceback."""
from __future__ import annotations

from typing import Iterable

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2


class UserError(Exception):
    """A problem the user can fix. Carries one or more message lines and an exit code."""

    def __init__(self, lines: str | Iterable[str], exit_code: int = EXIT_CONFIG):
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        self.exit_code = exit_code
        super().__init__("\n".join(self.lines))
