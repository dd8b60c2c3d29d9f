"""The launcher: the process that forks pgne's workers (`python -m pgne.launcher_process`).

The master starts it once (fork+exec, pgne.launcher) with a whitelisted environment, so it
holds no password and none of the master's threads or locks. It imports the worker's module
ahead and freezes its objects (gc.freeze), so every worker it forks shares those pages
copy-on-write. It talks to the master over one inherited SOCK_SEQPACKET socket (no path, no
temporary file): one JSON message per packet, descriptors beside it (SCM_RIGHTS).

master -> launcher
    {"hello": {"sys_path", "cwd", "module", "private_dir"}}   first, once
    {"start": ID}  + the read end of the worker's spec pipe (ID: unique in the master, increasing)
    {"release": ID}  the master has handled that worker's end (and folded its metrics files): reap it
    {"bye": true}  before the master closes its end (it stops, or retires this launcher)
launcher -> master
    {"started": ID, "pid": PID}  + a pidfd on the worker, opened before the launcher can reap it
    {"failed": ID, "reason": TEXT}  the launcher could not start it (EMFILE, EAGAIN, ...)
    {"exited": ID, "pid": PID, "status": STATUS}  a worker ended (the raw wait status); it stays a
        zombie until the master's "release": while it is one, the system cannot give its pid to
        another process, so no new worker is ever taken for it, nor writes into its pid's files

Nothing that goes wrong with one request ends the launcher. It exits when the master's end of
the socket closes (EOF: the master is gone, however it died); its workers then get their own
PR_SET_PDEATHSIG (and their spec pipes' EOF), and init reaps the zombies. Its own
PR_SET_PDEATHSIG against the master is SIGCONT: a launcher that was stopped (SIGSTOP) when the
master died resumes and reads that EOF too (a stopped process acts on no other signal). If the
master died without stopping (SIGKILL), the launcher removes the master's private state directory.
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
        self.children: dict[int, int] = {}  # request id -> pid of every child not reaped yet
        self.ended: set[int] = set()  # request ids reported "exited": zombies until released
        self.released: set[int] = set()  # released before we saw them end (a lost status)

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
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the loop: report ends
        signal.signal(signal.SIGCONT, lambda *_: None)  # wakes the loop (our death signal): EOF?
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the master decides
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(self.wakeup_r, select.POLLIN)
        while not self.terminate:
            self._report_ends()
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
            elif "release" in message:
                self._release(message["release"])
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
                os.waitpid(pid, 0)  # at once: it has run nothing of a worker's yet
                self._answer({"failed": request, "reason": f"pidfd_open: {exc.strerror or exc}"})
                return
            self.children[request] = pid
            try:
                self._answer({"started": request, "pid": pid}, pidfd)
            finally:
                if pidfd is not None:
                    os.close(pidfd)
        finally:
            os.close(spec_fd)

    def _report_ends(self) -> None:
        """Report every child that has ended, without reaping it (WNOWAIT): its pid stays
        taken until the master releases it."""
        for request, pid in list(self.children.items()):
            if request in self.ended:
                continue
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped already (cannot happen: only _release reaps)
                del self.children[request]
                continue
            if info is None:
                continue
            self.ended.add(request)
            self._answer({"exited": request, "pid": pid, "status": _wait_status(info)})
            if request in self.released:
                self._release(request)

    def _release(self, request: int) -> None:
        pid = self.children.get(request)
        if pid is None:
            return
        if request not in self.ended:  # the master gave up waiting for its status (we were stopped)
            try:
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                    self.released.add(request)  # reap it when it ends
                    return
            except ChildProcessError:
                pass
        try:
            os.waitpid(pid, 0)  # a zombie: at once
        except ChildProcessError:
            pass
        del self.children[request]
        self.ended.discard(request)
        self.released.discard(request)

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
            for signum in (signal.SIGCHLD, signal.SIGCONT, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
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


def _wait_status(info: os.waitid_result) -> int:
    """A waitid result as the raw status waitpid would give (os.waitstatus_to_exitcode reads it)."""
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xFF) << 8
    return (info.si_status & 0x7F) | (0x80 if info.si_code == os.CLD_DUMPED else 0)


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
    # SIGCONT: it resumes a stopped launcher (a stopped process acts on no other signal but
    # SIGKILL), whose loop then reads the socket's EOF, cleans up after the master and exits;
    # a running launcher reads that EOF anyway (the handler only wakes its loop)
    die_with(signal.SIGCONT)
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
