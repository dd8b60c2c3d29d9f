"""The launcher: the process that forks pgne's workers (`python -m pgne.launcher_process`).

The master starts it once (fork+exec, pgne.launcher) with a whitelisted environment, so it
holds no password and none of the master's threads or locks. It imports the worker's module
ahead and freezes its objects (gc.freeze), so every worker it forks shares those pages
copy-on-write. It talks to the master over one inherited SOCK_SEQPACKET socket (no path, no
temporary file): one JSON message per packet, descriptors beside it (SCM_RIGHTS).

master -> launcher
    {"hello": {"sys_path", "cwd", "module", "private_dir"}}   first, once
    {"start": ID}  + the read end of the worker's spec pipe
    {"bye": true}  before the master closes its end (it stops, or retires this launcher)
launcher -> master
    {"started": ID, "pid": PID}  + a pidfd on the worker, opened before the launcher can reap it
    {"failed": ID, "reason": TEXT}  the launcher could not start it (EMFILE, EAGAIN, ...)
    {"exited": PID, "status": STATUS}  a worker was reaped (the raw wait status)

Nothing that goes wrong with one request ends the launcher. It exits when the master's end of
the socket closes (EOF: the master is gone, however it died) or PR_SET_PDEATHSIG says so;
its workers then get their own PR_SET_PDEATHSIG (and their spec pipes' EOF). If the master
died without stopping (SIGKILL), the launcher removes the master's private state directory.
"""
from __future__ import annotations

import array
import errno
import gc
import importlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import sys
import time
import traceback

MAX_MESSAGE = 1 << 16  # the hello (sys.path) is the largest; every other message is tiny
_FD_SPACE = socket.CMSG_SPACE(array.array("i", [0]).itemsize)


def pack(message: dict) -> bytes:
    return json.dumps(message).encode()


def receive(sock: socket.socket, wait: bool = False) -> tuple[dict | None, int | None, bool]:
    """One message: (message, the fd that came with it, whether an fd was lost (MSG_CTRUNC:
    the receiver was out of descriptors)); (None, None, False) at EOF. Unless `wait`,
    BlockingIOError when nothing is there."""
    data, ancillary, flags, _ = sock.recvmsg(MAX_MESSAGE, _FD_SPACE, 0 if wait else socket.MSG_DONTWAIT)
    if not data:
        return None, None, False
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    for extra in fds[1:]:  # never more than one is sent
        os.close(extra)
    return json.loads(data), (fds[0] if fds else None), bool(flags & socket.MSG_CTRUNC)


def die_with(signum: int) -> None:
    """PR_SET_PDEATHSIG (pgne.protocol.die_with_parent), here against the master."""
    from pgne.protocol import die_with_parent

    die_with_parent(signum)


