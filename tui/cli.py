"""The ``moments`` command: the live monitor (default), replay, watch, and the engine's headless
run and report. The parser comes from engine.cli; this module adds what needs the UI."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

from llm_moments.engine.cli import (
    build_parser,
    cmd_diff,
    cmd_export,
    cmd_report,
    cmd_run_headless,
    error,
    guarded,
    rate_hz,
)
from llm_moments.engine.cli.parser import REFRESH_RANGE_HZ, add_ui_options
from llm_moments.engine.errors import MomentsError
from llm_moments.engine.output.sanitize import visible

THEME_HELP = "dark (default), light, high-contrast, or a theme file (.toml); NO_COLOR is respected"


def _parser() -> argparse.ArgumentParser:
    parser, sub = build_parser("moments", headless_only=False)
    run = sub.choices["run"]
    run.add_argument("--theme", default=None, help=THEME_HELP)
    add_ui_options(run)
    rep = sub.add_parser("replay", help="play a recording in the live monitor, with pause, step and seek",
                         description="Play a recording in the monitor: space pauses, . steps, [ ] seek, + - speed.")
    rep.add_argument("file", metavar="FILE", help="a recording (.jsonl)")
    rep.add_argument("--speed", type=rate_hz, default=1.0, help="playback speed, × the recorded pace (default 1)")
    rep.add_argument("--compare", default=None, metavar="B",
                     help="a second recording: `d` shows the layer-by-layer diff of FILE (A) against B")
    rep.add_argument("--theme", default=None, help=THEME_HELP)
    add_ui_options(rep)
    wat = sub.add_parser("watch", help="follow a recording another process is writing",
                         description="Follow a recording that another process (a headless run, a script using "
                                     "engine.Monitor) is writing: catches up with what is there, then follows it.")
    wat.add_argument("file", metavar="FILE", help="a recording (.jsonl), or where one will appear")
    wat.add_argument("--theme", default=None, help=THEME_HELP)
    sub.choices["compare"].add_argument("--theme", default=None, help=THEME_HELP)
    add_ui_options(wat)
    return parser


def _run_app(source: Any, theme: str | None, compare: Any = None, refresh_hz: float | None = None,
             lean: bool = False) -> int:
    """Run the UI over ``source``. Exit status: 0; 130 when a signal (SIGTERM, SIGHUP, SIGINT) or a
    lost terminal ended it; 3 when a write error stopped the live recording (the session went on);
    1 when the session stopped on an error."""
    from .app import MomentsApp
    from .hangup import EXIT_INTERRUPTED, EXIT_RECORDING_LOST, HangupSafeDriver, SessionGuard, stop_source

    app = MomentsApp(source, theme=theme, compare=compare, refresh_hz=refresh_hz, lean=lean)
    if sys.platform != "win32":
        app.driver_class = HangupSafeDriver
    # SIGTERM, SIGHUP or a terminal that went away without one end the session like q does (footer
    # written, recording closed), even when the event loop is stuck: see tui/hangup.py.
    guard = SessionGuard(app, source).install()
    try:
        app.run()
    finally:
        guard.done()
        if guard.why is None:
            source.stop()
        else:
            stop_source(source, guard.stop_timeout_s)  # interrupted: the footer says so
        guard.restore()
    lost = getattr(source, "recording_lost", None)
    if lost:  # said in the UI's status line too, but that is gone with the screen
        _say(f"moments: {lost}")
    if guard.why is not None:
        _say(f"moments: interrupted ({guard.why})")
        return EXIT_INTERRUPTED
    if app.state.error:
        return error(f"the session stopped: {app.state.error}", 1)
    if app.return_code:  # the UI itself failed (Textual printed what happened): never exit 0 after that
        return error("the monitor's screen stopped on an internal error (see above)", app.return_code)
    return EXIT_RECORDING_LOST if lost else 0


def _say(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # the terminal may be gone
        print(visible(line), file=sys.stderr)  # it may quote a file's or the engine's text


def _check_theme(args: argparse.Namespace) -> None:
    """``--theme`` given on the command line: a bad one is an error (one line, exit 2) before anything
    loads; switching inside the UI (``t``) only ever offers themes that loaded."""
    if getattr(args, "theme", None) is None:
        return
    from . import themes

    try:
        themes.check(args.theme)
    except themes.ThemeError as exc:
        raise MomentsError(str(exc)) from None


def _check_ui(args: argparse.Namespace) -> None:
    """``--refresh`` out of range: one line, exit 2, before anything loads."""
    _check_theme(args)
    hz = getattr(args, "refresh", None)
    lo, hi = REFRESH_RANGE_HZ
    if hz is not None and not (lo <= hz <= hi):   # NaN fails both
        raise MomentsError(f"--refresh must be from {lo:g} to {hi:g} redraws per second, not {hz:g}")


def _ui(args: argparse.Namespace) -> dict[str, Any]:
    """The UI options as MomentsApp takes them."""
    return {"refresh_hz": getattr(args, "refresh", None), "lean": bool(getattr(args, "lean", False))}


def _precheck_live(args: argparse.Namespace) -> None:
    """What can fail before the screen opens fails here, as one line (the model loads in the engine
    process): the same checks as a headless run (engine.session.setup.check_run_options)."""
    from llm_moments.engine.session.setup import check_run_options

    if args.inputs == "-":
        raise MomentsError("--inputs - (stdin) needs the headless mode: the live monitor reads the keyboard")
    check_run_options(args)


def cmd_live(args: argparse.Namespace) -> int:
    _check_ui(args)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("moments: no terminal here: running headless (use --headless to say so)", file=sys.stderr)
        return cmd_run_headless(args)
    _precheck_live(args)
    from llm_moments.engine.session.launch import world_size

    if world_size(args) > 1:   # --tp / --pp: N local ranks, all shown (engine/session/launch.py)
        from .rank_sources import RankLiveSource

        return _run_app(RankLiveSource(args), args.theme, **_ui(args))
    from .sources import LiveSource

    return _run_app(LiveSource(args), args.theme, **_ui(args))


def cmd_headless(args: argparse.Namespace) -> int:
    _check_ui(args)  # no screen to use them, but a bad --theme / --refresh is a bad command line all the same
    return cmd_run_headless(args)


def cmd_replay(args: argparse.Namespace) -> int:
    from .sources import ReplaySource, check_speed

    check_speed(args.speed)
    _check_ui(args)

    from llm_moments.engine.core.rankfiles import find_ranks

    rs = find_ranks(args.file)   # run.jsonl or any run.rank{R}.jsonl: every rank, merged
    if rs is not None:
        from .rank_sources import RankReplaySource

        source = RankReplaySource(rs, speed=args.speed)
    else:
        source = ReplaySource(args.file, speed=args.speed)  # a bad file fails here, before the screen
    for warning in source.rec.warnings:
        print(visible(f"moments: warning: {args.file}: {warning}"), file=sys.stderr)
    compare = None
    if args.compare:
        from llm_moments.engine.analysis.diff import compare as diff

        compare = (diff(source.rec, args.compare), args.file, args.compare)  # both streamed
    return _run_app(source, args.theme, compare, **_ui(args))


def cmd_watch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm_moments.engine.core.recording import BadLine, check_header, parse_line

    from .sources import WatchSource

    _check_ui(args)
    if not args.file.strip():
        raise MomentsError("watch: the recording's path is empty")
    path = Path(args.file).expanduser()
    from llm_moments.engine.core.rankfiles import find_ranks

    rs = find_ranks(path) if not path.is_dir() else None   # run.jsonl or any rank file: every rank
    if rs is not None:
        from .rank_sources import RankWatchSource

        return _run_app(RankWatchSource(rs), args.theme, **_ui(args))
    if path.is_dir():
        raise MomentsError(f"{path} is a directory, not a recording")
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as fh:
            first = fh.readline(1 << 20)
        if first.endswith(b"\n"):
            try:
                check_header(parse_line(first), str(path))
            except BadLine as exc:
                what = "it is not text" if "UTF-8" in str(exc) else "line 1 is not JSON"
                raise MomentsError(f"{path} is not a moments recording: {what}") from None
    return _run_app(WatchSource(path), args.theme, **_ui(args))


def _cmd_compare(args: Any) -> int:
    """``moments compare``: the live compare screen on a terminal (tui/compare_live.py); with --headless
    (or without a terminal) the engine's progress bar and table."""
    from llm_moments.engine.cli import cmd_compare

    _check_ui(args)   # a bad --theme / --refresh fails now, before a model loads
    if args.headless:
        return cmd_compare(args)
    from .compare_live import cmd_compare_live

    return cmd_compare_live(args, lambda source, theme: _run_app(source, theme, **_ui(args)))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["run", *argv]  # `moments [options]` is `moments run [options]`
    args = parser.parse_args(argv)
    commands = {"report": cmd_report, "replay": cmd_replay, "watch": cmd_watch, "diff": cmd_diff,
                "export": cmd_export, "compare": _cmd_compare}
    if args.command in commands:
        return guarded(lambda: commands[args.command](args))
    if args.command == "stream":
        from llm_moments.engine.session.stream import serve

        return guarded(lambda: serve(args))
    if args.headless:
        return guarded(lambda: cmd_headless(args))
    return guarded(lambda: cmd_live(args))


if __name__ == "__main__":
    sys.exit(main())
