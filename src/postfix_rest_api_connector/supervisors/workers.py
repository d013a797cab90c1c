"""Several worker processes, so that every core answers Postfix (``workers`` in the config).

One event loop is one core's worth of Python. Each worker is a forked copy running the same
``Daemon`` as a single process does; its TCP listeners use ``SO_REUSEPORT``, so the kernel spreads
new connections over the workers. The supervisor forks them before any event loop or HTTP client
thread exists (fork-safe), forwards SIGTERM/SIGINT/SIGHUP, restarts a worker that dies, and speaks
for all of them to systemd: each worker's ``NOTIFY_SOCKET`` is the supervisor's own datagram
socket, and the supervisor says ``READY=1`` once every worker has. Beside it, the directory
``peers`` is where each worker listens for the others (``Worker.peers``: one metrics view); the
supervisor only makes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import selectors
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..runtime.daemon import Worker
from ..runtime.notify import notify, parse_reload_result
from .inbox import open_inbox, read_messages
from .reloads import KnownConfigs

log = logging.getLogger(__name__)

RESPAWN_DELAY = 1.0
"""Seconds between restarts of a worker that keeps dying, so a crash loop costs little."""
_PR_SET_PDEATHSIG = 1
_FORWARDED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def _stop_with_parent(supervisor: int) -> None:
    """Get SIGTERM (drain and exit) if the supervisor dies, even by SIGKILL: no orphans."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("cannot ask to stop with the supervisor: errno %d", ctypes.get_errno())
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass(slots=True)
class _Child:
    index: int
    config: Config
    """What the worker runs: its start's config, or the one its last applied reload read; so
    what it restarts from."""
    pid: int = 0
    started: bool = False
    """It said ``READY=1`` after starting (this time; ``ever_ready``: any time)."""
    ever_ready: bool = False
    asked: bool = False
    """A SIGHUP was sent to it and it has not answered yet: one at a time, so that an answer
    can only be to that reload (signals sent close together would merge into one)."""
    owes: bool = False
    """A reload came while it was asked or down: it gets SIGHUP once it answers or restarts."""
    started_at: float = 0.0

    @property
    def ready(self) -> bool:
        """Started and caught up with every reload: only then may systemd hear ``READY=1``."""
        return self.started and not self.asked and not self.owes


WorkerMain = Callable[[Config, Worker], int]


def _failure_status(code: int) -> int:
    """The supervisor's exit status for a worker that failed with ``code``: its own if it exited
    with one, else 1 (killed by a signal: ``-signum``, which as an exit status would be 256 - n)."""
    return 1 if code <= 0 else code


