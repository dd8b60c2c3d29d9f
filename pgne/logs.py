"""Log formats (`--log.format`): how the master and its workers write to their one stderr.

Without --log.format, lines are LOG_FORMAT, as they always were. `logfmt` writes one line of
`key=value` pairs per record; `json` one JSON object per line through python-json-logger. Both
give the database a field of its own (`database`, its display name host:port/name) on the lines
that concern one: a worker names its database on every line (configure(..., database=...)), the
master passes `extra=for_database(name)`. Nothing here ever reads a password: records carry only
what the log calls pass, and no log call of pgne passes one.

Nothing here imports prometheus_client (the master sets its directory after logging is configured).
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable

# The master and its workers write to one stderr: one format, the process named in each line.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
LOGFMT, JSON = "logfmt", "json"
FORMATS = (LOGFMT, JSON)  # --log.format; None: LOG_FORMAT


def for_database(name: str) -> dict[str, Any]:
    """`extra=` of a log call about one database: its `database` field in logfmt and JSON."""
    return {"database": name}


def _iso_time(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _logfmt_value(value: object) -> str:
    """Bare when it can be, else in double quotes with `\\` and `\"` escaped and what is not
    printable escaped by one_line's rule in JSON's spelling (\\n, \\u001b, \\u2028), which is
    what logfmt parsers decode."""
    text = str(value)
    if text and not any(c in text for c in ' ="\\') and text.isprintable():
        return text
    return '"' + one_line(text.replace("\\", "\\\\").replace('"', '\\"'), _quoted_escape) + '"'


class LogfmtFormatter(logging.Formatter):
    """`time=... level=info logger=pgne.master pid=12 database=h:5432/db msg="..."` (database
    only on a database's lines; `error=` with the traceback when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = [("time", _iso_time(record)), ("level", record.levelname.lower()), ("logger", record.name),
                 ("pid", record.process)]
        database = getattr(record, "database", None)
        if database is not None:
            pairs.append(("database", database))
        pairs.append(("msg", record.getMessage()))
        if record.exc_info:
            pairs.append(("error", self.formatException(record.exc_info)))
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in pairs)


def _json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    class Formatter(JsonFormatter):
        def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
            fields: dict = {}
            super().add_fields(fields, record, message_dict)
            log_data.update(time=_iso_time(record), level=record.levelname.lower(), **fields)

        def jsonify_log_record(self, log_data: dict) -> str:
            # json.dumps escapes only U+0000-U+001F: the rest of one_line's rule as \u escapes
            # (outside its strings a JSON line has only printable ASCII, so this touches only them)
            return one_line(super().jsonify_log_record(log_data), _quoted_escape)

    # {message}: the formatted message; `database` comes in as an extra field where it is set
    return Formatter("{name}{process}{message}", style="{",
                     rename_fields={"name": "logger", "process": "pid", "message": "msg",
                                    "exc_info": "error"},
                     json_ensure_ascii=False)


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible_escape(c: str) -> str:
    """\\n, \\r, \\t, else Python's: \\x1b, \\x85, \\u2028, \\U000e0001."""
    return _NAMED_ESCAPES.get(c) or repr(c)[1:-1]


def _quoted_escape(c: str) -> str:
    """JSON's spelling: \\n, \\r, \\t, else \\u001b, \\u2028; beyond U+FFFF the UTF-16 surrogate
    pair (\\udb40\\udc01)."""
    if c in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[c]
    if ord(c) <= 0xFFFF:
        return f"\\u{ord(c):04x}"
    high, low = divmod(ord(c) - 0x10000, 0x400)
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"


def one_line(text: str, escape: Callable[[str], str] = _visible_escape) -> str:
    """The one rule of every log format: each character of `text` that is not printable
    (newlines, other C0 and C1 control characters, Unicode line and paragraph separators,
    format characters, lone surrogates) written as a visible escape (`escape`, by default
    \\n, \\x1b, \\u2028): a table, database or host name, a label value or an exception's text can
    then never start a line of its own that reads as a record of pgne's, nor drive a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else escape(c) for c in text)


class PlainFormatter(logging.Formatter):
    """LOG_FORMAT, one record per line: the message, and a traceback when there is one, escaped
    by one_line (this format has no quoting of its own: the whole line)."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


def formatter(log_format: str | None) -> logging.Formatter:
    if log_format == JSON:
        return _json_formatter()
    if log_format == LOGFMT:
        return LogfmtFormatter()
    return PlainFormatter(LOG_FORMAT)


class _DatabaseField(logging.Filter):
    def __init__(self, name: str):
        super().__init__()
        self.name_ = name

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "database"):
            record.database = self.name_
        return True


def configure(level: str, log_format: str | None = None, database: str | None = None) -> None:
    """Log records of `level` and above to stderr in `log_format`; `database`: every line is
    about this database (a worker's)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    if database is not None:
        handler.addFilter(_DatabaseField(database))
    logging.basicConfig(level=level, handlers=[handler])
