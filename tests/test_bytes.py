"""A live screen that costs few bytes over SSH and stays readable (issue #11).

- The real UI in a pseudo-terminal (bench/bytes.py's harness) replays a recording made here: the
  bytes it writes per second stay under a bound that full repaints exceed many times over, while the
  screen keeps moving every second; a key is answered at once even at one frame every 5 s.
- ``--refresh`` / ``--lean``: bad values are one line and exit 2; good ones reach the app.
- The pieces, without a terminal: ``compact`` draws the same screen with fewer bytes; the table and
  panels mark dirty only what changed; the write meter and the back-off, with a fake slow terminal
  and a fake clock, and the status line that says so.
"""

from __future__ import annotations

import collections
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rich.segment import Segment
from rich.style import Style
from textual.app import App
from textual.content import Content
from textual.geometry import Region
from textual.widgets import Static
from tui_fakes import FakeSource, make_session, plain, run, settle, write_recording

from llm_moments.tui import cli
from llm_moments.tui.app import MomentsApp
from llm_moments.tui.hangup import _TtyFile
from llm_moments.tui.state import LayerView
from llm_moments.tui.widgets.layer_table import LayerTable
from llm_moments.tui.widgets.quiet import QuietStatic, changed_span
from llm_moments.tui.widgets.status_line import StatusLine
from llm_moments.tui.wire import BackOff, WriteMeter, compact

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_bytes", ROOT / "bench" / "bytes.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

# 30 top-level layers: the table fills most of a 160×48 screen, as a real model's would
LAYERS = [("embed", None, 0.05)] + [(f"blocks.{i}", None, 0.5 + 0.03 * i) for i in range(28)] + [("norm", None, 0.02)]
# per second at 160×48, this session: measured 10 KiB/s; 34 KiB/s with every widget repainted whole at
# the same 2 Hz (the regression this catches); 235 KiB/s before issue #11 (whole repaints at 12 Hz)
BYTES_BOUND = 20 * 1024


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """A replay of 30 s at 20 steps/s: it outlasts the tests."""
    path = tmp_path_factory.mktemp("bytes") / "session.jsonl"
    return write_recording(path, make_session(600, layers=LAYERS, device="cpu"))


def start(recording: Path, *ui_args: str, size: tuple[int, int] = (160, 48)):
    ui = bench.PtyUI([*bench.UI, "replay", str(recording), *ui_args], *size, cwd=str(recording.parent))
    if not ui.wait(bench.started, 60):
        ui.close()
        pytest.fail("the UI did not start")
    return ui


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX terminals only")
def test_a_replay_at_160x48_writes_few_bytes_and_the_screen_still_moves_every_second(recording):
    ui = start(recording)
    try:
        time.sleep(1.0)   # past the first full paint
        view = bench.measure_view(ui, 4.0)
        header0 = ui.screen.lines()[1]
        time.sleep(1.2)
        header1 = ui.screen.lines()[1]
    finally:
        ui.close()
    assert view["live_pct"] == 100, view            # some text changed in every second
    assert header0 != header1                        # the step counter moves
    assert view["bytes_per_s"] < BYTES_BOUND, view


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX terminals only")
def test_keys_are_answered_at_once_at_one_frame_every_5_s(recording):
    ui = start(recording, "--refresh", "0.2")
    try:
        with ui.lock:
            at = ui.screen.find(bench.TABLE_MARK)
            bench.CURSOR_SGR["sgr"] = ui.screen.sgr[at[0] + 1][at[1]]
        answers = []
        for i, delay in enumerate((0.3, 1.1, 2.3, 3.7)):   # at different phases of the 5 s frame
            time.sleep(delay)
            answers.append(ui.press(b"\x1b[B" if i % 2 == 0 else b"\x1b[A", bench.cursor_on(1 - i % 2))[1])
        time.sleep(0.7)
        help_s = ui.press(b"?", bench.has_text(bench.HELP_MARK))[1]
        text = "\n".join(ui.screen.lines())
        ui.press(b"?", bench.lacks_text(bench.HELP_MARK))
    finally:
        ui.close()
    assert max(answers) < 2.0, answers   # waiting for the next frame would take up to 5 s
    assert help_s < 2.0
    assert "--refresh HZ" in text        # the help says how


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX terminals only")
def test_lean_draws_in_16_colours(recording):
    ui = start(recording, "--lean", size=(80, 24))
    try:
        time.sleep(2.0)
        with ui.lock:
            styles = {s for row in ui.screen.sgr for s in row}
    finally:
        ui.close()
    assert styles and not any("38;5;" in s or "48;5;" in s for s in styles), styles


