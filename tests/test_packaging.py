"""Packaging: ``packaging/build.sh`` builds a wheel, an sdist, a zipapp, a .deb and an .rpm that
all work.

The zipapp runs on Debian's own ``/usr/bin/python3``, not this virtualenv's, so that it proves it
carries every library (native ones included). The .deb is really installed with dpkg, asked real
lookups through ``/usr/bin/postfix-rest-api-connector`` and purged again. The .rpm (for EL9) is
installed with Debian's rpm into a scratch root, its binary run from there on the system python3,
and erased; its scriptlets run in that root against a systemctl that records what it is asked.
No bundled extension module may need a glibc newer than EL9's. Building resolves the bundled
wheels through pip (its cache makes a rebuild quick), so it happens once per session. Needs
root, dpkg, rpm and binutils: without them the tests fail, they are never skipped.
"""

from __future__ import annotations

import asyncio
import configparser
import gzip
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
UNIT = f"{PACKAGE}.service"
BINARY = Path("/usr/bin/postfix-rest-api-connector")
INSTALLED_UNIT = Path("/lib/systemd/system/postfix-rest-api-connector.service")
RPM_UNIT = Path("/usr/lib/systemd/system/postfix-rest-api-connector.service")
"""Where EL9 keeps units (on Debian bookworm /lib is /usr/lib, so both paths work there)."""
SOCKETS = sorted((PACKAGING / "sockets").glob("*.socket"))
"""The socket units, one per endpoint of the sample config that has one; both packages install
them beside the service, enabled by nobody but the administrator."""
INSTALLED_SOCKETS = {INSTALLED_UNIT.with_name(unit.name): unit for unit in SOCKETS}
RPM_SOCKETS = {RPM_UNIT.with_name(unit.name): unit for unit in SOCKETS}
INSTALLED_CONFIG = Path("/etc/postfix-rest-api-connector/config.json")
SAMPLE_CONFIG = PACKAGING / "config.json"
MAN_PAGES = {
    Path("/usr/share/man/man8/postfix-rest-api-connector.8.gz"): PACKAGING
    / "man/postfix-rest-api-connector.8",
    Path("/usr/share/man/man5/postfix-rest-api-connector.json.5.gz"): PACKAGING
    / "man/postfix-rest-api-connector.json.5",
}
DASHBOARD = PACKAGING / "grafana/postfix-rest-api-connector.json"
ALERTS = PACKAGING / "prometheus/alerts.yml"
SYSTEM_PYTHON = Path("/usr/bin/python3")
"""Debian's interpreter; never the virtualenv running the tests."""
PY_MINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"
INTERPRETER = Path(f"/usr/bin/python{PY_MINOR}")
"""The zipapp's interpreter line: Debian's python3.X and EL9's python3.11 packages install it."""
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
    rpm: Path


def _require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the packaging tests need Debian's dpkg, rpm and"
            " binutils (scripts/test.sh installs them)"
        )


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
    _require_tools("dpkg-deb", "dpkg", "rpmbuild")
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
        rpm=out / f"{PACKAGE}-{__version__}-1.el9.{os.uname().machine}.rpm",
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


def test_zipapp_shebang_is_python3_x(built: Built) -> None:
    """Started as /usr/bin/postfix-rest-api-connector it must find the Python its wheels are for
    (EL9's /usr/bin/python3 is 3.9, python3.11 is a package of its own) and must not pick up a
    user's site-packages."""
    with built.pyz.open("rb") as pyz:
        assert pyz.readline() == f"#!{INTERPRETER} -sE\n".encode()
    assert INTERPRETER.is_file(), f"{INTERPRETER} missing: Debian's python3 depends on it"


