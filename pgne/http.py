"""The master's HTTP server: /metrics (or --web.telemetry-path; gzip when the client accepts it),
a landing page at /, /-/healthy, /-/ready and POST /-/reload; HEAD wherever GET is served.

Each connection is handled in its own thread (ThreadingHTTPServer), so a slow client cannot
block the others; and no client can take the descriptors or threads the workers need: at most
MAX_CONNECTIONS connections are open (more wait in the kernel's listen backlog, which costs the
process nothing), and when a connection waits there, the one that has waited longest for its
request to arrive (idle, slow, a stalled TLS handshake) is closed to make room. A request's line
and headers must arrive within HEAD_TIMEOUT and MAX_HEAD_BYTES (slowloris; huge headers: 431).

/metrics is printed by pgne.exposition (prometheus_client's multiprocess totals, with parsed keys
and dead workers' merged files cached between scrapes); the landing page reads the files through
pgne.statedir.collect() (a fresh CollectorRegistry, as prometheus_client documents). This module
serves HTTP only: it reads nothing from the state dir itself, and it
never reloads: POST /-/reload queues a request in `Lifecycle`, which the master's main loop
answers; /-/ready reads the worker counts the loop stores there.
"""
from __future__ import annotations

import base64
import errno
import gzip
import html
import io
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry

from pgne import __version__
from pgne.exposition import MetricsRenderer
from pgne.password_checks import AuthBusy
from pgne.statedir import collect
from pgne.webconfig import WebConfig

log = logging.getLogger(__name__)

# The HTTP server's bounds. MAX_CONNECTIONS descriptors (and as many threads) at most: the
# master's descriptor budget counts them beside its workers'.
MAX_CONNECTIONS = 32
LISTEN_BACKLOG = 128  # connections waiting for a slot: held by the kernel, not by pgne
HANDSHAKE_TIMEOUT = 10.0  # each read and write of a TLS handshake
HEAD_TIMEOUT = 10.0  # the request line and headers, all of them, from the connection's start
MAX_HEAD_BYTES = 32 * 1024  # the request line and headers (larger: 431)
IO_TIMEOUT = 30.0  # reading a request's body; writing its answer (each write, all of it)
ACCEPT_WAIT = 0.5  # how long the accepting thread waits for a slot before it looks again


@dataclass
class DatabaseRow:
    """One database on the landing page: what /metrics says about it."""

    host: str
    database: str
    tag: str = ""
    up: float = 0.0
    last_event: float = 0.0
    triggers: list[float] = field(default_factory=list)  # pgne_trigger_installed values
    problems: list[str] = field(default_factory=list)  # reasons of pgne_setup_problem == 1

    @property
    def state(self) -> str:
        """`up` only while listening with every trigger in place and no setup problem."""
        if not self.up:
            return "DOWN"
        if self.problems:
            return "SETUP FAILED"
        if not all(self.triggers):
            return "TRIGGERS MISSING"
        return "up"

    @property
    def trigger_summary(self) -> str:
        if not self.triggers:
            return "not checked yet"
        return f"{sum(1 for v in self.triggers if v)} of {len(self.triggers)} installed"


def database_rows(registry: CollectorRegistry) -> list[DatabaseRow]:
    """One row per database of pgne_database_up, sorted by host and database."""
    from pgne.drift import problem_text

    rows: dict[tuple[str, str], DatabaseRow] = {}
    families = list(registry.collect())
    for family in families:
        if family.name == "pgne_database_up":
            for s in family.samples:
                key = (s.labels["host"], s.labels["database"])
                rows[key] = DatabaseRow(*key, tag=s.labels.get("tag", ""), up=s.value)
    for family in families:
        for s in family.samples:
            row = rows.get((s.labels.get("host"), s.labels.get("database")))
            if row is None:
                continue
            if family.name == "pgne_last_event_timestamp_seconds":
                row.last_event = max(row.last_event, s.value)
            elif family.name == "pgne_trigger_installed":
                row.triggers.append(s.value)
            elif family.name == "pgne_setup_problem" and s.value:
                labels = s.labels
                row.problems.append(problem_text(labels["problem"], labels["schema"], labels["table"],
                                                 labels["column"]))
    return [rows[key] for key in sorted(rows)]


