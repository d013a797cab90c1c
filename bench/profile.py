"""Where one scenario's CPU goes: per-thread CPU of one connector process, and a py-spy profile.

    .venv/bin/python bench/profile.py --loadgen LOADGEN tcp 0 100 [--py-spy OUT.txt]

Runs the connector with one worker (so that the threads of one process are what is measured)
against the same nginx as ``run.py``, drives it with ``loadgen`` for 2 s of warm-up and 6 s of
measurement, and prints each thread's CPU per request: the event loop's ``python`` thread, and
pyreqwest's runtime thread when the target needs pyreqwest (the bench's ``http://`` nginx does
not, since the native client serves it). With ``--py-spy`` (``pip install py-spy``), it also
samples the event loop's stacks for those 6 s and prints the functions with the most samples of
their own. py-spy attributes time in C calls to the calling line; on Python 3.11 every
``asyncio.get_running_loop()`` is a ``getpid`` system call, which it shows far larger than it is
(``strace -c`` counts one per call; ``perf`` splits kernel, interpreter and uvloop time).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from run import (
    CLOCK_TICKS,
    SCENARIO_SETS,
    Launcher,
    run_loadgen,
    start_connector,
    start_nginx,
    stop,
)

WARMUP = 2.0
MEASURE = 6.0


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread, keyed by ``tid:name``."""
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        head, _, tail = (task / "stat").read_text().rpartition(")")
        fields = tail.split()
        name = head.split("(", 1)[1]
        seconds[f"{task.name}:{name}"] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


def top_frames(raw: Path, count: int = 15) -> list[tuple[float, str]]:
    """py-spy's raw (collapsed) output: the frames with the most samples of their own."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        total += int(samples)
        own[stack.split(";")[-1] or "(native)"] += int(samples)
    return [(100 * samples / max(total, 1), frame) for frame, samples in own.most_common(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loadgen", type=Path, required=True)
    parser.add_argument("mode", choices=["tcp", "socketmap", "policy"])
    parser.add_argument("latency_ms", type=int, choices=[0, 30])
    parser.add_argument("conns", type=int, choices=[100, 1000])
    parser.add_argument("--py-spy", type=Path, help="write py-spy's raw profile here")
    args = parser.parse_args()
    scenario = next(
        s
        for s in SCENARIO_SETS["all"]
        if (s.mode, s.latency_ms, s.conns, s.hot_keys)
        == (args.mode, args.latency_ms, args.conns, 0)
    )
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory(prefix="profile") as directory:
        tmp = Path(directory)
        nginx, api_port = start_nginx(tmp)
        try:
            connector, port = start_connector(tmp, scenario, api_port, 1, Launcher.ours())
            try:
                generator = run_loadgen(
                    args.loadgen,
                    mode=scenario.mode,
                    port=port,
                    conns=scenario.conns,
                    warmup=WARMUP,
                    duration=WARMUP + MEASURE,
                    keys=0,
                )
                time.sleep(WARMUP)
                before = thread_cpu(connector.pid)
                if args.py_spy:
                    subprocess.run(
                        [
                            *(py_spy, "record", "-p", str(connector.pid)),
                            *("-d", str(int(MEASURE)), "-r", "250", "-f", "raw"),
                            *("-o", str(args.py_spy)),
                        ],
                        check=True,
                        capture_output=True,
                    )
                else:
                    time.sleep(MEASURE)
                after = thread_cpu(connector.pid)
                out, _ = generator.communicate(timeout=60)
            finally:
                stop(connector)
        finally:
            nginx.terminate()
            nginx.wait()
    result = json.loads(out)
    requests = result["req_per_s"] * MEASURE
    print(
        f"{scenario.name}, one worker: {result['req_per_s']:,.0f} req/s, p99 {result['p99_ms']} ms"
    )
    for thread, seconds in sorted(after.items()):
        used = seconds - before.get(thread, 0.0)
        if used > 0.01:
            print(f"  thread {thread:24s} {used:6.2f} s  {used / requests * 1e6:7.1f} us/req")
    if args.py_spy:
        print("event loop thread, own samples:")
        for share, frame in top_frames(args.py_spy):
            print(f"  {share:5.1f} %  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
