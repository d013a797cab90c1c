"""Packaging: ``packaging/build.sh`` builds a wheel, an sdist, a zipapp and a .deb that all work.

The zipapp runs on Debian's own ``/usr/bin/python3``, not this virtualenv's, so that it proves it
carries every library (native ones included). The .deb is really installed with dpkg, asked real
lookups through ``/usr/bin/postfix-rest-api-connector`` and purged again. Building resolves the
bundled wheels through pip (its cache makes a rebuild quick), so it happens once per session.
Needs root and dpkg: without them the tests fail, they are never skipped.
"""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import FakeApi, endpoint_config
from postfix_rest_api_connector import __version__

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
UNIT_FILE = PACKAGING / "postfix-rest-api-connector.service"
PACKAGE = "postfix-rest-api-connector"
BINARY = Path("/usr/bin/postfix-rest-api-connector")
INSTALLED_UNIT = Path("/lib/systemd/system/postfix-rest-api-connector.service")
INSTALLED_CONFIG = Path("/etc/postfix-rest-api-connector/config.json")
SYSTEM_PYTHON = Path("/usr/bin/python3")
"""Debian's interpreter, the one the .deb depends on; never the virtualenv running the tests."""
BUILD_TIMEOUT = 900.0
ABI = f"cp{sys.version_info[0]}{sys.version_info[1]}"
COMPILED_TAG = f"{ABI}-{ABI}-{sysconfig.get_platform().replace('-', '_').replace('.', '_')}"
"""build.sh compiles the request path (setup.py), so the wheel is for this Python and machine."""
RUN_TIMEOUT = 60.0
"""Bounds one run of the zipapp; the first one unpacks and byte-compiles it (about a second)."""


@dataclass(frozen=True)
class Built:
    wheel: Path
    sdist: Path
    pyz: Path
    deb: Path


def _require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the packaging tests need Debian's dpkg")


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the packaging tests must run as root: they install the .deb with dpkg -i")


@pytest.fixture(scope="session")
def shiv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where every zipapp run unpacks itself, instead of the invoking user's ~/.shiv."""
    return tmp_path_factory.mktemp("shiv")


def zipapp_env(shiv_root: Path) -> dict[str, str]:
    drop = {"LOG_LEVEL", "LOG_FORMAT", "JOURNAL_STREAM", "NOTIFY_SOCKET", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "SHIV_ROOT": str(shiv_root)}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Runs packaging/build.sh once; its output is shown only if it fails."""
    _require_tools("dpkg-deb", "dpkg")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        ["bash", str(PACKAGING / "build.sh"), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"packaging/build.sh exited {result.returncode}\n"
            f"stdout (end):\n{result.stdout[-4000:]}\nstderr (end):\n{result.stderr[-4000:]}"
        )
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    artifacts = Built(
        wheel=out / f"postfix_rest_api_connector-{__version__}-{COMPILED_TAG}.whl",
        sdist=out / f"postfix_rest_api_connector-{__version__}.tar.gz",
        pyz=out / f"{PACKAGE}-{__version__}.pyz",
        deb=out / f"{PACKAGE}_{__version__}_{arch}.deb",
    )
    missing = [path.name for path in vars(artifacts).values() if not path.is_file()]
    assert not missing, f"build.sh did not produce {missing}; it made {os.listdir(out)}"
    return artifacts


def test_sdist_holds_the_sources(built: Built) -> None:
    """An sdist without a module would build a wheel that fails at import time."""
    prefix = f"postfix_rest_api_connector-{__version__}"
    with tarfile.open(built.sdist) as sdist:
        names = set(sdist.getnames())
    sources = sorted(
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "src" / "postfix_rest_api_connector").rglob("*.py")
    )
    assert sources
    for wanted in [
        *sources,
        "src/postfix_rest_api_connector/py.typed",
        "pyproject.toml",
        "setup.py",
    ]:
        assert f"{prefix}/{wanted}" in names, f"{wanted} missing from {built.sdist.name}"


def test_wheel_declares_the_console_script(built: Built) -> None:
    """pip creates /usr/bin-style launchers from this entry point; the name is the predecessors'."""
    with zipfile.ZipFile(built.wheel) as wheel:
        text = wheel.read(
            f"postfix_rest_api_connector-{__version__}.dist-info/entry_points.txt"
        ).decode()
        assert "postfix_rest_api_connector/cli.py" in wheel.namelist()
    entry_points = configparser.ConfigParser()
    entry_points.read_string(text)
    assert entry_points["console_scripts"][PACKAGE] == "postfix_rest_api_connector.cli:main"


