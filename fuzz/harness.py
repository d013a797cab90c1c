"""What every harness shares: how a fuzzer input becomes a limit, read sizes and a stream, and
how libFuzzer is started.

An input is ``LIMIT COUNT SIZE... STREAM``: byte 0 picks one of the target's limits, byte 1
(mod 8) says how many read sizes follow, one byte each (1 to 256), and the rest is the stream.
The stream is decoded whole and again in reads of those sizes in turn: the results must be the
same. Everything the fuzzer chooses is in the bytes, so every failure replays from its file.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

MAX_SIZES = 8

OneInput = Callable[[bytes], None]


def parse_input(data: bytes) -> tuple[int, list[int], bytes]:
    """``(limit index, read sizes, stream)``; an input too short for a header has an empty
    stream."""
    if len(data) < 2:
        return 0, [], b""
    count = data[1] % MAX_SIZES
    sizes = [size + 1 for size in data[2 : 2 + count]]
    return data[0], sizes, data[2 + len(sizes) :]


def encode_input(limit: int, sizes: list[int], stream: bytes) -> bytes:
    """The input that ``parse_input`` reads back as these; for writing the seed corpus."""
    assert 0 <= limit < 256
    assert len(sizes) < MAX_SIZES
    assert all(0 < size <= 256 for size in sizes)
    return bytes((limit, len(sizes), *(size - 1 for size in sizes))) + stream


def reads(stream: bytes, sizes: list[int]) -> Iterator[bytes]:
    """``stream`` in reads whose sizes cycle through ``sizes``; whole when there are none."""
    if not sizes:
        if stream:
            yield stream
        return
    offset, turn = 0, 0
    while offset < len(stream):
        size = sizes[turn % len(sizes)]
        yield stream[offset : offset + size]
        offset, turn = offset + size, turn + 1


def run(one_input: OneInput) -> None:
    """libFuzzer with this process's arguments (corpus directories, ``-runs=N``, ...)."""
    import atheris  # noqa: PLC0415 - only a fuzzing run needs it, not the coverage replay

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
