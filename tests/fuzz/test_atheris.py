"""The atheris harnesses in the normal run: each one, as ``scripts/fuzz.sh`` starts it, replays
the checked-in seed corpus and fuzzes a bounded number of inputs with a fixed seed, and must end
with no failure. The long campaign (a million inputs each) is ``scripts/fuzz.sh``'s.

Also: a failing check really fails a harness's run, and the seed corpus is the one the test
vectors give (``python -m fuzz.make_corpus`` writes it).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESSES = ("tcp_table", "socketmap", "policy", "http_response")
RUNS = 2000
"""Inputs per harness after the seeds: a few seconds each on the project's machine."""
DEADLINE = 120
"""Seconds for all four together; they take about ten."""


def harness(name: str, corpus: Path, artifacts: Path, *flags: str) -> subprocess.Popen[str]:
    """``python -m fuzz.NAME``: new inputs go to ``corpus``, the seeds are only read."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            f"fuzz.{name}",
            str(corpus),
            str(ROOT / "fuzz" / "corpus" / name),
            f"-dict={ROOT / 'fuzz' / 'dict' / f'{name}.dict'}",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
            *flags,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_every_harness_fuzzes_without_failure(tmp_path: Path) -> None:
    runs = {}
    for name in HARNESSES:
        (tmp_path / name).mkdir()
        (tmp_path / f"{name}-crashes").mkdir()
        runs[name] = harness(
            name, tmp_path / name, tmp_path / f"{name}-crashes", f"-runs={RUNS}", "-seed=1"
        )
    outputs = {name: run.communicate(timeout=DEADLINE)[0] for name, run in runs.items()}

    for name, run in runs.items():
        output = outputs[name]
        assert run.returncode == 0, f"{name} failed:\n{output[-4000:]}"
        assert f"#{RUNS}\tDONE" in output, output[-2000:]
        executed = re.search(r"stat::number_of_executed_units: (\d+)", output)
        assert executed is not None, output[-2000:]
        assert int(executed[1]) == RUNS
        assert not list((tmp_path / f"{name}-crashes").iterdir())


def test_a_failing_check_fails_the_run_and_keeps_the_input(tmp_path: Path) -> None:
    """The plumbing the harnesses share (``fuzz.harness.run``): an input that fails a check
    ends the run non-zero and is written out to replay."""
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "bad").write_bytes(b"\x00\x00bad")
    program = (
        "from fuzz.harness import parse_input, run\n"
        "def one_input(data):\n"
        "    assert parse_input(data)[2] != b'bad', 'planted failure'\n"
        "run(one_input)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, str(seeds), "-runs=10", f"-artifact_prefix={tmp_path}/"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=DEADLINE,
        check=False,
    )

    assert done.returncode != 0
    assert "AssertionError: planted failure" in done.stdout
    crashes = list(tmp_path.glob("crash-*"))
    assert [crash.read_bytes() for crash in crashes] == [b"\x00\x00bad"]


def test_checked_in_seeds_are_the_test_vectors(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "fuzz.make_corpus", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=DEADLINE,
    )
    for name in HARNESSES:
        written = {path.name: path.read_bytes() for path in (tmp_path / name).iterdir()}
        checked_in = {
            path.name: path.read_bytes() for path in (ROOT / "fuzz" / "corpus" / name).iterdir()
        }
        assert written == checked_in, f"{name}: the vectors changed; python -m fuzz.make_corpus"
