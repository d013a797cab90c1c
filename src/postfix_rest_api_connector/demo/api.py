"""The demo's sample REST API (aiohttp.web), imported only by ``--demo``: aiohttp costs about
12 MiB of memory that a production worker without a metrics listener need not pay."""

from __future__ import annotations

from aiohttp import web

from . import DEMO_PASSWORD, DEMO_USER

LOOKUPS: dict[str, dict[str, list[str]]] = {
    "domains": {"example.com": ["example.com"], "example.org": ["example.org"]},
    "mailboxes": {
        "alice@example.com": ["example.com/alice/"],
        "bob@example.com": ["example.com/bob/"],
    },
    "aliases": {
        "postmaster@example.com": ["alice@example.com", "bob@example.com"],
        "info@example.org": ["bob@example.com"],
    },
}
"""Map name to key to values; the tcp endpoint answers from all maps together."""

USERS = {DEMO_USER: DEMO_PASSWORD}
"""The sasl endpoint's users: name to password (a real API keeps only hashes)."""
REJECTED_RECIPIENTS = {"blocked@example.com": "REJECT This mailbox does not accept mail"}
DEFERRED_CLIENTS = {"192.0.2.1": "DEFER_IF_PERMIT Try again later"}


def _lookup(maps: list[str], key: str) -> web.Response:
    for name in maps:
        values = LOOKUPS.get(name, {}).get(key.lower())
        if values is not None:
            return web.json_response(values)
    return web.json_response([], status=404)


async def _tcp_lookup(request: web.Request) -> web.Response:
    return _lookup(list(LOOKUPS), request.query.get("key", ""))


async def _socketmap_lookup(request: web.Request) -> web.Response:
    return _lookup([request.query.get("name", "")], request.query.get("key", ""))


async def _policy(request: web.Request) -> web.Response:
    form = await request.post()
    recipient = str(form.get("recipient", "")).lower()
    client = str(form.get("client_address", ""))
    action = REJECTED_RECIPIENTS.get(recipient) or DEFERRED_CLIENTS.get(client) or "DUNNO"
    return web.Response(text=f"action={action}\n")


async def _auth(request: web.Request) -> web.Response:
    """The sasl contract: 200 with the canonical user name, 401 for anything else."""
    form = await request.post()
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    if USERS.get(username.lower()) != password:
        return web.Response(status=401)
    return web.json_response({"user": username.lower().partition("@")[0]})


def build_api() -> web.Application:
    app = web.Application()
    app.router.add_get("/lookup", _tcp_lookup)
    app.router.add_get("/socketmap", _socketmap_lookup)
    app.router.add_post("/policy", _policy)
    app.router.add_post("/auth", _auth)
    return app


async def start_api() -> tuple[web.AppRunner, str]:
    """Serve the sample API on a free loopback port; returns the runner and its base URL."""
    runner = web.AppRunner(build_api(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"
