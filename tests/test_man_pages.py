"""The man pages in ``packaging/man``: they render cleanly and document what the code accepts.

``postfix-rest-api-connector.json(5)`` is held to the config model itself: every key of every
model reachable from ``Config`` must be an entry of the page, in the section of its key path,
with the model's default, so a key added to the model without a line in the page fails here.
``postfix-rest-api-connector(8)`` must name every command and every option ``--help`` shows.
Needs groff (Debian's groff-base; ``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from postfix_rest_api_connector import __version__, cli
from postfix_rest_api_connector.config import Config, EndpointConfig, MetricsConfig

MAN = Path(__file__).resolve().parent.parent / "packaging" / "man"
DAEMON_PAGE = MAN / "postfix-rest-api-connector.8"
CONFIG_PAGE = MAN / "postfix-rest-api-connector.json.5"
TIMEOUT = 30.0


@pytest.mark.parametrize("page", [DAEMON_PAGE, CONFIG_PAGE], ids=["8", "5"])
def test_page_renders_without_a_warning(page: Path) -> None:
    """``-ww`` turns on every warning (bad macro, unknown escape, font, break); ``-z`` discards
    the output: what man(1) would show is not looked at here, only that groff found nothing."""
    groff = shutil.which("groff")
    if groff is None:
        pytest.fail("groff not found: install Debian's groff-base (scripts/test.sh does)")
    result = subprocess.run(
        [groff, "-ww", "-z", "-man", str(page)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


_ESCAPES = [
    (re.compile(r"\\f(?:\[[^]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\[&c]"), ""),  # zero-width, continuation
    (re.compile(r"\\-"), "-"),
    (re.compile(r"\\\(dq"), '"'),
    (re.compile(r"\\\(aq"), "'"),
    (re.compile(r"\\\(lq|\\\(rq"), '"'),
    (re.compile(r"\\\(\+-"), "+-"),
    (re.compile(r"\\e"), r"\\"),
]
_ALTERNATING = re.compile(r"\.(?:BI|BR|IB|IR|RB|RI)")


def plain(roff: str) -> str:
    """One roff source line as the words a reader sees (font macros and escapes dropped)."""
    if roff.startswith("."):
        macro, _, rest = roff.partition(" ")
        words = re.findall(r'"[^"]*"|\S+', rest)
        words = [word.strip('"') for word in words]
        roff = ("" if _ALTERNATING.fullmatch(macro) else " ").join(words)
    for pattern, replacement in _ESCAPES:
        roff = pattern.sub(replacement, roff)
    return roff


def sections(page: Path) -> dict[str, list[str]]:
    """``.SH`` title -> the section's source lines."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith(".SH "):
            current = found.setdefault(plain(line[4:].strip().strip('"')), [])
        elif not line.startswith('.\\"'):
            current.append(line)
    return found


def entries(lines: list[str]) -> dict[str, str]:
    """The ``.TP`` entries of a section: the tag's text -> the entry's text, in plain words."""
    found: dict[str, str] = {}
    tag: str | None = None
    source = iter(lines)
    for line in source:
        if line == ".TP":
            tag = plain(next(source, ""))
            found[tag] = ""
        elif line.startswith((".SS", ".PP")):
            tag = None
        elif tag is not None:
            found[tag] = f"{found[tag]} {plain(line)}".strip()
    return found


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The models an annotation holds: ``X``, ``X | None``, ``tuple[X, ...]``, nested."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def section_title(path: str) -> str:
    """The page's section for the model at a key path: ``TOP LEVEL``, ``ENDPOINTS``, ..."""
    return path.upper() if path else "TOP LEVEL"


def model_keys() -> dict[str, dict[str, FieldInfo]]:
    """Section title -> every key (alias) the model at that path accepts -> its field."""
    found: dict[str, dict[str, FieldInfo]] = {}
    seen: list[type[BaseModel]] = []

    def walk(model: type[BaseModel], path: str) -> None:
        seen.append(model)
        keys = found.setdefault(section_title(path), {})
        for name, field in model.model_fields.items():
            key = field.alias or name
            keys[key] = field
            for nested in _models_in(field.annotation):
                walk(nested, f"{path}.{key}" if path else key)

    walk(Config, "")
    assert {EndpointConfig, MetricsConfig} <= set(seen), f"the walk missed a model: {seen}"
    return found


