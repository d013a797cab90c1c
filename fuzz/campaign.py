"""The long atheris campaign: every harness for ``--runs`` executions from the checked-in seeds,
then the line coverage of each decoder's module over the corpus it reached; a table to paste
into docs/reliability.md. ``scripts/fuzz.sh`` runs it.

New inputs go to ``WORK/NAME/`` (the seed directories are only read; a later campaign starts from
all it holds), failing inputs to ``WORK/NAME-crashes/``, libFuzzer's output to ``WORK/NAME.log``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fuzz import line_coverage

HERE = Path(__file__).resolve().parent
HARNESSES = ("tcp_table", "socketmap", "policy", "http_response")
_DONE = re.compile(rb"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_EXECUTED = re.compile(rb"stat::number_of_executed_units: (\d+)")


@dataclass(frozen=True)
class Campaign:
    name: str
    status: int
    executions: int
    cov: int
    ft: int
    corpus: int
    seconds: float
    crashes: int


def fuzz(name: str, runs: int, work: Path, extra: list[str]) -> Campaign:
    corpus, crashes, log = work / name, work / f"{name}-crashes", work / f"{name}.log"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        f"fuzz.{name}",
        str(corpus),
        str(HERE / "corpus" / name),
        f"-dict={HERE / 'dict' / f'{name}.dict'}",
        f"-runs={runs}",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
        *extra,
    ]
    started, since = time.monotonic(), time.time()
    with log.open("wb") as output:
        status = subprocess.run(
            command, cwd=HERE.parent, stdout=output, stderr=subprocess.STDOUT, check=False
        ).returncode
    seconds = time.monotonic() - started
    text = log.read_bytes()
    done = _DONE.findall(text)
    executed = _EXECUTED.findall(text)
    _, cov, ft, size = (int(value) for value in done[-1]) if done else (0, 0, 0, 0)
    return Campaign(
        name,
        status,
        int(executed[-1]) if executed else 0,
        cov,
        ft,
        size,
        seconds,
        sum(crash.stat().st_mtime >= since for crash in crashes.iterdir()),  # this run's
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1_000_000, help="executions per harness")
    parser.add_argument("--jobs", type=int, default=2, help="harnesses run at once")
    parser.add_argument("--work", type=Path, default=HERE.parent / "build" / "fuzz")
    parser.add_argument("names", nargs="*", help=f"harnesses (default: all of {HARNESSES})")
    parser.add_argument(
        "--max-len",
        type=int,
        default=1024,
        help="longest input: past the small limits every harness fuzzes with, a longer one only"
        " costs time (each input is also fed a byte at a time)",
    )
    parser.add_argument("--libfuzzer", action="append", default=[], help="one more flag")
    args = parser.parse_args()
    unknown = set(args.names) - set(HARNESSES)
    if unknown:
        parser.error(f"no harness {sorted(unknown)}")
    names = args.names or list(HARNESSES)
    with ThreadPoolExecutor(args.jobs) as pool:
        campaigns = list(
            pool.map(
                lambda name: fuzz(
                    name, args.runs, args.work, [f"-max_len={args.max_len}", *args.libfuzzer]
                ),
                names,
            )
        )
    print(
        "| decoder | executions | failures | libFuzzer cov / ft | corpus (seeds + new) "
        "| lines run (functions entered) | time |"
    )
    print("|---|---|---|---|---|---|---|")
    failed = False
    for campaign in campaigns:
        module, one_input = line_coverage.harness(campaign.name)
        directories = [args.work / campaign.name, HERE / "corpus" / campaign.name]
        inputs = [path.read_bytes() for d in directories for path in sorted(d.iterdir())]
        lines = line_coverage.report(module, one_input, inputs)
        failures = campaign.crashes + (campaign.status != 0)
        failed |= bool(failures) or campaign.executions < args.runs
        print(
            f"| {campaign.name} | {campaign.executions:,} | {failures} "
            f"| {campaign.cov} / {campaign.ft} | {campaign.corpus} "
            f"| {lines['run']}/{lines['lines']} ({100 * lines['run'] / lines['lines']:.1f} %)"
            f" | {campaign.seconds / 60:.0f} min |"
        )
        print(
            f"<!-- {lines['module']}: missed lines {lines['missed']}, not entered "
            f"{lines['not_entered']} -->"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
