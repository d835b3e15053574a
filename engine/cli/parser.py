"""The one parser of the command line: every command, its options and its help (the UI's entry point,
tui/cli.py, extends it rather than repeating it)."""

from __future__ import annotations

import argparse
from typing import Any

from llm_moments.engine import __version__
from llm_moments.engine.session.setup import add_run_options, rate_hz

EPILOG = """\
A step is one forward of the model (a prefill, one decode token, or one encoder batch); a moment is
one layer's time inside a step; cycles = moment time x the clock the processor ran at (GPU SM clock
from NVML; on CPU the CPU clock, labelled nominal when that is all the OS tells).

Exit status: 0 done; 1 the model failed; 2 a usage or input error; 3 the session ran but a write
error (disk full, EIO) stopped its recording, which keeps every step before the error; 130
interrupted (SIGINT, SIGTERM, SIGHUP, or the terminal went away): the recording ends with an
"interrupted" footer and the summary covers the steps before it.
"""


class OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line on stderr, like every other error, and exit 2 (``--help`` has the rest)."""

    def error(self, message: str) -> Any:
        from llm_moments.engine.output.sanitize import visible

        self.exit(2, f"moments: error: {visible(message)} (see {self.prog} --help)\n")


REFRESH_RANGE_HZ = (0.1, 20.0)


def add_ui_options(p: argparse.ArgumentParser) -> None:
    """The live screen's options (the UI reads them; a headless run has no screen and ignores them).
    Only the parser is here: the engine never imports the UI."""
    lo, hi = REFRESH_RANGE_HZ
    p.add_argument("--refresh", type=rate_hz, default=None, metavar="HZ",
                   help=f"redraws of the numbers per second, {lo:g} to {hi:g} (default 2; 1 with --lean); "
                        "keys are answered at once whatever the rate, and the rate backs off by itself "
                        "while the terminal cannot keep up")
    p.add_argument("--lean", action="store_true",
                   help="for very slow links: 16 colours, no animation, numbers once a second, step panel "
                        "and heatmap every other frame")


def build_parser(prog: str = "moments", headless_only: bool = True) -> tuple[argparse.ArgumentParser, Any]:
    parser = OneLineParser(
        prog=prog, description="Watch where a language model's inference time goes, layer by layer: each "
        "layer's moment (its time inside one step) beside the clock cycles it took.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"llm-moments {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run a model and time every layer (the default command)",
                         description="Run a model over a stream of inputs and time every layer of every step.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--headless", action="store_true",
                     help="no UI: a progress bar, then a summary table" + (" (always, here)" if headless_only else ""))
    run.add_argument("--format", default="text", choices=["text", "json"], help="summary format (headless)")
    add_run_options(run)
    stream = sub.add_parser("stream", help="(for the live UI) run a session, records as JSON Lines on stdout",
                            description="Run a session and write every record as a JSON line on stdout; "
                                        "read commands (record, stop-record, quit) as JSON lines on stdin. "
                                        "The live monitor runs its engine this way, in a process of its own.")
    add_run_options(stream)
    rep = sub.add_parser("report", help="print the summary of a recording",
                         description="Print per-layer and per-step statistics of a recording.")
    rep.add_argument("file", metavar="FILE", help="a recording (.jsonl) written by --record or the Python API")
    rep.add_argument("--format", default="text", choices=["text", "json", "md", "html"],
                     help="text (default), json, md (markdown), or html (a report with pictures)")
    rep.add_argument("-o", "--output", default=None, metavar="OUT",
                     help="write to OUT instead of stdout (a new file; an existing one only with --force)")
    rep.add_argument("--force", action="store_true",
                     help="replace an existing OUT (a regular file only; a symlink is never followed)")
    rep.add_argument("--variant", default=None, metavar="LABEL",
                     help="a compare recording: the report of this variant's steps only (without it: the "
                          "per-variant comparison, text or json)")
    dif = sub.add_parser("diff", help="compare two recordings layer by layer",
                         description="Per layer p50 / p99 moment, cycles and share of A and B side by side, "
                                     "with the change and whether it is beyond the noise of the two runs "
                                     "(95 % bootstrap interval of the ratio of medians). Layers match by name.")
    dif.add_argument("a", metavar="A", help="the recording before the change")
    dif.add_argument("b", metavar="B", help="the recording after the change")
    dif.add_argument("--kind", default=None, choices=["prefill", "decode", "encode"],
                     help="step kind to compare (default: decode, else encode, else prefill)")
    dif.add_argument("--format", default="text", choices=["text", "json", "md"], help="output format")
    dif.add_argument("--normalize-clock", action="store_true",
                     help="compare moments scaled to one reference clock (time × clock / max clock), so runs at "
                          "different boost or throttle compare fairly")
    _add_compare_parser(sub)
    exp = sub.add_parser("export", help="convert a recording: Chrome/Perfetto trace, CSV, JSON",
                         description="chrome: trace-event JSON (open in Perfetto or chrome://tracing) with steps "
                                     "and layers as nested spans and the clock as a counter; csv: one row per "
                                     "step x layer; json: the whole recording as one JSON document.")
    exp.add_argument("file", metavar="FILE", help="a recording (.jsonl)")
    exp.add_argument("--format", required=True, choices=["chrome", "csv", "json"])
    exp.add_argument("-o", "--output", default=None, metavar="OUT",
                     help="output file (default: FILE with .trace.json / .csv / .json; - for stdout); a new "
                          "file: an existing one only with --force")
    exp.add_argument("--force", action="store_true",
                     help="replace an existing OUT (a regular file only; a symlink is never followed)")
    exp.add_argument("--split-ranks", action="store_true",
                     help="a multi-rank session: one output per rank (OUT with .rank{R} before its suffix; a "
                          "chrome trace per rank is Holistic Trace Analysis's layout) instead of one merged file")
    return parser, sub


def _add_compare_parser(sub: Any) -> None:
    from llm_moments.engine.session.compare import add_compare_options

    cmp_ = sub.add_parser("compare", help="run variants of one model interleaved and compare them layer by layer",
                          description="One session, several variants of the same model (dtype, attention, threads, "
                                      "batch size, int8, dropped blocks, cache, compile) run interleaved on the same "
                                      "inputs, order alternated per round (ABAB/BABA). Per layer and variant: p50, "
                                      "p99, cycles, the ratio to the baseline (median of per-round ratios) with a "
                                      "sign-test interval at 95 % for all rows together, and a verdict beyond the "
                                      "--margin; what each variant costs in output and in memory.",
                          epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp_.add_argument("--headless", action="store_true",
                      help="no UI: a progress bar, then the comparison (--format). Without it, on a terminal, "
                           "`moments compare` opens the live monitor on its compare screen (c: compare / layers, "
                           "v: the variant the layer table shows); `python -m llm_moments.engine` is headless")
    cmp_.add_argument("--format", default="text", choices=["text", "json"], help="summary format")
    add_run_options(cmp_)
    add_compare_options(cmp_)
    add_ui_options(cmp_)   # the live compare screen's (tui/cli.py checks them)
