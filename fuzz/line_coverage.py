"""Line coverage of each decoder's module over a corpus, with the standard library alone: every
corpus file goes through the harness's checks (uninstrumented) under ``sys.settrace``.

``python -m fuzz.line_coverage NAME DIR...`` prints, for the module that defines the decoder,
the lines run out of the lines of every function the corpus entered, the lines missed, and the
functions never entered (encoders and the like, which no decoder calls).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from types import CodeType, FrameType, ModuleType
from typing import Any

from fuzz.harness import OneInput


def _functions(code: CodeType) -> Iterator[CodeType]:
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            if constant.co_flags & inspect.CO_OPTIMIZED:
                yield constant
            yield from _functions(constant)


def executable_lines(module: ModuleType) -> dict[str, set[int]]:
    """Per function (nested functions and comprehensions count as their outer function's
    lines): the lines that hold code."""
    path = str(module.__file__)
    lines: dict[str, set[int]] = {}
    for function in _functions(compile(Path(path).read_text(), path, "exec")):
        name = function.co_qualname.split(".<locals>")[0]
        lines.setdefault(name, set()).update(
            line for _, _, line in function.co_lines() if line is not None
        )
    return lines


def run_lines(module: ModuleType, one_input: OneInput, inputs: list[bytes]) -> set[int]:
    """The lines of ``module`` run while ``one_input`` takes every input; an input whose check
    fails is a finding, so it raises."""
    path, seen = module.__file__, set[int]()

    def local(frame: FrameType, event: str, _: Any) -> Any:
        if event in ("call", "line"):
            seen.add(frame.f_lineno)
        return local

    def tracer(frame: FrameType, event: str, _: Any) -> Any:
        return local(frame, event, _) if frame.f_code.co_filename == path else None

    sys.settrace(tracer)
    try:
        for data in inputs:
            one_input(data)
    finally:
        sys.settrace(None)
    return seen


def report(module: ModuleType, one_input: OneInput, inputs: list[bytes]) -> dict[str, Any]:
    functions = executable_lines(module)
    seen = run_lines(module, one_input, inputs)
    entered = {name: lines for name, lines in functions.items() if lines & seen}
    total = set().union(*entered.values())
    return {
        "module": module.__name__,
        "inputs": len(inputs),
        "lines": len(total),
        "run": len(total & seen),
        "missed": sorted(total - seen),
        "not_entered": sorted(set(functions) - set(entered)),
    }


def harness(name: str) -> tuple[ModuleType, OneInput]:
    """The harness's checks and the module of the decoder they feed, uninstrumented."""
    if name == "http_response":
        from fuzz import responses  # noqa: PLC0415 - imported only for the harness asked for
        from postfix_rest_api_connector.httpclient import codec  # noqa: PLC0415

        return codec, responses.one_input
    from fuzz import decoders, targets  # noqa: PLC0415

    target = targets.TARGETS[name]
    return sys.modules[type(target.make(target.limits[0])).__module__], decoders.one_input_for(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name")
    parser.add_argument("corpus", nargs="+", type=Path)
    args = parser.parse_args()
    module, one_input = harness(args.name)
    inputs = [path.read_bytes() for d in args.corpus for path in sorted(d.iterdir())]
    result = report(module, one_input, inputs)
    share = 100 * result["run"] / result["lines"]
    print(
        f"{result['module']}: {result['run']}/{result['lines']} lines ({share:.1f} %) of the "
        f"functions entered, over {result['inputs']} inputs"
    )
    print(f"  missed lines: {result['missed']}")
    print(f"  functions not entered: {result['not_entered']}")


if __name__ == "__main__":
    main()
