"""Run the chaos load driver (tests/chaos_load.py) once and print its report as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from chaos_load import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--kill-every", type=float, default=3.0, help="0: no kills")
    parser.add_argument("--hup-every", type=float, default=2.0, help="0: no reloads")
    parser.add_argument("--same-config", action="store_true", help="reloads re-read the same file")
    parser.add_argument("--flap-every", type=float, default=1.5, help="0: the API stays up")
    parser.add_argument(
        "--vanish-share", type=float, default=0.02, help="requests whose client closes at once"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chaos-") as directory:
        report = asyncio.run(
            run(
                args.connections,
                args.seconds,
                args.kill_every,
                args.hup_every,
                Path(directory),
                alternate=not args.same_config,
                flap_every=args.flap_every,
                vanish_share=args.vanish_share,
            )
        )
        print(json.dumps(report))
        if any(str(key).startswith("WRONG") for key in report):
            sys.exit(1)


if __name__ == "__main__":
    main()
