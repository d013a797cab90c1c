"""Command line: ``postfix-rest-api-connector CONFIG`` as the predecessors, or ``--demo``,
or one of the administrator's commands ``check-config CONFIG``, ``query CONFIG ENDPOINT KEY`` and
``purge CONFIG ENDPOINT KEY``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from functools import partial
from pathlib import Path

import uvloop

from . import __version__, commands, demo
from .config import Config, ConfigError, load_config, parse_config
from .log import configure
from .runtime.daemon import Daemon, StartupError, Worker
from .runtime.listeners import SystemdSockets, take_systemd_sockets
from .supervisors.workers import Supervisor

EX_CONFIG = 78
"""sysexits.h: configuration error; systemd and Postfix administrators know it."""
EX_STARTUP = 1

log = logging.getLogger(__name__)


def _add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("LOG_FORMAT", "text"),
        help="text lines or one JSON object per line (default: $LOG_FORMAT or text)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postfix-rest-api-connector",
        description="Answer Postfix tcp_table, socketmap, policy and SMTP AUTH (Dovecot SASL)"
        " requests from a REST API.",
    )
    parser.add_argument("config", nargs="?", help="path to the JSON config file")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="run a built-in sample REST API with one endpoint of each mode (no config needed)",
    )
    parser.add_argument(
        "--demo-base-port",
        type=int,
        default=demo.BASE_PORT,
        metavar="PORT",
        help=f"demo: tcp on PORT, socketmap on PORT+1, policy on PORT+2, sasl on PORT+3"
        f" (default {demo.BASE_PORT}; 0 picks free ports)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "INFO"),
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="log level (default: $LOG_LEVEL or INFO)",
    )
    _add_log_format(parser)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__} ({build()})"
    )
    return parser


def build() -> str:
    """Whether this install runs the request path compiled (setup.py), so that an admin can
    tell from ``--version`` or the log which one a machine got."""
    from .connection import handler  # noqa: PLC0415 - imported by every run anyway

    compiled = not handler.__file__.endswith(".py")
    return "request path compiled with mypyc" if compiled else "interpreted"


def _serve(config: Config, path: str) -> int:
    """One process, or a supervisor of ``workers`` processes (forked before any event loop).

    The sockets systemd passed are taken first, here in the process it started, so that every
    worker inherits the same ones; they are closed only when this process exits.
    """
    systemd = take_systemd_sockets()
    try:
        systemd.check(config)
        systemd.close_unclaimed({endpoint.name for endpoint in config.endpoints})
        workers = config.effective_workers
        if workers == 1:
            return _run_daemon(config, None, path, systemd)
        main = partial(_run_daemon, path=path, systemd=systemd)
        return Supervisor(config, path, workers, main).run()
    finally:
        systemd.close()


def _run_daemon(config: Config, worker: Worker | None, path: str, systemd: SystemdSockets) -> int:
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(Daemon(config, path, worker, systemd).run())
    except StartupError as error:
        log.error("%s", error)  # noqa: TRY400 - the message is the whole story
        return EX_STARTUP
    return 0


async def _serve_demo(base_port: int) -> None:
    from .demo import api  # noqa: PLC0415 - aiohttp only where the demo needs it

    runner, api_url = await api.start_api()

    def announce(daemon: Daemon) -> None:
        tcp, socketmap, policy, sasl = (endpoint.addresses[0][1] for endpoint in daemon.endpoints)
        print(demo.try_it(api_url, (tcp, socketmap, policy, sasl)), flush=True)

    try:
        await Daemon(parse_config(demo.demo_config(api_url, base_port))).run(announce)
    finally:
        await runner.cleanup()


def _command_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        type=str.upper,
        default=os.environ.get("LOG_LEVEL", "WARNING"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    )
    _add_log_format(common)
    parser = argparse.ArgumentParser(prog="postfix-rest-api-connector")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check-config", parents=[common], help="validate CONFIG and print what it sets up"
    )
    check.add_argument("config")
    query = sub.add_parser(
        "query",
        parents=[common],
        help="one real request through an endpoint, printed like postmap -q",
    )
    query.add_argument("config")
    query.add_argument("endpoint", help="the endpoint's name")
    query.add_argument(
        "key",
        nargs="+",
        help="the lookup key, NAME=VALUE attributes for a policy endpoint, or a sasl user name",
    )
    query.add_argument("--map", help="socketmap: the map name Postfix would send")
    query.add_argument(
        "--password-file",
        metavar="FILE",
        help="sasl: the password, the file's first line ('-' reads it from stdin)",
    )
    purge = sub.add_parser(
        "purge",
        parents=[common],
        help="drop one key from the shared cache and from every instance's in-process cache",
    )
    purge.add_argument("config")
    purge.add_argument("endpoint", help="the endpoint's name")
    purge.add_argument("key", help="the lookup key, as Postfix sends it")
    purge.add_argument("--map", help="socketmap: the map name")
    return parser


def _read_password(path: str | None) -> str | None:
    """The first line, without its line end; never echoed or logged."""
    if path is None:
        return None
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return text.splitlines()[0] if text else ""


def _run_command(argv: list[str]) -> int:
    args = _command_parser().parse_args(argv)
    configure(args.log_level, args.log_format)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        for problem in error.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EX_CONFIG
    if args.command == "check-config":
        return commands.check_config(config, args.config)
    if args.command == "purge":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(commands.purge(config, args.endpoint, args.key, args.map))
    try:
        password = _read_password(args.password_file)
    except (OSError, UnicodeDecodeError) as error:
        print(f"--password-file: cannot read: {type(error).__name__}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(commands.query(config, args.endpoint, args.key, args.map, password))


COMMANDS = frozenset({"check-config", "query", "purge"})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return _run_command(argv)
    args = _parser().parse_args(argv)
    configure(args.log_level, args.log_format)
    if args.demo == (args.config is not None):
        _parser().error("give either a CONFIG path or --demo")
    try:
        config = None if args.demo else load_config(args.config)
        log.info("postfix-rest-api-connector %s (%s)", __version__, build())
        if config is not None:
            return _serve(config, args.config)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve_demo(args.demo_base_port))
    except ConfigError as error:
        for problem in error.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EX_CONFIG
    except StartupError as error:
        log.error("%s", error)  # noqa: TRY400 - the message is the whole story
        return EX_STARTUP
    return 0
