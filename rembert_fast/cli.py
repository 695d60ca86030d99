"""The `rembert-fast` command."""

from __future__ import annotations

import argparse
import json
import sys


def _doctor(args: argparse.Namespace) -> int:
    from rembert_fast import __version__, ops

    info = ops.backend_info()
    info = {"rembert_fast": __version__, **info}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key != "backends":
            print(f"{key:>18}: {value}")
    for name, entry in info["backends"].items():
        mark = "yes" if entry["available"] else "no "
        print(f"{'backend ' + name:>18}: {mark}  {entry['reason']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rembert-fast", description="Accelerated RemBERT.")
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="print versions and which backends are available, and why not")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(func=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