class Launcher:
    def __init__(self, sock: socket.socket, master: int):
        self.sock = sock
        self.master = master
        self.module = None  # the worker's module, once imported
        self.import_error: str | None = None
        self.private_dir: str | None = None
        self.wakeup_r, self.wakeup_w = os.pipe()
        for fd in (self.wakeup_r, self.wakeup_w):
            os.set_blocking(fd, False)
        self.terminate = False
        self.bye = False  # the master said it closes its end: it is not dying

    def hello(self, hello: dict) -> None:
        sys.path[:] = hello["sys_path"]  # the master's: a test's stand-in worker module too
        try:
            os.chdir(hello["cwd"])  # the workers run where the master was started
        except (OSError, TypeError):
            pass
        self.private_dir = hello.get("private_dir")
        try:
            self.module = importlib.import_module(hello["module"])
        except BaseException as exc:  # noqa: BLE001 - said to the master at every start, never our end
            self.import_error = f"cannot import {hello['module']}: {type(exc).__name__}: {exc}"
        gc.collect()
        gc.freeze()  # what is imported now is shared with every worker: their collections never touch it

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the loop: reap
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the master decides
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(self.wakeup_r, select.POLLIN)
        while not self.terminate:
            self._reap()
            try:
                ready = dict(poller.poll())
            except InterruptedError:
                continue
            if self.wakeup_r in ready:
                try:
                    os.read(self.wakeup_r, 512)
                except BlockingIOError:
                    pass
            if self.sock.fileno() in ready and not self._serve():
                break
        self._reap()
        if self.private_dir and not self.bye and self._orphaned():  # the master died without cleaning up
            shutil.rmtree(self.private_dir, ignore_errors=True)
        return 0

    def _orphaned(self, wait: float = 2.0) -> bool:
        """Whether the master has died: we are reparented. A dying process closes its
        descriptors (our EOF) a moment before its children are reparented: wait for that."""
        deadline = time.monotonic() + wait
        while os.getppid() == self.master:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _on_term(self, signum: int, frame: object) -> None:
        self.terminate = True

    def _serve(self) -> bool:
        """Handle every queued request; False once the master is gone (EOF)."""
        while True:
            try:
                message, fd, truncated = receive(self.sock)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno == errno.EMFILE or exc.errno == errno.ENFILE:  # a request we cannot read: it times out
                    return True
                return False
            if message is None:
                return False
            if "hello" in message:
                self.hello(message["hello"])
            elif "bye" in message:
                self.bye = True
            elif "start" in message:
                self._start(message["start"], fd, truncated)
            elif fd is not None:
                os.close(fd)

    def _answer(self, message: dict, fd: int | None = None) -> None:
        try:
            if fd is None:
                self.sock.sendall(pack(message))
            else:
                socket.send_fds(self.sock, [pack(message)], [fd])
        except OSError:  # the master is gone (EPIPE): the loop sees the EOF
            pass

    def _start(self, request: int, spec_fd: int | None, truncated: bool) -> None:
        if spec_fd is None:
            why = "the launcher is out of file descriptors" if truncated else "no spec pipe came with the request"
            self._answer({"failed": request, "reason": why})
            return
        try:
            if self.module is None:
                self._answer({"failed": request, "reason": self.import_error or "no hello from the master"})
                return
            try:
                pid = os.fork()
            except OSError as exc:
                self._answer({"failed": request, "reason": f"fork: {exc.strerror or exc}"})
                return
            if pid == 0:
                self._run_worker(spec_fd)  # never returns
            try:
                pidfd = os.pidfd_open(pid)  # before we can reap it (only this loop reaps): it is our child
            except AttributeError:  # not Linux 5.3+: the master goes by the pid and our "exited"
                pidfd = None
            except OSError as exc:
                os.kill(pid, signal.SIGKILL)  # ours and not reaped: the pid is still its own
                self._answer({"failed": request, "reason": f"pidfd_open: {exc.strerror or exc}"})
                return
            try:
                self._answer({"started": request, "pid": pid}, pidfd)
            finally:
                if pidfd is not None:
                    os.close(pidfd)
        finally:
            os.close(spec_fd)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._answer({"exited": pid, "status": status})

    # -- in the child ---------------------------------------------------------------------------

    def _run_worker(self, spec_fd: int) -> None:
        """A worker's first code, in the launcher's child. It ends with the launcher
        (PR_SET_PDEATHSIG; the launcher may have died before the prctl: getppid says so),
        keeps only stdio and its spec pipe, and never returns into the launcher's loop."""
        code = 1
        try:
            parent = os.getppid()
            die_with(signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(0)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            _close_all_but({0, 1, 2, spec_fd})
            gc.freeze()  # what the launcher allocated since its own freeze
            result = self.module.main(spec_fd)
            code = result if isinstance(result, int) else 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - a worker's crash is its exit status, never the launcher's
            traceback.print_exc()
        finally:
            try:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code & 0xFF if code >= 0 else 1)


def _close_all_but(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:  # the listing's own descriptor, closed already
                pass


def main(argv: list[str]) -> int:
    """argv: the inherited socket's fd, the master's pid."""
    fd, master = int(argv[0]), int(argv[1])
    die_with(signal.SIGTERM)  # then the loop ends (cleaning up after a killed master)
    if os.getppid() != master:  # the master died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)  # our answers wait for room; requests are read with MSG_DONTWAIT
    launcher = Launcher(sock, master)
    message, extra, _ = receive(sock, wait=True)  # the hello: nothing else to do before it
    if extra is not None:
        os.close(extra)
    if message is None:
        return 0
    launcher.hello(message.get("hello") or {})
    return launcher.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