def run_system_python(args: list[str], shiv_root: Path) -> subprocess.CompletedProcess[str]:
    if not SYSTEM_PYTHON.is_file():
        pytest.fail(f"{SYSTEM_PYTHON} not found: the zipapp is meant for Debian's python3")
    return subprocess.run(
        [str(SYSTEM_PYTHON), *args],
        env=zipapp_env(shiv_root),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_zipapp_runs_on_the_system_python(built: Built, shiv_root: Path) -> None:
    """Debian's python3 has none of our libraries: everything must come from the zipapp."""
    bare = run_system_python(["-c", "import pydantic_core"], shiv_root)
    assert bare.returncode != 0, "/usr/bin/python3 has pydantic_core: this proves nothing"

    version = run_system_python([str(built.pyz), "--version"], shiv_root)
    expected = f"{PACKAGE} {__version__} (request path compiled with mypyc)\n"
    assert (version.returncode, version.stdout) == (0, expected), version

    check = run_system_python(
        [str(built.pyz), "check-config", str(PACKAGING / "config.json")], shiv_root
    )
    assert check.returncode == 0, check.stderr
    assert "OK, 3 endpoint(s)" in check.stdout
    assert "change-me" not in check.stdout, "check-config printed the token"


def test_zipapp_shebang_is_the_debian_python(built: Built) -> None:
    """Started as /usr/bin/postfix-rest-api-connector it must not pick up a user's site-packages."""
    with built.pyz.open("rb") as pyz:
        assert pyz.readline() == b"#!/usr/bin/python3 -sE\n"


def test_deb_control(built: Built) -> None:
    """The bundled native wheels are for one Python minor version, so the dependency is bounded."""
    fields = subprocess.run(
        ["dpkg-deb", "--field", str(built.deb), "Package", "Version", "Depends"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    upper = f"{sys.version_info[0]}.{sys.version_info[1] + 1}"
    assert f"Package: {PACKAGE}\n" in fields
    assert f"Version: {__version__}\n" in fields
    assert f"Depends: python3 (>= {minor}), python3 (<< {upper})\n" in fields


@pytest.fixture(scope="module")
def installed(built: Built) -> Iterator[Built]:
    """``dpkg -i`` the build, and ``dpkg --purge`` it afterwards, leaving nothing behind."""
    _require_root()
    _require_tools("dpkg", "dpkg-query")
    status = subprocess.run(
        ["dpkg-query", "--show", "--showformat=${db:Status-Status}", PACKAGE],
        capture_output=True,
        text=True,
        check=False,
    )
    if status.stdout not in {"", "not-installed", "config-files"}:
        pytest.fail(
            f"{PACKAGE} is already installed ({status.stdout}); this test installs and purges its"
            f" own build, so remove it first: dpkg --purge {PACKAGE}"
        )
    install = subprocess.run(
        ["dpkg", "-i", str(built.deb)], capture_output=True, text=True, check=False
    )
    try:
        assert install.returncode == 0, f"dpkg -i failed:\n{install.stdout}\n{install.stderr}"
        yield built
    finally:
        purge = subprocess.run(
            ["dpkg", "--purge", PACKAGE], capture_output=True, text=True, check=False
        )
        assert purge.returncode == 0, f"dpkg --purge failed:\n{purge.stdout}\n{purge.stderr}"
        left = [
            path
            for path in (BINARY, INSTALLED_UNIT, INSTALLED_CONFIG.parent, *_enablement_links())
            if path.exists() or path.is_symlink()
        ]
        assert not left, f"left behind after dpkg --purge: {left}"


def _enablement_links() -> list[Path]:
    return [
        *Path("/etc/systemd/system").glob(f"*.wants/{PACKAGE}.service"),
        *Path("/var/lib/systemd").glob(f"deb-systemd-helper-*/**/{PACKAGE}.service*"),
    ]


def test_deb_installs_the_binary_unit_and_conffile(installed: Built) -> None:
    listed = subprocess.run(
        ["dpkg", "-L", PACKAGE], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for path in (BINARY, INSTALLED_UNIT, INSTALLED_CONFIG):
        assert str(path) in listed, f"{path} not in dpkg -L {PACKAGE}"
    conffiles = subprocess.run(
        ["dpkg-query", "--show", "--showformat=${Conffiles}", PACKAGE],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(INSTALLED_CONFIG) in conffiles, "the config must survive upgrades as a conffile"
    assert os.access(BINARY, os.X_OK)
    assert INSTALLED_UNIT.read_bytes() == UNIT_FILE.read_bytes()
    links = list(Path("/etc/systemd/system").glob(f"*.wants/{PACKAGE}.service"))
    assert not links, f"the sample config points at a placeholder API: not enabled, yet {links}"


def test_installed_binary_checks_the_installed_config(installed: Built, shiv_root: Path) -> None:
    result = subprocess.run(
        [str(BINARY), "check-config", str(INSTALLED_CONFIG)],
        env=zipapp_env(shiv_root),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{INSTALLED_CONFIG}: OK, 3 endpoint(s)")


def test_installed_unit_verifies(installed: Built) -> None:
    """systemd's own parser: a typo in a directive is only a warning at boot, silently ignored.

    ``systemd-analyze verify`` needs no running systemd, only the unit and its ExecStart binary.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found (package systemd): the unit was not verified")
    result = subprocess.run(
        [analyze, "verify", str(INSTALLED_UNIT)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), result


async def run_installed(
    args: list[str], shiv_root: Path, prefix: list[str] | None = None
) -> tuple[int, str, str]:
    """Run the installed binary without blocking the loop that serves the fake API."""
    process = await asyncio.create_subprocess_exec(
        *(prefix or []),
        str(BINARY),
        *args,
        env=zipapp_env(shiv_root),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@dataclass(frozen=True)
class QueryCase:
    mode: str
    extra_args: list[str]
    postfix_gets: bytes


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(QueryCase("tcp-lookup", [], b"200 a@example.com,b@example.com\n"), id="tcp"),
        pytest.param(
            QueryCase(
                "socketmap-lookup", ["--map", "aliases"], b"30:OK a@example.com,b@example.com,"
            ),
            id="socketmap",
        ),
    ],
)
async def test_installed_binary_queries_a_real_api(
    installed: Built, shiv_root: Path, tmp_path: Path, api: FakeApi, case: QueryCase
) -> None:
    """The whole path (uvloop, pyreqwest, pydantic) from the bundled wheels, like Postfix asks."""
    api.answer_json(["a@example.com", "b@example.com"])
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"endpoints": [endpoint_config(case.mode, f"{api.url}/lookup")]}))

    status, stdout, stderr = await run_installed(
        ["query", str(config), f"test-{case.mode}", "user@example.com", *case.extra_args],
        shiv_root,
    )

    assert (status, stdout) == (0, "a@example.com,b@example.com\n"), stderr
    assert f"postfix gets: {case.postfix_gets!r}" in stderr
    [seen] = api.seen
    assert seen.query["key"] == "user@example.com"
    assert seen.headers["X-Auth-Token"] == "s3cret-token"


MDWE_WRAPPER = """
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_MDWE): {os.strerror(ctypes.get_errno())}")
os.execv(sys.argv[1], sys.argv[1:])
"""
"""Applies, and keeps across execve, what the unit's MemoryDenyWriteExecute=yes enforces."""


async def test_installed_binary_needs_no_writable_executable_memory(
    installed: Built, shiv_root: Path, tmp_path: Path, api: FakeApi
) -> None:
    """The unit sets MemoryDenyWriteExecute=yes: a JIT or a libffi closure would kill the service.

    Linux's PR_SET_MDWE (6.3+) refuses the same mappings, so a real lookup proves it here.
    """
    api.answer_json(["ok"])
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"endpoints": [endpoint_config("tcp-lookup", api.url)]}))

    status, stdout, stderr = await run_installed(
        ["query", str(config), "test-tcp-lookup", "key"],
        shiv_root,
        prefix=[str(SYSTEM_PYTHON), "-c", MDWE_WRAPPER],
    )

    if status != 0 and "prctl(PR_SET_MDWE)" in stderr:
        pytest.skip(f"this kernel cannot enforce MemoryDenyWriteExecute by prctl: {stderr}")
    assert (status, stdout) == (0, "ok\n"), stderr


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> every value, in order (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if header := re.fullmatch(r"\[(.+)\]", line):
            current = sections.setdefault(header[1], {})
            continue
        key, equals, value = line.partition("=")
        assert equals, f"not a directive: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_is_hardened() -> None:
    """These directives are the unit's contract; dropping one must be a decision, not an edit."""
    service = unit_directives(UNIT_FILE.read_text())["Service"]
    expected = {
        "Type": ["notify"],
        "ExecStart": [f"{BINARY} {INSTALLED_CONFIG}"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "Restart": ["on-failure"],
        "KillMode": ["mixed"],
        "RestartPreventExitStatus": ["78"],
        "DynamicUser": ["yes"],
        "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": [""],
        "AmbientCapabilities": [""],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "PrivateDevices": ["yes"],
        "ProtectKernelTunables": ["yes"],
        "ProtectKernelModules": ["yes"],
        "ProtectControlGroups": ["yes"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "RestrictNamespaces": ["yes"],
        "RestrictSUIDSGID": ["yes"],
        "LockPersonality": ["yes"],
        "MemoryDenyWriteExecute": ["yes"],
        "SystemCallArchitectures": ["native"],
        "RuntimeDirectory": [PACKAGE],
        "RuntimeDirectoryMode": ["0755"],
        "CacheDirectory": [PACKAGE],
        "Environment": [f"SHIV_ROOT=/var/cache/{PACKAGE}"],
    }
    for key, values in expected.items():
        assert service.get(key) == values, f"{key}={service.get(key)}, expected {values}"
    assert service["SystemCallFilter"][0] == "@system-service"
    assert "User" not in service, "DynamicUser=yes with a User= would reuse a static user"


def test_unit_hardening_score() -> None:
    """systemd's own rating of the sandbox; 'OK' and below 2.0 (out of 10, lower is better)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found (package systemd): exposure not rated")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT_FILE)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) < 2.0, result.stdout