# -- the options ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["replay", "F", "--refresh", "0"], ["replay", "F", "--refresh", "50"], ["replay", "F", "--refresh", "nan"],
    ["replay", "F", "--refresh", "abc"], ["replay", "F", "--lean=1"], ["watch", "F", "--refresh", "-1"],
    ["run", "--refresh", "0.01"], ["run", "--headless", "--refresh", "21"], ["--refresh", "inf"],
    ["compare", "--variant", "a: ", "--variant", "b: --dtype float32", "--refresh", "0"],
    ["compare", "--variant", "a: ", "--lean=yes"],
], ids=lambda a: " ".join(a))
def test_a_bad_refresh_or_lean_is_one_line_and_exit_2(argv, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    write_recording(tmp_path / "F", make_session(3))
    monkeypatch.setattr(cli, "_run_app", lambda *a, **k: pytest.fail("the UI started"))
    try:
        code = cli.main(argv)
    except SystemExit as exc:   # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("moments: error: ") and "Traceback" not in err
    assert "--refresh" in err or "--lean" in err


def test_refresh_and_lean_reach_the_app(monkeypatch, tmp_path):
    path = write_recording(tmp_path / "run.jsonl", make_session(3))
    seen = []
    monkeypatch.setattr(cli, "_run_app", lambda source, theme, compare=None, **ui: seen.append(ui) or 0)
    assert cli.main(["replay", str(path), "--refresh", "0.5", "--lean"]) == 0
    assert cli.main(["watch", str(path)]) == 0
    assert seen == [{"refresh_hz": 0.5, "lean": True}, {"refresh_hz": None, "lean": False}]
    app = MomentsApp(FakeSource(), refresh_hz=None, lean=True)
    assert app.refresh_hz == MomentsApp.LEAN_REFRESH_HZ and app.animation_level == "none"
    assert MomentsApp(FakeSource()).refresh_hz == MomentsApp.REFRESH_HZ == 2.0


# -- fewer bytes for the same screen ------------------------------------------------------------------


def screen_of(data: str) -> tuple:
    s = bench.Screen(40, 3)
    s.feed(data.encode())
    return s.chars, s.sgr


A, B, R = "\x1b[38;5;188;48;5;16m", "\x1b[1;38;5;215;48;5;16m", "\x1b[0m"


@pytest.mark.parametrize("raw, expected", [
    # a run of one style in pieces: written once
    (f"{R}{A}ab{R}{A}cd{R}{A}ef{R}", f"{R}{A}abcdef{R}"),
    # a move between the pieces paints nothing: still once
    (f"{R}{A}ab{R}\x1b[2;5H{A}cd{R}", f"{R}{A}ab\x1b[2;5Hcd{R}"),
    # another style: the reset stays
    (f"{R}{A}ab{R}{B}cd{R}", f"{R}{A}ab{R}{B}cd{R}"),
    # text with no style after a reset: the reset stays before it
    (f"{R}{A}ab{R}cd{A}ef{R}", f"{R}{A}ab{R}cd{A}ef{R}"),
    # two styles on top of each other: what is in force is not known, nothing is dropped
    (f"{R}{A}{B}ab{R}{B}cd{R}", f"{R}{A}{B}ab{R}{B}cd{R}"),
    # the first style of a write: what came before it is not known either
    (f"{A}ab{R}{A}cd{R}", f"{A}ab{R}{A}cd{R}"),
    # a line feed may scroll, in the colours in force: the reset stays before it
    (f"{R}{B}ab{R}\r\n{B}cd{R}", f"{R}{B}ab{R}\r\n{B}cd{R}"),
])
def test_compact_drops_a_reset_and_the_same_style_again_and_nothing_else(raw, expected):
    out = compact(raw)
    assert out == expected
    assert screen_of(out) == screen_of(raw)


def test_compact_draws_the_same_screen_as_textual_writes_it():
    """Textual's own output for a full frame of the main screen, in 256 colours as over SSH."""
    from rich.console import Console

    strips = []

    async def frame():
        app = MomentsApp(FakeSource(make_session(40, layers=LAYERS)), clock=lambda: 0.0)
        async with app.run_test(size=(160, 48)) as pilot:
            await settle(pilot, app)
            update = app.screen._compositor.render_update(full=True)
            console = Console(color_system="256", force_terminal=True, width=160)
            strips.append(update.render_segments(console))

    run(frame())
    raw = strips[0]
    out = compact(raw)
    s_raw, s_out = bench.Screen(160, 48), bench.Screen(160, 48)
    s_raw.feed(raw.encode())
    s_out.feed(out.encode())
    assert (s_out.chars, s_out.sgr) == (s_raw.chars, s_raw.sgr)
    assert len(out) < 0.95 * len(raw)   # the table and heatmap write runs already: what is left is between widgets


# -- only what changed is marked dirty ------------------------------------------------------------------


def test_changed_span_is_the_first_to_the_last_differing_cell():
    st, other = Style(color="red"), Style(color="blue")
    row = [Segment("ab", st), Segment("cde", st), Segment("f", st)]
    assert changed_span(row, list(row), 6) is None
    assert changed_span(row, [Segment("ab", st), Segment("cdX", st), Segment("f", st)], 6) == (2, 5)
    assert changed_span(row, [Segment("ab", other), Segment("cde", st), Segment("g", st)], 6) == (0, 6)
    assert changed_span(None, row, 6) == (0, 6)                                 # never drawn
    assert changed_span(row, [Segment("abcdef", st)], 6) == (0, 6)              # another layout


def layer_view(last_ms: list[float]) -> LayerView:
    n = len(last_ms)
    a = np.asarray(last_ms, dtype=float)
    return LayerView(names=[f"layer.{i}" for i in range(n)], parents=[None] * n, last_ms=a, mean_ms=a, p50_ms=a,
                     p99_ms=a, cycles=a * 2e6, share=np.full(n, 0.1), recent_ms=np.tile(a[:, None], (1, 8)),
                     outlier=np.zeros(n, bool), slowest=np.zeros(n, bool), order=np.arange(n))


class Host(App):
    def __init__(self, widget):
        super().__init__()
        self.widget = widget

    def compose(self):
        yield self.widget


def spy_refreshes(widget) -> list[tuple]:
    calls: list[tuple] = []
    original = widget.refresh

    def refresh(*regions, **kwargs):
        calls.append(regions)
        return original(*regions, **kwargs)

    widget.refresh = refresh
    return calls


def test_the_table_repaints_only_the_cells_that_changed_and_the_cursor_rows_at_once():
    async def body():
        table = LayerTable()
        async with Host(table).run_test(size=(120, 20)) as pilot:
            base = [1.0, 2.0, 3.0, 4.0]
            table.set_view(layer_view(base), "order")
            await pilot.pause()
            calls = spy_refreshes(table)
            table.set_view(layer_view(base), "order")                 # the same numbers: nothing
            assert calls == []
            changed = list(base)
            changed[2] = 3.5                                         # one layer, all its figures
            table.set_view(layer_view(changed), "order")
            regions = [r for call in calls for r in call]
            assert [r.y for r in regions] == [3]                     # line 0 is the heading
            assert regions[0].x > 0 and regions[0].right <= table.size.width
            await pilot.pause()
            assert "3.500" in table.render_line(3).text
            calls.clear()
            await pilot.press("down")
            regions = [r for call in calls for r in call]
            assert sorted(r.y for r in regions) == [1, 2]            # the rows the cursor left and reached
            return table._line_cells(3), list(table.render_line(3))

    cells, segments = run(body())
    assert len(cells) >= 10 and len(segments) <= 3   # one segment per run of a style, not one per cell


def test_a_quiet_static_repaints_only_the_lines_that_changed(monkeypatch):
    calls: list[tuple] = []
    textual_refresh = Static.refresh

    def refresh(self, *regions, **kwargs):   # what QuietStatic asks of Textual
        if self is panel:
            calls.append(regions)
        return textual_refresh(self, *regions, **kwargs)

    monkeypatch.setattr(Static, "refresh", refresh)
    panel = QuietStatic()
    panel.styles.width = 30

    async def body():
        async with Host(panel).run_test(size=(40, 6)) as pilot:
            panel.update(Content("one\ntwo\nthree"))
            await pilot.pause()
            panel.update(Content("one\ntwo\nthree!"))   # its height is known now: compared from here on
            await pilot.pause()
            calls.clear()
            panel.update(Content("one\ntwo\nthree!"))
            assert calls == []
            panel.update(Content("one\nTWO\nthree!"))
            assert calls == [(Region(0, 1, 30, 1),)]
            await pilot.pause()
            assert plain(panel) == "one\nTWO\nthree!"
            calls.clear()
            panel.set_title("a")
            panel.set_title("a")                        # each assignment would repaint it all
            assert len(calls) == 1

    run(body())


def test_the_compare_screen_repaints_only_what_changed_and_says_slow_terminal(monkeypatch):
    """The compare screen of a live compare (fake records): a frame where only the steps counted moved
    repaints the summary's lines of those counts and nothing of the table; the cursor, its two rows; a new
    analysis, the cells that changed; a backed-off app says "slow terminal" on this screen's status line."""
    import copy

    from test_compare_live import compare_steps
    from test_tui_compare import app_for, first_frame

    from llm_moments.tui.widgets.compare_summary import CompareSummary
    from llm_moments.tui.widgets.compare_table import CompareTable

    summary_calls: list[tuple] = []
    textual_refresh = Static.refresh

    def refresh(self, *regions, **kwargs):   # what QuietStatic asks of Textual
        if isinstance(self, CompareSummary):
            summary_calls.append(regions)
        return textual_refresh(self, *regions, **kwargs)

    monkeypatch.setattr(Static, "refresh", refresh)

    async def body():
        app = app_for()
        async with app.run_test(size=(160, 48)) as pilot:
            app._timer.pause()                   # the test draws the frames
            await first_frame(pilot)
            screen = app.screen
            table, summary = screen.query_one(CompareTable), screen.query_one(CompareSummary)
            assert isinstance(summary, QuietStatic)
            table_calls = spy_refreshes(table)
            summary_calls.clear()
            screen.show(app.state)               # the same figures: nothing at all
            assert table_calls == [] and summary_calls == []
            for more in range(2):                # one more round: each variant's steps, twice
                summary_calls.clear()            # (the first after the layout sets what is compared)
                for k, step in enumerate(compare_steps(rounds=1)):
                    app.source._put(dict(step, index=2000 + 10 * more + k))
                await first_frame(pilot)
            lines = plain(summary).split("\n")
            moved = sorted({r.y for call in summary_calls for r in call})
            assert summary_calls and all(call for call in summary_calls)          # never the whole panel
            assert moved == [y for y, line in enumerate(lines) if " steps" in line and y >= 2]
            assert table_calls == []                                               # same analysis
            await pilot.press("down")
            assert sorted(r.y for call in table_calls for r in call) == [2, 3]   # the rows the cursor left and reached
            await pilot.pause()
            table_calls.clear()
            record = copy.deepcopy(next(r for r in app_for().source.records if r["type"] == "compare"))
            analysis = record["analysis"]
            analysis["by_kind"][analysis["kind"]]["layers"][1]["variants"]["bf16"]["p50_ms"] = 0.987
            app.source._put(record)              # a new analysis: one figure of blocks.0 moved
            await first_frame(pilot)
            regions = [r for call in table_calls for r in call]
            assert [r.y for r in regions] == [4] and regions[0].x > 0 and regions[0].width <= 9   # under step, embed
            assert "0.9870" in table.render_line(4).text
            assert "slow terminal" not in plain(screen.query_one(StatusLine))
            app.backoff.hz = app.backoff.hz / 2  # backed off: the frame's key changes, the screen says so
            await first_frame(pilot)
            note = app.backoff.note
            return note, plain(screen.query_one(StatusLine))

    note, status = run(body())
    assert note and status == f"slow terminal · {note}"


# -- backing off a terminal that cannot keep up ---------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class SlowTerminal:
    """Each write takes ``write_s`` of the fake clock, as a pty blocks behind a slow link."""

    def __init__(self, clock: FakeClock, write_s: float):
        self.clock, self.write_s, self.data = clock, write_s, []

    def write(self, text: str) -> None:
        self.clock.t += self.write_s
        self.data.append(text)

    def flush(self) -> None:
        pass


def feed(b: BackOff, busy: float, queued: int, t0: float, t1: float, tick: float = 0.1) -> list[tuple[float, float]]:
    """The meter's readings ``busy``, ``queued`` every tick from ``t0`` to before ``t1`` (fake time), as the
    app's timer gives them; the changes of rate, as (time, new rate)."""
    changes = []
    for i in range(round((t1 - t0) / tick)):
        now = round(t0 + i * tick, 6)
        if b.update(busy, queued, now):
            changes.append((now, b.hz))
    return changes


class Link:
    """A link that takes ``frames_per_s`` frames a second, in fake time: each frame at the back-off's rate
    blocks the writer for 1 / frames_per_s once the frames before it are written; every tick the back-off
    reads the share of the last 2 s the writer was blocked (the write meter) and the frames still waiting."""

    def __init__(self, backoff: BackOff, frames_per_s: float, tick: float = 0.1):
        self.b, self.frames_per_s, self.tick = backoff, frames_per_s, tick
        self.spans: collections.deque[tuple[float, float]] = collections.deque()   # each frame's write
        self.k, self.free_at, self.next_frame = 0, 0.0, 0.0
        self.changes: list[tuple[float, float]] = []

    def run(self, until: float) -> Link:
        while self.k * self.tick < until - 1e-9:
            now = round(self.k * self.tick, 6)
            while self.spans and self.spans[0][1] <= now - 2.0:
                self.spans.popleft()
            busy = sum(min(e, now) - max(s, now - 2.0) for s, e in self.spans if s < now) / 2.0
            if self.b.update(busy, sum(s > now for s, _ in self.spans), now):
                self.changes.append((now, self.b.hz))
            if now >= self.next_frame - 1e-9:
                start = max(now, self.free_at)
                self.free_at = start + 1 / self.frames_per_s
                self.spans.append((start, self.free_at))
                self.next_frame = now + 1 / self.b.hz
            self.k += 1
        return self


@pytest.mark.parametrize("frames_per_s, settled_hz", [(0.6, 0.25), (1.2, 0.5), (3.0, 1.0), (10.0, 2.0)])
def test_back_off_settles_at_the_fastest_rate_the_link_takes_under_half_busy(frames_per_s, settled_hz):
    link = Link(BackOff(2.0), frames_per_s).run(300.0)
    assert link.b.hz == settled_hz      # 1.2 frames/s: 0.5 Hz is 42 % busy (it used to end at 0.25 Hz)
    assert all(t < 20.0 for t, _ in link.changes)                  # settled, no trying up and down
    if settled_hz < 2.0:
        assert link.changes[0][0] < 2.0                            # backs off at once


def test_back_off_halves_while_writes_block_but_not_again_on_the_faster_rates_backlog():
    b = BackOff(2.0)
    assert feed(b, 0.1, 0, 0.0, 1.0) == [] and b.note is None
    assert feed(b, 0.8, 0, 1.0, 1.3) == [(1.2, 1.0)]     # blocked 80 % over most of a frame period: halved
    # 1/s: the writer works off what 2/s left first, blocked all the time; the old rule (hold_s) halved
    # again at 3.2 s, on 2/s's writes
    assert feed(b, 1.0, 0, 1.3, 3.2) == []
    # idle at some point by 3.2 s: the window holds 1/s's writes alone from 5.2 s, a period of them at 6.2 s
    assert feed(b, 0.6, 0, 3.2, 7.0) == [(6.2, 0.5)]
    assert "every 2 s instead of 500 ms (writes blocked 60 % " in b.note
    # frames pile up (Textual's queue) beyond what was there at the change: halved, a window and a period on
    assert feed(b, 1.0, 12, 7.0, 11.0) == [(10.2, 0.25)]
    assert "every 4 s instead of 500 ms (writes blocked 100 % " in b.note
    assert feed(b, 1.0, 12, 11.0, 30.0) == [] and b.hz == 0.25    # never below min_hz


def test_back_off_halves_a_rate_whose_backlog_does_not_go_down_and_steps_up_to_a_rate_that_fits():
    b = BackOff(2.0)
    # blocked without a break: 2/s was too fast; the others never catch up within calm_s (+ window, period)
    assert feed(b, 1.0, 0, 0.0, 40.0) == [(0.0, 1.0), (8.0, 0.5), (17.0, 0.25)]
    assert feed(b, 0.2, 0, 40.0, 60.0) == []      # 20 % at 0.25 Hz: 0.5 Hz would be 40 %, over 0.7 × 50 %
    changes = feed(b, 0.1, 0, 60.0, 62.0)         # 0.5 Hz would be 20 %: there once a 4 s period shows it
    assert [hz for _, hz in changes] == [0.5] and changes[0][0] <= 61.0
    assert feed(b, 0.2, 0, 62.0, 100.0) == []     # 1/s would be 40 %
    changes = feed(b, 0.05, 0, 100.0, 102.0)      # 1/s would be 10 %
    assert [hz for _, hz in changes] == [1.0] and changes[0][0] <= 101.0
    # 2/s would be 10 % too, but 2/s was too fast: tried again 30 s after the rate below was reached
    assert feed(b, 0.05, 0, 102.0, changes[0][0] + 30) == []
    assert [hz for _, hz in feed(b, 0.05, 0, changes[0][0] + 30, changes[0][0] + 31)] == [2.0]
    assert b.note is None


def test_back_off_retries_a_rate_that_was_too_fast_only_after_30_s_doubled_while_it_fails():
    b = BackOff(2.0)
    assert feed(b, 0.8, 0, 0.0, 1.0) == [(0.0, 1.0)]          # 2/s was too fast
    assert feed(b, 0.1, 0, 0.1, 30.0) == []                    # 2/s would be 20 % busy: not before 30 s
    assert feed(b, 0.1, 0, 30.0, 30.1) == [(30.0, 2.0)]
    # too fast again (caught up by 31.6 s, judged a window and a period on): tried again after 60 s
    assert feed(b, 0.77, 0, 30.1, 35.0) == [(34.1, 1.0)]
    assert feed(b, 0.1, 0, 35.0, 94.1) == []
    assert feed(b, 0.1, 0, 94.1, 94.2) == [(94.1, 2.0)]
    assert feed(b, 0.3, 0, 94.2, 130.0) == []                  # it keeps up for 30 s: forgotten
    assert feed(b, 0.8, 0, 130.0, 131.0) == [(130.2, 1.0)]    # the link got slower: 30 s again
    assert feed(b, 0.1, 0, 131.0, 160.2) == []
    assert feed(b, 0.1, 0, 160.2, 160.3) == [(160.2, 2.0)]


def test_the_write_meter_measures_how_long_the_terminal_blocks():
    clock = FakeClock()
    meter = WriteMeter(window_s=2.0, clock=clock)
    tty = _TtyFile(SlowTerminal(clock, 0.3), on_lost=lambda: None, meter=meter)
    for _ in range(5):
        tty.write("x" * 100)
        clock.t += 0.1                         # the writer waits for the next frame
    assert meter.busy() == pytest.approx(1.5 / 2.0)
    assert meter.bytes_written == 500
    clock.t += 3.0
    assert meter.busy() == 0.0

    class Stuck:   # one frame that takes seconds on a slow link: counted while it is still blocked
        def write(self, text):
            clock.t += 1.5
            seen.append(meter.busy())

        def flush(self):
            pass

    seen: list[float] = []
    _TtyFile(Stuck(), on_lost=lambda: None, meter=meter).write("frame")
    assert seen == [pytest.approx(0.75)]


def test_the_app_backs_off_on_a_slow_terminal_says_so_and_recovers():
    clock = FakeClock()

    async def body():
        app = MomentsApp(FakeSource(make_session(8)), clock=lambda: 0.0, monotonic=clock)
        async with app.run_test(size=(100, 30)) as pilot:
            app._timer.pause()                  # the test ticks
            meter = WriteMeter(clock=clock)
            tty = _TtyFile(SlowTerminal(clock, 0.4), on_lost=lambda: None, meter=meter)
            app._driver.write_meter = meter
            app._driver.queued_writes = lambda: 0
            await settle(pilot, app)
            for _ in range(4):                  # every write blocks 0.4 s of each 0.5 s
                tty.write("frame")
                clock.t += 0.1
            app._tick()
            await pilot.pause()
            slow = plain(app.main.query_one(StatusLine))
            hz = app.backoff.hz
            clock.t += 10.0                     # the link is idle again: 2/s was too fast, retried after 30 s
            for _ in range(6):
                app._tick()
                clock.t += 6.0
            app._tick()
            await pilot.pause()
            return slow, hz, app.backoff.hz, plain(app.main.query_one(StatusLine))

    slow, hz, hz_after, status_after = run(body())
    assert hz == 1.0
    assert slow.startswith("slow terminal · redrawing every 1 s instead of 500 ms (writes blocked 80 % ")
    assert hz_after == 2.0 and "slow terminal" not in status_after


def test_a_refresh_of_0_5_hz_draws_the_numbers_every_2_s_and_a_key_at_once():
    clock = FakeClock()

    async def body():
        src = FakeSource(make_session(4, footer=False))
        app = MomentsApp(src, clock=lambda: 0.0, monotonic=clock, refresh_hz=0.5)
        async with app.run_test(size=(100, 30)) as pilot:
            app._timer.pause()
            await settle(pilot, app)
            drawn = app.frames
            for i in range(4, 8):
                src.push(*make_session(1, start=i, header=False, footer=False))
                clock.t += 0.4
                app._tick()                         # folded at once, not drawn yet
            folded_early = app.state.steps_total
            early = app.frames - drawn
            clock.t += 0.5
            app._tick()                             # 2.1 s after the last frame
            late = app.frames - drawn
            await pilot.press("s")                  # a key: drawn now
            return folded_early, early, late, app.frames - drawn

    folded, early, late, after_key = run(body())
    assert folded == 8 and early == 0 and late == 1 and after_key == 2


def test_an_opaque_screen_on_top_hides_the_main_screen_a_modal_one_does_not():
    """Textual counts the screen under the top one as showing through, and repaints on the top screen
    every region that changes below: the main screen's every frame, written again under the detail
    screen. Under an opaque screen it is hidden; it stays up to date for when it shows again."""
    async def body():
        src = FakeSource(make_session(8, footer=False))
        app = MomentsApp(src, clock=lambda: 0.0)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot, app)
            await pilot.press("enter")
            await pilot.pause()
            under_detail = list(app._background_screens)
            src.push(*make_session(4, start=8, header=False, footer=False))
            await settle(pilot, app)
            header = plain(app.main.query_one("#header"))
            await pilot.press("escape", "question_mark")
            await pilot.pause()
            return under_detail, header, list(app._background_screens) == [app.main]

    under_detail, header, under_help = run(body())
    assert under_detail == [] and "steps 12" in header and under_help


def test_bench_summary_of_latencies():
    out = bench._summary([0.01, 0.02, 0.03, float("inf")])
    assert out["n"] == 4 and out["missed"] == 1 and out["median_ms"] == pytest.approx(25.0)
