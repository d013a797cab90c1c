"""The embedded demo: a small sample REST API on loopback and one endpoint of each mode.

The endpoints run through exactly the production code (config validation, Daemon, pyreqwest);
only the API behind them is built in.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

BASE_PORT = 10001
"""tcp-lookup listens here, socketmap-lookup on the next port, policy on the one after."""

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


def build_api() -> web.Application:
    app = web.Application()
    app.router.add_get("/lookup", _tcp_lookup)
    app.router.add_get("/socketmap", _socketmap_lookup)
    app.router.add_post("/policy", _policy)
    return app


async def start_api() -> tuple[web.AppRunner, str]:
    """Serve the sample API on a free loopback port; returns the runner and its base URL."""
    runner = web.AppRunner(build_api(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def _ports(base_port: int) -> tuple[int, int, int]:
    """Three consecutive ports; a base of 0 lets the system pick each one."""
    if base_port == 0:
        return 0, 0, 0
    return base_port, base_port + 1, base_port + 2


def demo_config(api_url: str, base_port: int = BASE_PORT) -> dict[str, Any]:
    """A config document like an administrator's, pointing at the sample API."""
    tcp_port, socketmap_port, policy_port = _ports(base_port)

    def endpoint(name: str, mode: str, path: str, port: int) -> dict[str, Any]:
        return {
            "name": name,
            "mode": mode,
            "target": f"{api_url}{path}",
            "bind-address": "127.0.0.1",
            "bind-port": port,
            "auth-token": "demo-token",
        }

    return {
        "endpoints": [
            endpoint("demo-tcp", "tcp-lookup", "/lookup", tcp_port),
            endpoint("demo-socketmap", "socketmap-lookup", "/socketmap", socketmap_port),
            endpoint("demo-policy", "policy", "/policy", policy_port),
        ]
    }


def try_it(api_url: str, ports: tuple[int, int, int]) -> str:
    tcp, socketmap, policy = ports
    return f"""
Demo running. The sample API is at {api_url}; the connector listens on:
  tcp-lookup        127.0.0.1:{tcp}
  socketmap-lookup  127.0.0.1:{socketmap}
  policy            127.0.0.1:{policy}
Try (Debian's postfix package provides postmap; netcat-openbsd provides nc):
  postmap -q example.com tcp:127.0.0.1:{tcp}
  postmap -q alice@example.com tcp:127.0.0.1:{tcp}
  postmap -q postmaster@example.com socketmap:inet:127.0.0.1:{socketmap}:aliases
  printf 'get example.org\\n' | nc -q1 127.0.0.1 {tcp}
  printf '19:domains example.com,' | nc -q1 127.0.0.1 {socketmap}
  printf 'request=smtpd_access_policy\\nrecipient=blocked@example.com\\n\\n' \\
    | nc -q1 127.0.0.1 {policy}
Stop with Ctrl-C.
"""