class Supervisor:
    """Forks the workers and keeps them running until told to stop."""

    def __init__(self, config: Config, path: str, count: int, worker_main: WorkerMain) -> None:
        self._path = path
        self._worker_main = worker_main
        self._children = [_Child(index, config) for index in range(count)]
        self._stopping = False
        self._signals: list[int] = []
        self._announced = False
        self._status = 0
        self._known = KnownConfigs(path)
        """Configs this supervisor validated on a reload, by their file's digest."""
        self._peers: str | None = None
        """The workers' directory for their private sockets, in this supervisor's own."""

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT and every worker has drained; the exit status (0 only if
        every worker exited 0, so a second signal that kills them gives 1)."""
        with tempfile.TemporaryDirectory(prefix="prac-") as directory:
            notify_path = str(Path(directory) / "notify")
            self._peers = str(Path(directory) / "peers")
            os.mkdir(self._peers, 0o700)
            with open_inbox(notify_path) as inbox:
                return self._serve(inbox, notify_path)

    def _serve(self, inbox: socket.socket, notify_path: str) -> int:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        previous_wakeup = signal.set_wakeup_fd(wake_write)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in handled}
        selector = selectors.DefaultSelector()
        selector.register(inbox, selectors.EVENT_READ)
        selector.register(wake_read, selectors.EVENT_READ)
        try:
            for child in self._children:
                self._spawn(child, notify_path)
            log.info("supervising %d workers", len(self._children))
            while not self._stopping or any(child.pid for child in self._children):
                for key, _ in selector.select(timeout=self._until_respawn()):
                    if key.fileobj is inbox:
                        self._read_notifications(inbox)
                    else:
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_read, 4096)
                self._handle_signals()
                self._reap(notify_path)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_wakeup)
            selector.close()
            os.close(wake_read)
            os.close(wake_write)
        log.info("stopped")
        return self._status

    def _until_respawn(self) -> float | None:
        """Seconds until a dead worker may be restarted; ``None`` (wait for an event: a signal,
        a child's exit or a message) while none is waiting for its restart."""
        if self._stopping:
            return None
        due = [c.started_at + RESPAWN_DELAY for c in self._children if not c.pid]
        return max(min(due) - time.monotonic(), 0.0) if due else None

    def _on_signal(self, signum: int, _: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGCHLD:
                continue  # _reap runs after every wake-up
            if signum == signal.SIGHUP:
                self._reload()
                continue
            if self._stopping:
                # reaped below with a non-zero status, so the exit status is 1, as a single
                # process's: requests cut short are not a clean stop
                log.warning("second %s: stopping the workers at once", signal.Signals(signum).name)
                self._forward(signal.SIGKILL)
                continue
            log.info("received %s: stopping the workers", signal.Signals(signum).name)
            self._stopping = True
            notify("STOPPING=1")
            self._forward(signal.SIGTERM)

    def _reload(self) -> None:
        """Every worker reloads the file itself and says whether it applied it: a worker that
        could not (a port taken, say) runs the previous config, and restarts from that one too."""
        if self._stopping:
            return
        self._known.remember_file()  # invalid or unreadable: each worker logs the problems
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        self._announced = False
        for child in self._children:
            if child.pid and not child.asked:
                self._ask(child)
            else:  # down (asked once restarted, _spawn) or still busy with the previous reload
                child.owes = True

    def _ask(self, child: _Child) -> None:
        child.asked, child.owes = True, False
        with contextlib.suppress(ProcessLookupError):  # it died: reaped, and asked once restarted
            os.kill(child.pid, signal.SIGHUP)

    def _forward(self, signum: int) -> None:
        for child in self._children:
            if child.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    def _read_notifications(self, inbox: socket.socket) -> None:
        """A worker's READY=1 (after start or a reload); the sender is known by its pid."""
        for pid, fields in read_messages(inbox):
            child = next((c for c in self._children if c.pid and c.pid == pid), None)
            if child is None:
                continue
            if b"READY=1" not in fields:
                continue
            child.started = child.ever_ready = True
            answer = parse_reload_result(fields)
            if answer is not None:
                self._reloaded(child, *answer)
        if not self._announced and not self._stopping and all(c.ready for c in self._children):
            self._announced = True
            notify(f"READY=1\nSTATUS=serving with {len(self._children)} workers")

    def _reloaded(self, child: _Child, applied: bool, digest: str | None) -> None:
        """A worker's answer to a reload: the config it restarts from is the one it read."""
        child.asked = False
        if applied:
            config = self._known.config_for(digest)
            if config is not None:
                child.config = config
            else:
                log.warning(
                    "worker %d applied a config file that changed after it was read here;"
                    " it restarts from its previous config if it dies until the next reload",
                    child.index,
                )
        elif digest is not None and digest in self._known:  # else invalid: the worker said so
            log.warning(
                "worker %d kept its previous config, which it restarts from if it dies",
                child.index,
            )
        if child.owes and not self._stopping:  # another reload came meanwhile
            self._ask(child)

    def _reap(self, notify_path: str) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                break
            child = next((c for c in self._children if c.pid == pid), None)
            if child is None:
                continue
            child.pid, child.started = 0, False
            if child.asked:  # it never answered: it runs the reload once restarted
                child.asked, child.owes = False, True
            code = os.waitstatus_to_exitcode(status)
            if not child.ever_ready and not self._stopping:
                # it never started (a port taken, say): like a single process, give up
                log.error("worker %d could not start; stopping", child.index)
                self._status = _failure_status(code)
                self._stopping = True
                self._forward(signal.SIGTERM)
            elif self._stopping:
                if code != 0:  # killed by a second signal, or it failed while draining
                    log.warning(
                        "worker %d (pid %d) exited with status %d while stopping",
                        child.index,
                        pid,
                        code,
                    )
                    self._status = self._status or 1
            else:
                log.error(
                    "worker %d (pid %d) exited with status %d; restarting it",
                    child.index,
                    pid,
                    code,
                )
        if not self._stopping:
            for child in self._children:
                if not child.pid and time.monotonic() - child.started_at >= RESPAWN_DELAY:
                    self._spawn(child, notify_path)

    def _spawn(self, child: _Child, notify_path: str) -> None:
        child.started_at = time.monotonic()
        # blocked across the fork: the worker unblocks them once its own handlers are in place
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        supervisor = os.getpid()
        try:
            pid = os.fork()
        except OSError as error:  # out of memory or processes: try again after RESPAWN_DELAY
            log.error("cannot start worker %d: %s", child.index, error)  # noqa: TRY400
            pid = -1
        if pid:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
            if pid > 0:
                child.pid = pid
                if child.owes:  # a reload it missed: it runs it once started
                    self._ask(child)
            return
        # the worker: default signal handling, its own notify target, then the normal daemon
        status = 1
        try:
            _stop_with_parent(supervisor)
            os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor only, which forwards it
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            os.environ["NOTIFY_SOCKET"] = notify_path
            worker = Worker(child.index, len(self._children), self._peers)
            status = self._worker_main(child.config, worker)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            log.exception("worker %d failed", child.index)
        finally:
            logging.shutdown()
            os._exit(status)
