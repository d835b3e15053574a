"""The ``moments`` command: the engine's headless commands plus the live UI (the default)."""

from __future__ import annotations

import sys
from typing import Sequence

from engine.cli import build_parser, guarded, cmd_report, cmd_run_headless


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, sub = build_parser("moments", headless_only=False)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    if args.command == "report":
        return guarded(lambda: cmd_report(args))
    return guarded(lambda: cmd_run_headless(args))


if __name__ == "__main__":
    sys.exit(main())