def landing_page(rows: Iterable[DatabaseRow], telemetry_path: str = "/metrics") -> bytes:
    def cell(text: object) -> str:
        return f"<td>{html.escape(str(text))}</td>"

    body = []
    for row in rows:
        last = row.last_event
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last)) if last else "never"
        problems = "".join(f"<li>{html.escape(p)}</li>" for p in sorted(row.problems))
        body.append("<tr>" + cell(row.host) + cell(row.database) + cell(row.tag) + cell(row.state)
                    + cell(row.trigger_summary) + cell(when)
                    + (f"<td><ul>{problems}</ul></td>" if problems else "<td></td>") + "</tr>\n")
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>pgne</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em 1em;text-align:left;vertical-align:top}}
ul{{margin:0;padding-left:1em}}</style></head>
<body><h1>pgne {html.escape(__version__)}</h1>
<p>PostgreSQL LISTEN/NOTIFY exporter. <a href="{html.escape(telemetry_path)}">Metrics</a> · \
<a href="/-/healthy">Health</a></p>
<table><tr><th>host</th><th>database</th><th>tag</th><th>state</th><th>triggers</th><th>last event</th>\
<th>setup problems</th></tr>
{''.join(body)}</table></body></html>
"""
    return page.encode("utf-8")


RELOAD_WAIT = 60.0  # the longest POST /-/reload waits for the master's loop to reload


class _ReloadRequest:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: str | None = None


class Lifecycle:
    """What the HTTP threads and the master's main loop share: POST /-/reload requests and
    readiness. An HTTP thread never reloads by itself: it queues a request, wakes the loop
    (`wake`, which writes to the master's wakeup fd) and waits for the loop's answer."""

    def __init__(self, wake: Callable[[], None] = lambda: None, enabled: bool = False):
        self.enabled = enabled  # --web.enable-lifecycle
        self.workers = (0, 0)  # (started once, enabled databases): one tuple, swapped atomically
        self._wake = wake
        self._lock = threading.Lock()
        self._pending: list[_ReloadRequest] = []

    @property
    def ready(self) -> bool:
        started, total = self.workers
        return started >= total

    def request_reload(self, timeout: float = RELOAD_WAIT) -> str | None:
        """Ask the main loop for a reload and wait for it: None when done, else why it failed."""
        request = _ReloadRequest()
        with self._lock:
            self._pending.append(request)
        self._wake()
        if not request.done.wait(timeout):
            return f"the reload did not finish within {timeout:g} s"
        return request.error

    def take_reload_requests(self) -> list[_ReloadRequest]:
        """For the main loop: the requests waiting now (answer each with `answer`)."""
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    @staticmethod
    def answer(requests: list[_ReloadRequest], error: str | None) -> None:
        for request in requests:
            request.error = error
            request.done.set()


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header accepts gzip (`gzip`, `*`; not with q=0)."""
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() in ("gzip", "x-gzip", "*"):
            for param in params:
                name, _, value = param.partition("=")
                if name.strip().lower() == "q":
                    try:
                        return float(value) > 0
                    except ValueError:
                        return False
            return True
    return False


TEXT = "text/plain; charset=utf-8"
MAX_POST_BODY = 65536  # a POST body pgne reads (and ignores); a larger one closes the connection


def make_handler(state_dir: str, web: WebConfig, telemetry_path: str = "/metrics",
                 lifecycle: Lifecycle | None = None) -> type[BaseHTTPRequestHandler]:
    renderer = MetricsRenderer(state_dir)  # its caches live as long as the server
    lifecycle = lifecycle or Lifecycle()
    get_paths = {telemetry_path, "/", "/-/healthy", "/-/ready"}

    class Handler(BaseHTTPRequestHandler):
        server_version = f"pgne/{__version__}"
        timeout = HEAD_TIMEOUT  # each read and write until the headers are in (then IO_TIMEOUT)

        def setup(self) -> None:
            super().setup()
            # the head has one deadline and one size budget in all, not one per read (slowloris)
            self.rfile.close()
            self._reader = _HeadReader(self.connection, time.monotonic() + HEAD_TIMEOUT, MAX_HEAD_BYTES)
            self.rfile = io.BufferedReader(self._reader)

        def handle_one_request(self) -> None:
            self.requestline, self.request_version, self.command = "", "HTTP/1.0", ""  # for send_error
            try:
                super().handle_one_request()
            except _HeadTooLarge:
                self.close_connection = True
                self.send_error(431, f"The request line and headers are over {MAX_HEAD_BYTES} bytes")
            except OSError as exc:  # timed out, reset, closed to make room (TLS errors too)
                self.close_connection = True
                log.debug("HTTP connection from %s ended: %s", self.address_string(), exc)

        def parse_request(self) -> bool:
            parsed = super().parse_request()
            self._reader.head_read(time.monotonic() + IO_TIMEOUT)
            self.connection.settimeout(IO_TIMEOUT)
            return parsed

        def _authorized(self, head: bool = False) -> bool:
            if not web.users:
                self.server.working()
                return True
            header = self.headers.get("Authorization", "")
            scheme, _, encoded = header.partition(" ")
            if scheme.lower() == "basic":
                try:
                    user, sep, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
                except (ValueError, UnicodeDecodeError):
                    sep = ""
                try:
                    if sep and web.check_password(user, password, self.client_address[0]):
                        self.server.working()
                        return True
                except AuthBusy:
                    self.close_connection = True
                    self._send(429, TEXT, b"Too many password checks at once; try again.\n", head,
                               {"Retry-After": "1"})
                    return False
            self._send(401, TEXT, b"Unauthorized\n", head,
                       {"WWW-Authenticate": 'Basic realm="pgne", charset="UTF-8"'})
            return False

        def _get(self, head: bool) -> None:
            """GET, and HEAD: the same status and headers, no body."""
            path = self.path.split("?", 1)[0]
            try:
                if not self._authorized(head):
                    return
                if path == telemetry_path:
                    body, content_type = renderer.render(self.headers.get("Accept", ""), self.server.databases)
                    headers = {"Vary": "Accept-Encoding"}
                    if accepts_gzip(self.headers.get("Accept-Encoding", "")):
                        body = gzip.compress(body, compresslevel=6, mtime=0)
                        headers["Content-Encoding"] = "gzip"
                    self._send(200, content_type, body, head, headers)
                elif path == "/":
                    rows = database_rows(collect(state_dir, self.server.databases))
                    self._send(200, "text/html; charset=utf-8", landing_page(rows, telemetry_path), head)
                elif path == "/-/healthy":
                    self._send(200, TEXT, b"OK\n", head)
                elif path == "/-/ready":
                    started, total = lifecycle.workers
                    if started >= total:
                        self._send(200, TEXT, b"OK\n", head)
                    else:
                        self._send(503, TEXT, f"Not ready: {total - started} of {total} workers have not "
                                              "started yet.\n".encode(), head)
                elif path == "/-/reload":
                    self._send(405, TEXT, b"Only POST or PUT requests allowed.\n", head, {"Allow": "POST, PUT"})
                else:
                    self._send(404, TEXT, b"Not found\n", head)
            except BrokenPipeError:
                pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._get(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._get(head=True)

        def do_POST(self) -> None:  # noqa: N802
            """POST /-/reload, and PUT /-/reload (Prometheus takes either)."""
            path = self.path.split("?", 1)[0]
            try:
                self._discard_body()
                if not self._authorized():
                    return
                if path != "/-/reload":
                    if path in get_paths:
                        self._send(405, TEXT, b"Only GET and HEAD requests allowed.\n", False, {"Allow": "GET, HEAD"})
                    else:
                        self._send(404, TEXT, b"Not found\n")
                elif not lifecycle.enabled:
                    self._send(403, TEXT, b"Lifecycle API is not enabled.\n")
                else:
                    error = lifecycle.request_reload()
                    if error is None:
                        self._send(200, TEXT, b"OK\n")
                    else:
                        self._send(500, TEXT, f"failed to reload config: {error}\n".encode())
            except BrokenPipeError:
                pass

        do_PUT = do_POST  # noqa: N815

        def _discard_body(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if 0 <= length <= MAX_POST_BODY:
                self.rfile.read(length)
            else:  # cannot know where the next request starts
                self.close_connection = True

        def _send(self, status: int, content_type: str, body: bytes, head: bool = False,
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


class _HeadTooLarge(Exception):
    pass


class _HeadReader(io.RawIOBase):
    """A connection's bytes for its rfile: until head_read(), every read shares one deadline and
    one byte budget (a client sending a byte a second, or endless headers, is cut off); then the
    body gets a deadline of its own."""

    def __init__(self, sock: socket.socket, deadline: float, budget: int):
        self.sock, self.deadline, self.budget = sock, deadline, budget

    def head_read(self, body_deadline: float) -> None:
        self.deadline, self.budget = body_deadline, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("the request did not arrive in time")
        view = memoryview(buffer)
        if self.budget is not None:
            if self.budget <= 0:
                raise _HeadTooLarge
            view = view[:self.budget]
        self.sock.settimeout(remaining)
        received = self.sock.recv_into(view)
        if self.budget is not None:
            self.budget -= received
        return received


@dataclass(eq=False)
class _Connection:
    sock: socket.socket  # the accepted socket, then its TLS socket
    since: float = field(default_factory=time.monotonic)
    working: bool = False  # its request arrived (and was authorized): never closed to make room
    closed: bool = False  # its thread is closing it: not to be touched


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    ssl_context: ssl.SSLContext | None = None
    databases: frozenset[tuple[str, str]] | None = None  # (host, database) served; None: all

    def __init__(self, *args, **kwargs):
        self._room = threading.Condition()  # guards the three below
        self._slots = 0  # accepted connections not yet closed (and one being accepted)
        self._connections: dict[socket.socket, _Connection] = {}  # by accepted socket
        self._current = threading.local()  # the _Connection of a connection's thread
        super().__init__(*args, **kwargs)

    def get_request(self):
        # Called by serve_forever when a connection waits. At the cap, close the connection
        # that has waited longest for its request, and wait for a slot; without one, raise
        # OSError: serve_forever skips this round and the connection stays in the backlog.
        with self._room:
            if self._slots >= MAX_CONNECTIONS:
                self._close_longest_waiting()
                if not self._room.wait_for(lambda: self._slots < MAX_CONNECTIONS, ACCEPT_WAIT):
                    raise OSError("at the HTTP connection cap")
            self._slots += 1
        try:
            request, address = super().get_request()
        except OSError as exc:
            with self._room:
                self._slots -= 1
                self._room.notify_all()
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.warning("HTTP: cannot accept a connection: %s", exc.strerror)
                time.sleep(ACCEPT_WAIT)  # the connection stays readable: do not spin until it fits
            raise
        with self._room:
            self._connections[request] = _Connection(request)
        return request, address

    def _close_longest_waiting(self) -> None:
        waiting = [c for c in self._connections.values() if not (c.working or c.closed)]
        if waiting:
            oldest = min(waiting, key=lambda c: c.since)
            oldest.closed = True
            try:
                # socket.socket's own shutdown, also on a TLS socket: no TLS state is touched,
                # its thread sees EOF or an error at once and ends
                socket.socket.shutdown(oldest.sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def working(self) -> None:
        """The current connection's request is in and authorized: keep it open at the cap."""
        with self._room:
            self._current.connection.working = True

    def finish_request(self, request, client_address) -> None:
        # Runs in the connection's own thread: a client that never finishes its TLS handshake
        # holds only this thread (prometheus_client's server shakes hands in accept()).
        with self._room:
            connection = self._current.connection = self._connections[request]
        sock = request
        try:
            if self.ssl_context is not None:
                request.settimeout(HANDSHAKE_TIMEOUT)
                try:
                    sock = self.ssl_context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
                    with self._room:
                        connection.sock = sock
                    sock.do_handshake()
                except (ssl.SSLError, OSError) as exc:
                    log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                    return
            super().finish_request(sock, client_address)
        finally:
            with self._room:
                connection.closed = True
            if sock is not request:
                sock.close()

    def shutdown_request(self, request) -> None:
        with self._room:
            connection = self._connections.pop(request, None)
            if connection is not None:
                connection.closed = True
        super().shutdown_request(request)
        with self._room:
            self._slots -= 1
            self._room.notify_all()

    def handle_error(self, request, client_address) -> None:
        # socketserver prints a traceback to stderr: one log line instead (a log line each)
        import sys

        log.warning("HTTP: error serving %s: %s", client_address[0], sys.exc_info()[1])


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    def __init__(self, address: tuple[str, int], state_dir: str, web: WebConfig | None = None,
                 telemetry_path: str = "/metrics", lifecycle: Lifecycle | None = None):
        web = web or WebConfig()
        server_class = _Server6 if ":" in address[0] else _Server
        self.httpd = server_class(address, make_handler(state_dir, web, telemetry_path, lifecycle))
        self.httpd.ssl_context = web.ssl_context
        self.scheme = "https" if web.ssl_context else "http"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="pgne-http", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def connections(self) -> int:
        """The descriptors HTTP connections hold now (at most MAX_CONNECTIONS + 1 being accepted):
        what a worker start leaves free counts the rest (pgne.launcher)."""
        return self.httpd._slots  # an int read once: no lock needed

    def serve_databases(self, databases: frozenset[tuple[str, str]]) -> None:
        """Only these (host, database) pairs appear in /metrics (one atomic swap: no lock)."""
        self.httpd.databases = databases

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
