"""Writes the seed corpus, ``fuzz/corpus/NAME/``, from the test suite's vectors: every golden
and hostile input of each protocol, each whole at the default limit, one byte at a time, and in
reads of 3 and 7 bytes at the smallest limit. ``python -m fuzz.make_corpus``; the files are
checked in, so a change of the vectors shows in review as a change of the corpus."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from fuzz.harness import encode_input
from fuzz.responses import MAX_BODIES
from fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
MAX_SEED = 8192
"""Longer vectors (heads over 64 KiB) would raise libFuzzer's input size, and slow every run."""

sys.path[:0] = [str(ROOT / "tests" / part) for part in ("", "protocols", "httpclient")]

import test_codec  # noqa: E402
import test_policy  # noqa: E402
import test_socketmap  # noqa: E402
import test_tcp_table  # noqa: E402

import test_bad_input  # noqa: E402 - the test directories are on the path only from here


def _catalogue(mode: test_bad_input.Mode) -> list[tuple[str, bytes]]:
    cases = [(case.name, case.payload) for case in test_bad_input.CATALOGUE if case.mode == mode]
    return [*cases, ("good", test_bad_input.GOOD[mode].request)]


def vectors() -> dict[str, list[tuple[str, bytes]]]:
    """Per harness: (name, stream) of every vector the tests hold."""
    return {
        "tcp_table": [
            *((f"golden-{name}", wire) for name, wire, _ in test_tcp_table.GOLDEN),
            ("golden-all", b"".join(wire for _, wire, _ in test_tcp_table.GOLDEN)),
            *((f"hostile-{name}", wire) for name, wire in _catalogue("tcp-lookup")),
        ],
        "socketmap": [
            *((f"golden-{name}", wire) for name, wire, _ in test_socketmap.GOLDEN),
            ("golden-all", b"".join(wire for _, wire, _ in test_socketmap.GOLDEN)),
            *((f"hostile-{name}", wire) for name, wire in _catalogue("socketmap-lookup")),
        ],
        "policy": [
            *((f"golden-{name}", wire) for name, wire, _ in test_policy.GOLDEN),
            *((f"hostile-{name}", wire) for name, wire in _catalogue("policy")),
        ],
        "http_response": [
            *((f"golden-{golden.name}", golden.wire) for golden in test_codec.GOLDEN),
            *((f"malformed-{name}", wire) for name, wire in test_codec.MALFORMED),
            *((f"malformed-{name}", wire) for name, wire in test_codec.LARGE_MALFORMED),
        ],
    }


def limits_of(name: str) -> int:
    return len(MAX_BODIES) if name == "http_response" else len(TARGETS[name].limits)


def write(corpus: Path) -> None:
    """Every seed, into ``corpus/NAME/``; whatever else those directories held goes."""
    for name, streams in vectors().items():
        directory = corpus / name
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            old.unlink()
        largest = limits_of(name) - 1
        for vector, stream in streams:
            if len(stream) > MAX_SEED:
                continue
            stem = re.sub(r"[^a-zA-Z0-9.-]+", "-", vector).lower()
            for variant, limit, sizes in (
                ("whole", largest, []),
                ("read1", largest, [1]),
                ("read3-7-small-limit", 0, [3, 7]),
            ):
                (directory / f"{stem}-{variant}").write_bytes(encode_input(limit, sizes, stream))
        print(f"{directory}: {len(list(directory.iterdir()))} files")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=CORPUS, help="instead of fuzz/corpus")
    write(parser.parse_args().out)


if __name__ == "__main__":
    main()
