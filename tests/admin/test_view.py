"""A worker's side of the one metrics view, in this event loop: its own private socket, and
what a peer that answers wrongly becomes. The peer here is a real unix-socket server of the
test's, at the path a second worker would listen on."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from test_metrics import METRICS, fetch, get, labels, scrape

from conftest import DEADLINE, FakeApi, endpoint_config
from postfix_rest_api_connector.admin.view import MAX_PEER_ANSWER
from postfix_rest_api_connector.config import parse_config
from postfix_rest_api_connector.runtime.daemon import Daemon, Worker


@contextmanager
def peers_directory() -> Iterator[Path]:
    """Short enough for a unix socket's path (``tmp_path`` is not)."""
    with tempfile.TemporaryDirectory(prefix="prac-", dir="/tmp") as directory:
        yield Path(directory)


@asynccontextmanager
async def worker_0_of_2(api: FakeApi, peers: Path) -> AsyncIterator[Daemon]:
    endpoint = endpoint_config("tcp-lookup", api.url)
    config = parse_config({"endpoints": [endpoint], "metrics": METRICS})
    daemon = Daemon(config, worker=Worker(0, 2, str(peers)))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


@asynccontextmanager
async def stand_in_peer(path: Path, answer: bytes) -> AsyncIterator[list[bytes]]:
    """Worker 1's socket, answering ``answer`` to every question; yields the questions."""
    questions: list[bytes] = []

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        questions.append(await reader.readline())
        writer.write(answer)
        try:
            await writer.drain()
        except ConnectionResetError:  # the asker stopped reading: what a limit must do
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(reply, str(path))
    try:
        yield questions
    finally:
        server.close()


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"{", "bad answer"),
        (b'{"families": []}', "bad answer"),
        (b" " * (MAX_PEER_ANSWER + 1), f"answer over {MAX_PEER_ANSWER} bytes"),
    ],
    ids=["not-json", "other-shape", "too-large"],
)
async def test_a_peer_that_answers_wrongly_is_a_labelled_gap(
    api: FakeApi, answer: bytes, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    api.answer_json(["v"])
    with peers_directory() as peers:
        async with worker_0_of_2(api, peers) as daemon, stand_in_peer(peers / "1", answer) as asked:
            assert await get(daemon, "k") == b"200 v\n"
            samples = await scrape(daemon)
            assert await fetch(daemon, "/readyz") == (503, f"not ready: worker 1: {problem}\n")
            await scrape(daemon)
    assert asked == [b"metrics\n", b"ready\n", b"metrics\n"]
    assert samples[("worker_up", labels(worker="0"))] == 1
    assert samples[("worker_up", labels(worker="1"))] == 0
    found = labels(endpoint="test-tcp-lookup", mode="tcp-lookup", outcome="found")
    assert samples[("requests_total", found)] == 1
    assert caplog.text.count("worker 1 does not answer its peers") == 1  # once, not per scrape


async def ask(path: Path, question: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(question)
        return await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()


async def test_the_private_socket_answers_its_two_questions_only(api: FakeApi) -> None:
    with peers_directory() as peers:
        async with worker_0_of_2(api, peers), stand_in_peer(peers / "1", b"null"):
            own = peers / "0"
            assert own.stat().st_mode & 0o777 == 0o600
            assert await ask(own, b"ready\n") == b"null"
            families = json.loads(await ask(own, b"metrics\n"))
            assert "postfix_rest_api_connector_requests" in {family[0] for family in families}
            assert await ask(own, b"status\n") == b""
            assert await ask(own, b"m" * 100) == b""  # a line over the limit: closed
        assert not own.exists()  # removed when the daemon stops