def expected_default(field: FieldInfo) -> str | None:
    """What the entry must say after ``Default:``; None when any explanation will do."""
    default = field.get_default(call_default_factory=True)
    if default is None:
        return None
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, str):
        return default.replace(__version__, "VERSION")
    if isinstance(default, int):
        return str(default)
    return json.dumps(default)


def test_every_config_key_is_in_the_json_5_page_with_its_default() -> None:
    """A key the model accepts but the page lacks (or the reverse) fails, naming the section."""
    page = sections(CONFIG_PAGE)
    problems: list[str] = []
    for title, keys in model_keys().items():
        documented = entries(page.get(title, []))
        if title not in page:
            problems.append(f"no section .SH {title!r} for the keys {sorted(keys)}")
            continue
        problems.extend(
            f"{title}: {key!r} is not documented (add .TP / .B {key} to .SH {title})"
            for key in sorted(keys.keys() - documented.keys())
        )
        problems.extend(
            f"{title}: {key!r} is documented but the model does not accept it"
            for key in sorted(documented.keys() - keys.keys())
        )
        for key, field in keys.items():
            text = documented.get(key)
            if text is None:
                continue
            if field.is_required():
                if "Required" not in text:
                    problems.append(f"{title}: {key!r} is required, its entry must say so")
                continue
            want = expected_default(field)
            said = re.search(rf"Default: {re.escape(want)}(?![\w-])" if want else "Default:", text)
            if said is None:
                problems.append(
                    f"{title}: {key!r} entry lacks 'Default: {want or '...'}': {text!r}"
                )
    assert not problems, "\n".join(problems)


def test_the_key_check_sees_what_it_checks() -> None:
    """The parser finds what the page really holds, so the check above can fail: a sample."""
    endpoint = entries(sections(CONFIG_PAGE)["ENDPOINTS"])
    assert endpoint["request-timeout"].endswith("Default: 2000.")
    assert "Default: DEFER_IF_PERMIT Service temporarily unavailable." in endpoint["failure-action"]
    assert entries(sections(CONFIG_PAGE)["METRICS"])["bind-port"].endswith("Required.")
    keys = model_keys()
    assert len(keys["ENDPOINTS"]) > 25
    assert {
        "TOP LEVEL",
        "ENDPOINTS",
        "METRICS",
        "SHARED-CACHE",
        "ENDPOINTS.HEADERS",
        "ENDPOINTS.BASIC-AUTH",
        "ENDPOINTS.OAUTH2",
        "ENDPOINTS.MAPS",
    } <= set(keys)


def usage_options(*command: str) -> set[str]:
    """The options in the usage lines of ``--help`` (``[-h] [--demo] [--map MAP]`` ...)."""
    result = subprocess.run(
        [sys.executable, "-m", "postfix_rest_api_connector", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    usage = result.stdout.partition("\n\n")[0]
    return set(re.findall(r"\[(--?[a-z][a-z-]*)", usage))


def test_the_8_page_has_every_section_command_and_option() -> None:
    page = sections(DAEMON_PAGE)
    for title in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "COMMANDS",
        "OPTIONS",
        "SIGNALS",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "SEE ALSO",
    ):
        assert title in page, f"no .SH {title} in {DAEMON_PAGE.name}"
    commands = " ".join(entries(page["COMMANDS"]))
    for command in sorted(cli.COMMANDS):
        assert command in commands.split(), f"command {command!r} not under COMMANDS"
    options = {word for tag in entries(page["OPTIONS"]) for word in re.split(r"[ ,]+", tag)}
    shown = usage_options().union(*(usage_options(command) for command in cli.COMMANDS))
    assert {"--demo", "--map", "--version"} <= shown, shown
    missing = sorted(shown - options)
    assert not missing, f"options in --help but not under OPTIONS: {missing}"
    signals = entries(page["SIGNALS"])
    assert {"SIGTERM, SIGINT", "SIGHUP"} <= signals.keys()
    statuses = entries(page["EXIT STATUS"])
    assert {"0", "1", "2", "75", "78"} <= statuses.keys()


def test_plain_drops_roff_markup() -> None:
    assert plain(r".BR \-\-log\-format " + '" "' + " text | json") == "--log-format text|json"
    assert plain(r"Default: \fB,\fP (a comma).") == "Default: , (a comma)."
    assert plain(r".B request\-timeout") == "request-timeout"
