"""The embedded demo: one endpoint of each mode in front of a small sample REST API on loopback.

The endpoints run through exactly the production code (config validation, Daemon, pyreqwest);
only the API behind them (``demo.api``) is built in.
"""

from __future__ import annotations

import base64
from typing import Any

BASE_PORT = 10001
"""tcp-lookup listens here, socketmap-lookup on the next port, policy and sasl on the two after."""
DEMO_USER = "alice@example.com"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - the sample API's sample user
"""The sasl endpoint's one user; the sample API names the login ``alice`` (its canonical
name, as Postfix then logs it)."""

Ports = tuple[int, int, int, int]


def _ports(base_port: int) -> Ports:
    """Four consecutive ports; a base of 0 lets the system pick each one."""
    if base_port == 0:
        return 0, 0, 0, 0
    return base_port, base_port + 1, base_port + 2, base_port + 3


def demo_config(api_url: str, base_port: int = BASE_PORT) -> dict[str, Any]:
    """A config document like an administrator's, pointing at the sample API."""
    tcp_port, socketmap_port, policy_port, sasl_port = _ports(base_port)

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
            endpoint("demo-sasl", "sasl", "/auth", sasl_port),
        ]
    }


def try_it(api_url: str, ports: Ports) -> str:
    tcp, socketmap, policy, sasl = ports
    login = base64.b64encode(f"\0{DEMO_USER}\0{DEMO_PASSWORD}".encode()).decode()
    return f"""
Demo running. The sample API is at {api_url}; the connector listens on:
  tcp-lookup        127.0.0.1:{tcp}
  socketmap-lookup  127.0.0.1:{socketmap}
  policy            127.0.0.1:{policy}
  sasl              127.0.0.1:{sasl}
Try (Debian's postfix package provides postmap; netcat-openbsd provides nc):
  postmap -q example.com tcp:127.0.0.1:{tcp}
  postmap -q alice@example.com tcp:127.0.0.1:{tcp}
  postmap -q postmaster@example.com socketmap:inet:127.0.0.1:{socketmap}:aliases
  printf 'get example.org\\n' | nc -q1 127.0.0.1 {tcp}
  printf '19:domains example.com,' | nc -q1 127.0.0.1 {socketmap}
  printf 'request=smtpd_access_policy\\nrecipient=blocked@example.com\\n\\n' \\
    | nc -q1 127.0.0.1 {policy}
  printf 'VERSION\\t1\\t0\\nCPID\\t1\\nAUTH\\t1\\tPLAIN\\tservice=smtp\\tsecured\\tresp=%s\\n' \\
    {login} | nc -q1 127.0.0.1 {sasl}
SMTP AUTH for a Postfix with TLS ({DEMO_USER}, password {DEMO_PASSWORD}), in main.cf:
  smtpd_sasl_auth_enable = yes
  smtpd_sasl_type = dovecot
  smtpd_sasl_path = inet:127.0.0.1:{sasl}
Stop with Ctrl-C.
"""