def test_deb_control(built: Built) -> None:
    """The bundled native wheels are for one Python minor version: the one the shebang names."""
    fields = subprocess.run(
        ["dpkg-deb", "--field", str(built.deb), "Package", "Version", "Depends"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"Package: {PACKAGE}\n" in fields
    assert f"Version: {__version__}\n" in fields
    assert f"Depends: python{PY_MINOR}\n" in fields


DOC = Path("/usr/share/doc/postfix-rest-api-connector")
DEB_FILES = {
    BINARY,
    INSTALLED_UNIT,
    *INSTALLED_SOCKETS,
    INSTALLED_CONFIG,
    *MAN_PAGES,
    DOC / "README.md",
    DOC / "README.Debian",
    DOC / "copyright",
    DOC / "examples/grafana-dashboard.json",
    DOC / "examples/prometheus-alerts.yml",
}


def test_deb_holds_the_man_pages_dashboard_and_alerts(built: Built, tmp_path: Path) -> None:
    """Read from the package itself: a Docker image's dpkg may be told to drop /usr/share/man."""
    listing = subprocess.run(
        ["dpkg-deb", "--contents", str(built.deb)], capture_output=True, text=True, check=True
    ).stdout
    files = {
        Path(line.split()[-1].removeprefix("."))
        for line in listing.splitlines()
        if not line.startswith("d")
    }
    assert files == DEB_FILES
    subprocess.run(["dpkg-deb", "--extract", str(built.deb), str(tmp_path)], check=True)
    for page, source in MAN_PAGES.items():
        assert gzip.decompress(_under(tmp_path, page).read_bytes()) == source.read_bytes()
    examples = _under(tmp_path, DOC / "examples")
    assert (examples / "grafana-dashboard.json").read_bytes() == DASHBOARD.read_bytes()
    assert (examples / "prometheus-alerts.yml").read_bytes() == ALERTS.read_bytes()


def _under(root: Path, path: Path) -> Path:
    """``path`` (absolute) inside the tree at ``root``."""
    return root / path.relative_to("/")


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
            for path in (*DEB_FILES, INSTALLED_CONFIG.parent, DOC, *_enablement_links())
            if path.exists() or path.is_symlink()
        ]
        assert not left, f"left behind after dpkg --purge: {left}"


def _enablement_links() -> list[Path]:
    return [
        *Path("/etc/systemd/system").glob(f"*.wants/{PACKAGE}*"),
        *Path("/var/lib/systemd").glob(f"deb-systemd-helper-*/**/{PACKAGE}*"),
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
    for installed_socket, source in INSTALLED_SOCKETS.items():
        assert installed_socket.read_bytes() == source.read_bytes()
    links = list(Path("/etc/systemd/system").glob(f"*.wants/{PACKAGE}*"))
    assert not links, f"the sample config points at a placeholder API: not enabled, yet {links}"


@dataclass(frozen=True)
class Installation:
    """One installed package: how to run its binary, and its config file."""

    command: list[str]
    config: Path


@pytest.fixture(params=["deb", "rpm"])
def installation(request: pytest.FixtureRequest) -> Installation:
    """The .deb, installed on this machine; or the .rpm in its scratch root, whose binary the
    system python3 runs (Debian's rpm installs files; the interpreter line is for EL9's)."""
    if request.param == "deb":
        request.getfixturevalue("installed")
        return Installation([str(BINARY)], INSTALLED_CONFIG)
    root: Path = request.getfixturevalue("rpm_installed")
    return Installation(
        [str(SYSTEM_PYTHON), str(_under(root, BINARY))], _under(root, INSTALLED_CONFIG)
    )


def test_installed_binary_checks_the_installed_config(
    installation: Installation, shiv_root: Path
) -> None:
    result = subprocess.run(
        [*installation.command, "check-config", str(installation.config)],
        env=zipapp_env(shiv_root),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{installation.config}: OK, 3 endpoint(s)")


def test_installed_unit_verifies(installed: Built) -> None:
    """systemd's own parser: a typo in a directive is only a warning at boot, silently ignored.

    ``systemd-analyze verify`` needs no running systemd, only the unit and its ExecStart binary.
    ``--man=no``: it would run man(1) for the ``Documentation=man:`` pages, which a minimal image
    may lack (or drop from /usr/share/man); the package's man pages are checked from the .deb.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found (package systemd): the unit was not verified")
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(INSTALLED_UNIT), *map(str, INSTALLED_SOCKETS)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), result


async def run_installed(command: list[str], shiv_root: Path) -> tuple[int, str, str]:
    """Run an installed binary without blocking the loop that serves the fake API."""
    process = await asyncio.create_subprocess_exec(
        *command,
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
    installation: Installation, shiv_root: Path, tmp_path: Path, api: FakeApi, case: QueryCase
) -> None:
    """The whole path (uvloop, pyreqwest, pydantic) from the bundled wheels, like Postfix asks."""
    api.answer_json(["a@example.com", "b@example.com"])
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"endpoints": [endpoint_config(case.mode, f"{api.url}/lookup")]}))

    status, stdout, stderr = await run_installed(
        [
            *installation.command,
            "query",
            str(config),
            f"test-{case.mode}",
            "user@example.com",
            *case.extra_args,
        ],
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
MDWE_PREFIX = [str(SYSTEM_PYTHON), "-c", MDWE_WRAPPER]


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
        [*MDWE_PREFIX, str(BINARY), "query", str(config), "test-tcp-lookup", "key"],
        shiv_root,
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


# The .rpm. Debian's rpm installs it into a scratch root: ``rpm --root`` chroots into it for the
# scriptlets, so the root holds a /bin/sh (dash), the rm the scriptlets use, and a systemctl that
# only records its arguments: there is no systemd to ask on this machine, and what the scriptlets
# ask it is the behaviour under test. /run/systemd/system tells them whether systemd "runs".

RPM_FILES = {
    BINARY,
    RPM_UNIT,
    *RPM_SOCKETS,
    INSTALLED_CONFIG.parent,
    INSTALLED_CONFIG,
    INSTALLED_CONFIG.with_name("config.json.sample"),
    *MAN_PAGES,
    DOC,
    DOC / "README.md",
    DOC / "README.packaging.md",
    DOC / "grafana-dashboard.json",
    DOC / "prometheus-alerts.yml",
    Path("/usr/share/licenses/postfix-rest-api-connector"),
    Path("/usr/share/licenses/postfix-rest-api-connector/copyright"),
}
SOCKET_UNITS = f"{PACKAGE}-domains.socket {PACKAGE}-policy.socket"
"""As the scriptlets name them, after the service."""
RECORDING_SYSTEMCTL = '#!/bin/sh\necho "$*" >>/systemctl.log\n'
PREDECESSOR_CONFIG = b'{"user-agent": "the predecessor\'s", "endpoints": []}\n'


def rpm_query(*args: str) -> str:
    result = subprocess.run(
        ["rpm", *args], capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"rpm {args} failed:\n{result.stderr}"
    return result.stdout


def test_rpm_lists_what_the_deb_holds(built: Built) -> None:
    """The same files (the unit where EL9 keeps units), plus config.json.sample for the
    predecessor's install steps; only config.json is a config file, kept when edited."""
    listed = {Path(line) for line in rpm_query("-qpl", str(built.rpm)).splitlines()}
    assert listed == RPM_FILES
    flags = dict(
        line.split(" ", 1)
        for line in rpm_query(
            "-qp", "--queryformat", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", str(built.rpm)
        ).splitlines()
    )
    configs = {path for path, flag in flags.items() if "c" in flag}
    assert configs == {str(INSTALLED_CONFIG)}
    assert "n" in flags[str(INSTALLED_CONFIG)], "config.json must be %config(noreplace)"
    fields = rpm_query(
        "-qp", "--queryformat", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}", str(built.rpm)
    )
    assert fields == f"{PACKAGE} {__version__} 1.el9 {os.uname().machine}"


def test_rpm_requires_the_python_of_the_shebang(built: Built) -> None:
    """python3.11 on EL9, a package of its own; /bin/sh for the scriptlets; nothing else (the
    libraries are inside the zipapp, which rpm's dependency generators cannot see into)."""
    requires = rpm_query("-qpR", str(built.rpm)).splitlines()
    assert f"python{PY_MINOR}" in requires
    others = {r for r in requires if r not in {f"python{PY_MINOR}", "/bin/sh"}}
    assert all(r.startswith("rpmlib(") for r in others), others


def scratch_root(root: Path, *, systemd_running: bool) -> Path:
    """An empty root in which rpm can run the scriptlets (see above)."""
    for tool in ("/bin/sh", "/bin/rm"):
        _copy_with_libraries(Path(tool), root)
    systemctl = root / "usr/bin/systemctl"
    systemctl.parent.mkdir(parents=True, exist_ok=True)
    systemctl.write_text(RECORDING_SYSTEMCTL)
    systemctl.chmod(0o755)
    (root / "dev").mkdir()
    (root / "dev/null").touch()  # where the scriptlets' output goes; a file is enough here
    (root / "var/tmp").mkdir(parents=True)  # rpm writes each scriptlet there
    if systemd_running:
        (root / "run/systemd/system").mkdir(parents=True)
    return root


def _copy_with_libraries(binary: Path, root: Path) -> None:
    """``binary`` (symlinks resolved) and the shared libraries ldd names, at their paths."""
    real = binary.resolve()
    target = _under(root, binary)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(real, target)
    ldd = subprocess.run(["ldd", str(real)], capture_output=True, text=True, check=True).stdout
    for library in re.findall(r"(/\S+) \(0x", ldd):
        copy = _under(root, Path(library))
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(library).resolve(), copy)


def rpm_in(root: Path, *args: str) -> None:
    """Debian's rpm on the scratch root, with its database inside it."""
    result = subprocess.run(
        ["rpm", "--root", str(root), "--define", "_dbpath /var/lib/rpm", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"rpm {args} failed:\n{result.stdout}\n{result.stderr}"
    scriptlet_errors = [
        line for line in result.stderr.splitlines() if "scriptlet" in line or "/var/tmp/" in line
    ]
    assert not scriptlet_errors, result.stderr


def systemctl_calls(root: Path) -> list[str]:
    """What the scriptlets asked systemctl since the last call (which forgets them)."""
    log = root / "systemctl.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


@pytest.fixture(scope="module")
def rpm_installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The .rpm installed into a scratch root (rpm --nodeps: the root has no python3.11 package);
    erased again afterwards, leaving none of its files."""
    _require_root()
    _require_tools("rpm")
    root = scratch_root(tmp_path_factory.mktemp("rpm-root"), systemd_running=False)
    rpm_in(root, "--install", "--nodeps", str(built.rpm))
    try:
        yield root
    finally:
        rpm_in(root, "--erase", PACKAGE)
        left = [path for path in RPM_FILES if _under(root, path).exists()]
        assert not left, f"left behind after rpm --erase: {left}"


def test_rpm_installs_what_it_lists(built: Built, rpm_installed: Path) -> None:
    """``rpm -V``: every file as packaged (content, mode, owner); both configs are the sample."""
    rpm_in(rpm_installed, "--verify", "--nodeps", PACKAGE)
    sample = SAMPLE_CONFIG.read_bytes()
    config = _under(rpm_installed, INSTALLED_CONFIG)
    assert config.read_bytes() == sample
    assert config.with_name("config.json.sample").read_bytes() == sample
    assert _under(rpm_installed, BINARY).read_bytes() == built.pyz.read_bytes()
    assert os.access(_under(rpm_installed, BINARY), os.X_OK)
    assert _under(rpm_installed, RPM_UNIT).read_bytes() == UNIT_FILE.read_bytes()
    for installed_socket, source in RPM_SOCKETS.items():
        assert _under(rpm_installed, installed_socket).read_bytes() == source.read_bytes()
    for page, source in MAN_PAGES.items():
        assert gzip.decompress(_under(rpm_installed, page).read_bytes()) == source.read_bytes()
    assert systemctl_calls(rpm_installed) == [], "no systemd runs: nothing to ask it"


def test_the_predecessors_install_steps_work_word_for_word(
    rpm_installed: Path, shiv_root: Path
) -> None:
    """Its RPM shipped only config.json.sample, and its steps begin with copying it."""
    etc = _under(rpm_installed, INSTALLED_CONFIG.parent)
    subprocess.run(["bash", "-c", "cp config.json{.sample,}"], cwd=etc, check=True)
    result = subprocess.run(
        [str(SYSTEM_PYTHON), str(_under(rpm_installed, BINARY)), "check-config", "config.json"],
        cwd=etc,
        env=zipapp_env(shiv_root),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stdout.split(",")[0]) == (0, "config.json: OK"), result


def test_rpm_scriptlets_behave_like_the_systemd_macros(built: Built, tmp_path: Path) -> None:
    """Install: daemon-reload, nothing enabled or started. Upgrade (``--reinstall`` runs the
    scriptlets as an upgrade does): daemon-reload and try-restart of the service only (its
    socket units keep listening meanwhile). Erase: disable and stop, sockets included,
    daemon-reload, the zipapp's cache removed. Without a running systemd only the disable.
    And a config.json already there (the predecessor's) is kept, ours set beside it."""
    _require_root()
    _require_tools("rpm", "ldd")
    root = scratch_root(tmp_path / "root", systemd_running=False)
    rpm_in(root, "--install", "--nodeps", str(built.rpm))
    assert systemctl_calls(root) == []
    rpm_in(root, "--erase", PACKAGE)
    assert systemctl_calls(root) == [f"--no-reload disable {UNIT} {SOCKET_UNITS}"]

    (root / "run/systemd/system").mkdir(parents=True)
    config = _under(root, INSTALLED_CONFIG)
    config.parent.mkdir(parents=True)
    config.write_bytes(PREDECESSOR_CONFIG)
    rpm_in(root, "--install", "--nodeps", str(built.rpm))
    assert systemctl_calls(root) == ["daemon-reload"]
    assert config.read_bytes() == PREDECESSOR_CONFIG
    assert config.with_name("config.json.rpmnew").read_bytes() == SAMPLE_CONFIG.read_bytes()

    rpm_in(root, "--reinstall", "--nodeps", str(built.rpm))
    assert systemctl_calls(root) == ["daemon-reload", "daemon-reload", f"try-restart {UNIT}"]
    assert config.read_bytes() == PREDECESSOR_CONFIG, "an upgrade must keep an edited config"

    cache = root / "var/cache/private/postfix-rest-api-connector"
    cache.mkdir(parents=True)
    (root / "var/cache/postfix-rest-api-connector").symlink_to("private/" + cache.name)
    rpm_in(root, "--erase", PACKAGE)
    assert systemctl_calls(root) == [
        f"--no-reload disable --now {UNIT} {SOCKET_UNITS}",
        "daemon-reload",
    ]
    assert not cache.exists()
    assert not (root / "var/cache/postfix-rest-api-connector").is_symlink()
    assert sorted(p.name for p in config.parent.iterdir()) == [
        "config.json.rpmnew",
        "config.json.rpmsave",
    ]
    assert config.with_name("config.json.rpmsave").read_bytes() == PREDECESSOR_CONFIG


# What a bundled extension module may need, at most: EL9's glibc 2.34, and the libstdc++ of its
# GCC 11. Each needed version is read from the module's .gnu.version_r section (readelf -V).
EL9_MAXIMUM = {"GLIBC": (2, 34), "GLIBCXX": (3, 4, 29), "CXXABI": (1, 3, 13)}
EL9_LIBRARIES = frozenset(
    {
        "libc.so.6",
        "libm.so.6",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libutil.so.1",
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
        "libgcc_s.so.1",
        "libstdc++.so.6",
    }
)
"""The libraries every EL9 has (glibc, libgcc, libstdc++): manylinux's own list."""


def needed_versions(library: Path) -> list[tuple[str, str]]:
    """(library file, symbol version) for every version ``library`` needs, e.g. (libc.so.6,
    GLIBC_2.14)."""
    text = subprocess.run(
        ["readelf", "--wide", "--version-info", str(library)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    ).stdout
    _, found, needs = text.partition("Version needs section")
    if not found:
        return []
    versions: list[tuple[str, str]] = []
    file = ""
    for line in needs.splitlines()[1:]:
        if line.startswith("Version ") or not line.strip():
            break
        if match := re.search(r"File: (\S+)", line):
            file = match[1]
        elif match := re.search(r"Name: (\S+)", line):
            versions.append((file, match[1]))
    return versions


def needed_libraries(library: Path) -> set[str]:
    text = subprocess.run(
        ["readelf", "--wide", "--dynamic", str(library)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    ).stdout
    return set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", text))


def too_new_for_el9(library: Path) -> list[str]:
    """Each version ``library`` needs that EL9 does not have, as ``file: VERSION``."""
    problems = []
    for file, version in needed_versions(library):
        family, _, number = version.partition("_")
        limit = EL9_MAXIMUM.get(family)
        if (
            limit is not None
            and re.fullmatch(r"[0-9.]+", number)
            and tuple(int(part) for part in number.split(".")) > limit
        ):
            problems.append(f"{file}: {version}")
    return problems


def test_no_bundled_extension_module_needs_more_than_el9_has(built: Built, tmp_path: Path) -> None:
    """EL9 has glibc 2.34 (Debian bookworm 2.36): a wheel built for manylinux_2_35 or later, or a
    module compiled here that picked up a newer symbol, would fail to load there at start."""
    _require_tools("readelf")
    with zipfile.ZipFile(built.pyz) as archive:
        names = [name for name in archive.namelist() if re.search(r"\.so(\.[0-9]+)*$", name)]
        archive.extractall(tmp_path, members=names)
    modules = [tmp_path / name for name in names]
    assert len(modules) > 20, f"expected the compiled request path and the native wheels: {names}"
    bundled = {module.name for module in modules}
    problems: list[str] = []
    versions = 0
    for module in modules:
        versions += len(needed_versions(module))
        problems.extend(f"{module.relative_to(tmp_path)}: {p}" for p in too_new_for_el9(module))
        problems.extend(
            f"{module.relative_to(tmp_path)}: needs {library}, which EL9 may not have"
            for library in sorted(needed_libraries(module) - EL9_LIBRARIES - bundled)
        )
    assert versions > 0, "readelf found no versioned symbol at all: the check saw nothing"
    assert not problems, "\n".join(problems)


def test_the_glibc_check_sees_a_newer_symbol(tmp_path: Path) -> None:
    """The check above can fail: a library using arc4random (glibc 2.36) is too new for EL9."""
    _require_tools("gcc", "readelf")
    source = tmp_path / "new.c"
    source.write_text("#include <stdlib.h>\nunsigned int pick(void) { return arc4random(); }\n")
    library = tmp_path / "libnew.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(library), str(source)],
        check=True,
        timeout=RUN_TIMEOUT,
    )
    assert too_new_for_el9(library) == ["libc.so.6: GLIBC_2.36"]


def test_example_socket_units_verify_and_name_endpoints_of_the_sample(tmp_path: Path) -> None:
    """``systemd-analyze verify`` finds no unknown key, and each unit hands the socket of one
    endpoint of the sample config (by its name, ``FileDescriptorName=``) to the service, as one
    listening socket (``Accept=no``); the TCP one listens where that endpoint would."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze not found: install Debian's systemd (scripts/test.sh does)")
    assert len(SOCKETS) >= 2, SOCKETS
    for unit in [*SOCKETS, UNIT_FILE]:
        shutil.copy(unit, tmp_path)
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / unit.name) for unit in SOCKETS)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), result
    endpoints = {e["name"]: e for e in json.loads(SAMPLE_CONFIG.read_text())["endpoints"]}
    kinds = set()
    for unit in SOCKETS:
        socket_section = unit_directives(unit.read_text())["Socket"]
        [name] = socket_section["FileDescriptorName"]
        assert name in endpoints, f"{unit.name}: {name!r} is no endpoint of the sample config"
        assert socket_section["Accept"] == ["no"]
        assert socket_section["Service"] == [UNIT]
        [listen] = socket_section["ListenStream"]
        if listen.startswith("/"):
            kinds.add("unix")
            assert not listen.startswith("/run/postfix-rest-api-connector/"), (
                "the service's RuntimeDirectory is emptied when it stops"
            )
        else:
            kinds.add("tcp")
            endpoint = endpoints[name]
            assert listen == f"{endpoint['bind-address']}:{endpoint['bind-port']}"
    assert kinds == {"tcp", "unix"}
