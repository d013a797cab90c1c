"""What one scrape shows: this process's figures (``Alone``), or every worker's merged
(``Fleet``), so that an operator scrapes one target whichever worker the kernel hands it to.

Each worker of a ``Fleet`` also listens on a unix socket of its own, ``<index>`` in the
directory the supervisor made for them (``Worker.peers``, private to the service's user). The
worker that gets a scrape asks every peer there, all at once and within ``PEER_DEADLINE``: one
line (``metrics`` or ``ready``) in, one JSON document out, then the peer closes. Figures travel
as metric families (``merge.to_wire``), not as text to parse again. A peer that does not answer
in time (restarting, stopped, overloaded) is left out of the sums and shown as
``worker_up{worker="i"} 0``; for ``/readyz`` it makes the service not ready, by name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from ..runtime import listeners, unix_socket
from .merge import Snapshot, from_wire, merge, to_wire
from .metrics import ConnectorCollector, Observed

log = logging.getLogger(__name__)

PEER_DEADLINE = 1.0
"""Seconds a scrape waits for its peers (connect, ask, answer), all asked at once; a worker's
event loop answers in milliseconds unless it is stuck, and a probe should not wait long."""
MAX_PEER_ANSWER = 8 * 1024 * 1024
"""Bytes a peer's answer may take: a few hundred per endpoint, so far above any real config."""
_QUESTIONS = frozenset({b"metrics", b"ready"})
_MAX_QUESTION = 16


def local_problem(daemon: Observed) -> str | None:
    """Why this process is not ready, or ``None``."""
    if daemon.ready:
        return None
    down = [e.config.name for e in daemon.endpoints if not e.is_serving]
    return f"not listening: {', '.join(down)}" if down else "stopping"


class Alone:
    """One process: its own figures and readiness, as a scrape shows them without workers."""

    def __init__(self, daemon: Observed) -> None:
        self._daemon = daemon
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(ConnectorCollector(daemon))
        ProcessCollector(registry=self._registry)

    async def start(self) -> None:
        """Nothing to listen on; a ``Fleet`` listens for its peers."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def metrics(self) -> bytes:
        """The Prometheus text of ``/metrics``."""
        return generate_latest(self._registry)

    async def problems(self) -> list[str]:
        """Why the service is not ready (``/readyz``); empty when it is."""
        problem = local_problem(self._daemon)
        return [problem] if problem else []


class PeerError(Exception):
    """A peer gave no usable answer; the message says why, for ``/readyz`` and the log."""


class Fleet(Alone):
    """One worker of several: answers its peers, and asks them when it is scraped.

    Started with the first metrics listener and kept for the worker's life (a reload that turns
    metrics off here may leave them on in a worker that could not apply it), so a peer can
    always ask."""

    def __init__(self, daemon: Observed, index: int, count: int, directory: str) -> None:
        super().__init__(daemon)
        self._index, self._count = index, count
        self._directory = Path(directory)
        self._server: asyncio.Server | None = None
        self._inode = 0
        self._asking: dict[bytes, asyncio.Task[dict[int, Any]]] = {}
        """A question under way: concurrent scrapes share it, so peers get one at a time."""
        self._silent: set[int] = set()
        """Peers that did not answer last time: logged once per change."""

    def _path(self, index: int) -> str:
        return str(self._directory / str(index))

    async def start(self) -> None:
        """Listen on this worker's socket (once; later calls do nothing)."""
        if self._server is not None:
            return
        path = self._path(self._index)
        sock = listeners.bind_unix(path)
        try:
            self._inode = os.lstat(path).st_ino
            self._server = await asyncio.start_unix_server(
                self._answer, sock=sock, limit=_MAX_QUESTION
            )
        except OSError:
            sock.close()
            raise

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._asking.values()):
            task.cancel()
        unix_socket.remove_socket(self._path(self._index), self._inode)
        self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A peer's question: ``metrics`` (this worker's families) or ``ready`` (its problem)."""
        try:
            async with asyncio.timeout(PEER_DEADLINE):
                question = (await reader.readuntil(b"\n")).rstrip(b"\n")
                if question not in _QUESTIONS:
                    return
                if question == b"metrics":
                    answer: object = to_wire(self._registry.collect())
                else:
                    answer = local_problem(self._daemon)
                writer.write(json.dumps(answer, separators=(",", ":")).encode())
                await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the asking peer has gone or gave up: nothing to answer
        finally:
            writer.close()

    async def metrics(self) -> bytes:
        answers = await self._ask_all(b"metrics")
        figures = {self._index: list(self._registry.collect())}
        missing = []
        for index, answer in sorted(answers.items()):
            if isinstance(answer, PeerError):
                missing.append(index)
            else:
                figures[index] = answer
        return generate_latest(Snapshot(merge(figures, missing)))

    async def problems(self) -> list[str]:
        answers: dict[int, Any] = await self._ask_all(b"ready")
        answers[self._index] = local_problem(self._daemon)
        return [
            f"worker {index}: {answer}"
            for index, answer in sorted(answers.items())
            if answer is not None
        ]

    async def _ask_all(self, question: bytes) -> dict[int, Any]:
        """Every peer's answer to ``question`` (``_ask``), asked once for all the scrapes that
        come while it is under way."""
        task = self._asking.get(question)
        if task is None:
            task = asyncio.create_task(self._ask_peers(question))
            self._asking[question] = task
            task.add_done_callback(lambda _: self._asking.pop(question, None))
        return dict(await asyncio.shield(task))

    async def _ask_peers(self, question: bytes) -> dict[int, Any]:
        """Every peer's answer; a peer that stops or starts answering is logged once."""
        peers = [i for i in range(self._count) if i != self._index]
        answers = await asyncio.gather(*(self._ask(index, question) for index in peers))
        for index, answer in zip(peers, answers, strict=True):
            if isinstance(answer, PeerError) and index not in self._silent:
                self._silent.add(index)
                log.warning("metrics: worker %d does not answer its peers: %s", index, answer)
            elif not isinstance(answer, PeerError) and index in self._silent:
                self._silent.discard(index)
                log.info("metrics: worker %d answers again", index)
        return dict(zip(peers, answers, strict=True))

    async def _ask(self, index: int, question: bytes) -> Any:
        """One peer's answer: its families (``metrics``), its problem or ``None`` (``ready``),
        or the ``PeerError`` that says why there is none."""
        try:
            async with asyncio.timeout(PEER_DEADLINE):
                reader, writer = await asyncio.open_unix_connection(self._path(index))
                try:
                    writer.write(question + b"\n")
                    data = await _read_all(reader)
                finally:
                    writer.close()
        except TimeoutError:
            return PeerError(f"no answer within {PEER_DEADLINE:g} s")
        except PeerError as error:
            return error
        except OSError as error:
            return PeerError(f"not answering ({error.strerror or error})")
        try:
            answer = json.loads(data)
            if question == b"metrics":
                return from_wire(answer)
        except ValueError:
            return PeerError("bad answer")
        return answer if answer is None or isinstance(answer, str) else PeerError("bad answer")


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """Up to end of file, at most ``MAX_PEER_ANSWER`` bytes."""
    chunks, size = [], 0
    while chunk := await reader.read(64 * 1024):
        size += len(chunk)
        if size > MAX_PEER_ANSWER:
            raise PeerError(f"answer over {MAX_PEER_ANSWER} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
