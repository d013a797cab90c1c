"""The invariants of the three Postfix decoders, checked on each fuzzer input: only the typed
framing errors escape, every item is well-formed, the bytes held back stay under the limit (and
``has_partial`` says whether there are any), and the result is the same however the stream is
split."""

from __future__ import annotations

from typing import Any

from fuzz.harness import OneInput, parse_input, reads
from fuzz.targets import TARGETS, DecoderTarget, FramingError

Outcome = tuple[list[Any], type[FramingError] | None]
"""What was decoded, in order, and the framing error that ended the stream, if one did."""


def decode(target: DecoderTarget, limit: int, chunks: list[bytes]) -> Outcome:
    decoder = target.make(limit)
    decoded: list[Any] = []
    error_type: type[FramingError] | None = None
    try:
        for chunk in chunks:
            decoded += decoder.feed(chunk)
            pending = target.pending(decoder)
            assert pending <= target.bound(limit), (pending, target.bound(limit))
            assert decoder.has_partial == (pending > 0), (decoder.has_partial, pending)
    except FramingError as error:
        # the requests completed in the same read come first, and are still answered
        decoded += error.completed
        error_type = type(error)
    for item in decoded:
        target.check(item, limit)
    return decoded, error_type


def one_input_for(name: str) -> OneInput:
    target = TARGETS[name]

    def one_input(data: bytes) -> None:
        choice, sizes, stream = parse_input(data)
        limit = target.limits[choice % len(target.limits)]
        whole = decode(target, limit, list(reads(stream, [])))
        if sizes:
            split = decode(target, limit, list(reads(stream, sizes)))
            assert split == whole, (split, whole)

    return one_input
