"""Instructions per request, counted by callgrind: a measure this noisy 2-core machine cannot blur.

    .venv-compiled/bin/python bench/instructions.py tcp [--peer-cmd 'PYTHON -m MODULE {config}']
        [--conns 10] [--requests 3000] [--rounds 2] [--latency 0|30] [--annotate DIR]

CPU time per request moves by up to 20 % between runs of the same commit here (other guests on
the host, frequency, which vCPU the wake-ups land on); the instructions the connector executes
for a fixed workload do not. One worker (a single process), the bench's nginx as the API (no
latency, or 30 ms with ``--latency 30``), ``--conns`` connections each sending its share of
``--requests`` lookups one after another; callgrind is switched on after a warm-up of the same
size, so start-up and imports are not counted. Rounds alternate this checkout's install and the
peer's. ``--annotate`` keeps each round's callgrind file, for ``callgrind_annotate
--inclusive=yes FILE``.

Counted instructions leave out what callgrind cannot see (the kernel's share, which profile.py
and perf measure) and weigh a cache miss like any instruction: they compare two builds of the
same code, they are not a CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import SCENARIO_SETS, Launcher, Scenario, start_connector, start_nginx, stop

START_DEADLINE = 600.0
"""Seconds a connector has to listen: under callgrind, Python's imports take a while."""

ANSWER_DEADLINE = 60.0
"""Seconds one reply may take under callgrind before the round is abandoned."""

TERMINATORS = {"tcp": b"\n", "socketmap": b",", "policy": b"\n\n"}


def request(mode: str, key: str) -> bytes:
    """What bench/loadgen.c sends: a key of its own per request, so that nothing coalesces."""
    if mode == "tcp":
        return f"get {key}\n".encode()
    if mode == "socketmap":
        payload = f"map {key}".encode()
        return b"%d:%s," % (len(payload), payload)
    return (
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
        "client_address=192.0.2.1\nclient_name=client.example\nhelo_name=client.example\n"
        f"sender=sender@example.org\nrecipient={key}\nrecipient_count=0\nqueue_id=\n"
        f"instance={key}\nsize=1234\n\n"
    ).encode()


async def _one_connection(port: int, mode: str, name: str, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for number in range(count):
            writer.write(request(mode, f"user{name}-{number}@example.com"))
            await asyncio.wait_for(reader.readuntil(TERMINATORS[mode]), ANSWER_DEADLINE)
    finally:
        writer.close()


async def _drive(port: int, mode: str, conns: int, requests: int, phase: str) -> None:
    each = requests // conns
    await asyncio.gather(
        *(_one_connection(port, mode, f"{phase}{index}", each) for index in range(conns))
    )


def _callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def _total_instructions(path: Path) -> int:
    """The ``summary:`` line of a callgrind file is the total of its first event, Ir."""
    text = path.read_text(errors="replace")
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no summary in {path}")
    return int(found.group(1))


def measure(
    launcher: Launcher,
    tmp: Path,
    mode: str,
    api_port: int,
    *,
    conns: int,
    requests: int,
    latency_ms: int = 0,
) -> tuple[float, Path]:
    """Instructions per request of one round, and its callgrind file."""
    out = tmp / f"callgrind.{time.monotonic_ns()}"
    wrapped = Launcher(
        (
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *launcher.argv,
        ),
        launcher.env,
    )
    scenario = Scenario(mode, latency_ms, conns)
    process, port = start_connector(
        tmp, scenario, api_port, 1, wrapped, start_deadline=START_DEADLINE
    )
    try:
        asyncio.run(_drive(port, mode, conns, requests, "w"))  # warm-up
        _callgrind_control("--instr=on", process.pid)
        asyncio.run(_drive(port, mode, conns, requests, "m"))
        _callgrind_control("--dump", process.pid)
        _callgrind_control("--instr=off", process.pid)
    finally:
        stop(process)
    dumps = sorted(tmp.glob(f"{out.name}*"), key=lambda path: path.stat().st_mtime)
    measured = [path for path in dumps if _total_instructions(path) > 0]
    if not measured:
        raise RuntimeError("callgrind wrote no measured dump")
    return _total_instructions(measured[0]) / requests, measured[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=sorted(TERMINATORS))
    parser.add_argument("--peer-cmd", help="'COMMAND {config}', as bench/run.py takes it")
    parser.add_argument("--conns", type=int, default=10)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--latency",
        type=int,
        choices=(0, 30),
        default=0,
        help="the API's ms (30: every answer arrives on its own, as at light load)",
    )
    parser.add_argument("--annotate", type=Path, help="keep each round's callgrind file here")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install valgrind")
    assert SCENARIO_SETS  # the same run.py the timed benchmarks use
    launchers = [("ours", Launcher.ours())]
    if args.peer_cmd:
        launchers.insert(0, ("peer", Launcher.from_template(args.peer_cmd)))
    figures: dict[str, list[float]] = {name: [] for name, _ in launchers}
    with tempfile.TemporaryDirectory(prefix="instructions") as directory:
        tmp = Path(directory)
        nginx, api_port = start_nginx(tmp)
        try:
            for round_number in range(args.rounds):
                for name, launcher in launchers:
                    per_request, dump = measure(
                        launcher,
                        tmp,
                        args.mode,
                        api_port,
                        conns=args.conns,
                        requests=args.requests,
                        latency_ms=args.latency,
                    )
                    figures[name].append(per_request)
                    print(f"round {round_number + 1} {name}: {per_request:,.0f} Ir/request")
                    if args.annotate:
                        args.annotate.mkdir(parents=True, exist_ok=True)
                        shutil.copy(dump, args.annotate / f"{name}-{args.mode}-{round_number + 1}")
        finally:
            stop(nginx)
    medians = {name: statistics.median(values) for name, values in figures.items()}
    for name, value in medians.items():
        print(f"{name}: median {value:,.0f} Ir/request over {args.rounds} rounds")
    if "peer" in medians:
        print(f"ours / peer: {medians['ours'] / medians['peer']:.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
