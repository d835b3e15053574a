"""Headless command line: ``moments run --headless`` and ``moments report``.

The parser is built in ``parser`` so the UI's entry point (tui/cli.py) extends it rather than repeating it;
this module never imports the UI. ``python -m llm_moments.engine`` runs the same commands without Textual.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from llm_moments.engine.cli.common import (  # noqa: F401  (the names callers have always imported from here)
    EXIT_INTERRUPTED,
    EXIT_RECORDING_LOST,
    error,
    guarded,
)
from llm_moments.engine.cli.files import cmd_diff, cmd_export, cmd_report
from llm_moments.engine.cli.parser import build_parser
from llm_moments.engine.cli.run import cmd_compare, cmd_run_headless
from llm_moments.engine.session.setup import add_run_options, non_negative_int, positive_int, rate_hz  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    parser, _ = build_parser("moments")
    argv = list(sys.argv[1:] if argv is None else argv)
    # `run` is the default command: no arguments, or options only (`python -m llm_moments.engine --model X`).
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    commands = {"report": cmd_report, "diff": cmd_diff, "export": cmd_export, "compare": cmd_compare}
    if args.command in commands:
        return guarded(lambda: commands[args.command](args))
    if args.command == "stream":
        from llm_moments.engine.session.stream import serve

        return guarded(lambda: serve(args))
    return guarded(lambda: cmd_run_headless(args))
