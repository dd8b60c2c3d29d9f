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
from typing import Any

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
    text = str(value)
    if text and not any(c in text for c in ' ="\\') and text.isprintable():
        return text
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return f'"{escaped}"'


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

    # {message}: the formatted message; `database` comes in as an extra field where it is set
    return Formatter("{name}{process}{message}", style="{",
                     rename_fields={"name": "logger", "process": "pid", "message": "msg",
                                    "exc_info": "error"},
                     json_ensure_ascii=False)


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """`text` with every character that is not printable (newlines, other control characters,
    Unicode line separators) written as a visible escape (\\n, \\x1b, \\u2028): a table, database
    or host name, a label value or an exception's text can then never start a line of its own
    that reads as a record of pgne's."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _NAMED_ESCAPES.get(c) or repr(c)[1:-1] for c in text)


class PlainFormatter(logging.Formatter):
    """LOG_FORMAT, one record per line: the message, and a traceback when there is one, escaped
    by one_line (logfmt and JSON quote their values; this format has no quoting of its own)."""

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
