"""A real ``redis-server`` for the tests, on a free loopback port and a unix socket in the test's
own directory, with the faults the shared tier must ride out: killed, paused, restarted, full.

Debian's redis-server is installed by the test command (``scripts/lib.sh``); a test that needs
it fails with that said if it is missing, never skips.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

DEADLINE = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    directory: Path
    port: int = 0
    process: asyncio.subprocess.Process | None = None

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}"

    async def start(self, *options: str) -> None:
        """Start (again, on the same port and socket); returns once it answers PING."""
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is missing: scripts/test.sh installs Debian's redis-server")
        self.port = self.port or free_port()
        self.process = await asyncio.create_subprocess_exec(
            server,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--unixsocket", str(self.socket_path), "--unixsocketperm", "700"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            *("--enable-debug-command", "local"),
            *options,
            stdout=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(DEADLINE):
            # redis-server says nothing when it is ready: asking it is the only way to know
            while (await self.cli("PING")) != "PONG":  # noqa: ASYNC110
                await asyncio.sleep(0.02)

    async def cli(self, *arguments: str) -> str:
        """One ``redis-cli`` command; its output, or ``""`` when it could not connect."""
        process = await asyncio.create_subprocess_exec(
            "redis-cli",
            *("-s", str(self.socket_path)),
            *arguments,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(process.communicate(), DEADLINE)
        return out.decode().strip() if process.returncode == 0 else ""

    async def kill(self) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), DEADLINE)
        self.socket_path.unlink(missing_ok=True)

    async def restart(self) -> None:
        await self.kill()
        await self.start()

    async def restart_with(self, *options: str) -> None:
        """Restart with other options (later ones win over the defaults: ``--port 0``)."""
        await self.kill()
        await self.start(*options)


@asynccontextmanager
async def redis_server() -> AsyncIterator[RedisServer]:
    """In a short directory of its own: a unix socket's path must fit in 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="redis-") as directory:
        server = RedisServer(Path(directory))
        await server.start()
        try:
            yield server
        finally:
            if server.process is not None:
                await server.kill()
