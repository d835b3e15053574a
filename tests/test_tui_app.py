"""The live monitor driven by a Pilot (issue #3): a fake source for keys and honest states, the real
ReplaySource and WatchSource on files written here.

No pytest-asyncio: each test is a plain function that runs its async body with asyncio.run.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from textual.widgets import Input
from tui_fakes import (
    BLOCK_LAYERS,
    STEP_NS,
    SUB_LAYERS,
    FakeSource,
    append_records,
    capture_notifications,
    footer_record,
    make_gpu_sample,
    make_header,
    make_session,
    make_step,
    plain,
    run,
    settle,
    table_lines,
    wait_for,
    write_recording,
)

from llm_moments.tui import themes as theme_files
from llm_moments.tui.app import MomentsApp
from llm_moments.tui.screens.detail import LayerDetailScreen
from llm_moments.tui.screens.help import HelpScreen
from llm_moments.tui.screens.main import MainScreen
from llm_moments.tui.screens.record import RecordDialog
from llm_moments.tui.sources import LiveSource, ReplaySource, WatchSource
from llm_moments.tui.widgets.clock_panel import ClockPanel
from llm_moments.tui.widgets.header import HeaderBar
from llm_moments.tui.widgets.layer_table import LayerTable
from llm_moments.tui.widgets.status_line import StatusLine
from llm_moments.tui.widgets.step_panel import StepPanel

SIZE = (100, 30)
# BLOCK_LAYERS' base moments, slowest first: blocks.1, blocks.3, blocks.0, blocks.2, embed, norm
SLOWEST_FIRST = [2, 4, 1, 3, 0, 5]


def header_text(app) -> str:
    return plain(app.main.query_one(HeaderBar))


def status_text(app) -> str:
    return plain(app.main.query_one(StatusLine))


def clock_panel(app) -> ClockPanel:
    return app.main.query_one("#clock" if app.main.wide else "#clock-small", ClockPanel)


def table(app) -> LayerTable:
    return app.main.query_one(LayerTable)


def steps_panel(app) -> StepPanel:
    return app.main.query_one("#steps" if app.main.wide else "#steps-small", StepPanel)


def make_app(source, **kwargs) -> MomentsApp:
    kwargs.setdefault("clock", lambda: 0.0)
    return MomentsApp(source, **kwargs)


# -- pause / resume ---------------------------------------------------------------------------------


def test_pause_freezes_the_table_but_not_the_clocks_and_resume_catches_up():
    async def body():
        src = FakeSource(make_session(8, footer=False))
        app = make_app(src)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            assert app.state.steps_total == 8
            frozen_view = table(app).view
            frozen_last = frozen_view.last_ms.copy()
            clock_before = plain(clock_panel(app))
            assert "SM  1935 / 1980 MHz" in clock_before   # step 7's sample: 1980 - 15 × 3

            await pilot.press("space")
            assert app.state.paused
            assert "paused" in header_text(app)

            # New steps (with a spike on blocks.1) and a throttled, slower clock arrive while paused.
            for i in range(8, 13):
                src.push(make_step(i, spike={2: 9.0}), make_gpu_sample(i * STEP_NS + 1, sm=1410.0,
                                                                        throttle=["sw_thermal_slowdown"]))
            await settle(pilot, app, frames=2)
            assert app.state.steps_total == 13                      # the state keeps folding
            assert table(app).view is frozen_view                   # ... the table does not move
            np.testing.assert_array_equal(table(app).view.last_ms, frozen_last)
            assert "9.000" not in "\n".join(table_lines(table(app)))
            clock_after = plain(clock_panel(app))                   # the clocks keep moving
            assert "SM  1410 / 1980 MHz" in clock_after
            assert "sw_thermal_slowdown" in clock_after
            assert "steps 13" in header_text(app)                   # and so does the header

            await pilot.press("space")
            assert not app.state.paused
            await settle(pilot, app)
            view = table(app).view
            assert view is not frozen_view
            assert view.last_ms[2] == pytest.approx(9.0)
            assert "9.000" in "\n".join(table_lines(table(app)))
            assert "running" in header_text(app)

    run(body())


# -- sort -------------------------------------------------------------------------------------------


def test_s_cycles_the_sort_key_and_orders_the_rows():
    async def body():
        src = FakeSource(make_session(8, footer=False))
        app = make_app(src)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            assert app.state.sort_key == "order"
            assert table(app).view.order.tolist() == list(range(6))
            seen = []
            for _ in range(6):
                await pilot.press("s")
                seen.append(app.state.sort_key)
                # every column is proportional to the base moments here: one right order for all
                assert table(app).view.order.tolist() == SLOWEST_FIRST, app.state.sort_key
                assert table(app).sort_key == app.state.sort_key
            assert seen == ["last", "mean", "p50", "p99", "cycles", "share"]
            lines = table_lines(table(app))
            assert "share▼" in lines[0]
            names = [line.split()[0] if not line.startswith("▲") else line.split()[1] for line in lines[1:7]]
            assert names == [BLOCK_LAYERS[i][0] for i in SLOWEST_FIRST]

            await pilot.press("S")                               # reverse: fastest first
            assert app.state.sort_reverse is False
            assert table(app).view.order.tolist() == SLOWEST_FIRST[::-1]

            await pilot.press("s")                               # GFLOP/s, roof%: no work in this session
            await pilot.press("s")
            assert app.state.sort_key == "roof"
            await pilot.press("s")                               # back to the model's order
            assert app.state.sort_key == "order"
            assert table(app).view.order.tolist() == list(range(6))

    run(body())


# -- layer detail -----------------------------------------------------------------------------------


def test_enter_opens_the_cursor_layers_detail_and_escape_returns():
    async def body():
        src = FakeSource(make_session(8, layers=SUB_LAYERS, footer=False))
        app = make_app(src)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            await pilot.press("s", "s")                          # by mean, slowest first
            assert app.state.sort_key == "mean"
            await pilot.press("home")                            # the top row: blocks.1
            assert table(app).cursor_layer == 2
            await pilot.press("enter")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, LayerDetailScreen)
            assert screen.index == 2
            assert plain(screen.query_one("#title")) == "layer 2: blocks.1"

            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, MainScreen)

            # blocks.0 (the third row by mean) has sub-layers: the detail shows their shares
            await pilot.press("down", "down", "enter")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, LayerDetailScreen) and screen.index == 1
            assert plain(screen.query_one("#title")) == "layer 1: blocks.0"
            children = plain(screen.query_one("#children"))
            assert "blocks.0.attn" in children and "37.5%" in children
            assert "blocks.0.mlp" in children and "50.0%" in children
            await pilot.press("right")                           # next layer in header order
            assert screen.index == 2
            assert plain(screen.query_one("#title")) == "layer 2: blocks.1"
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, MainScreen)

            # a sub-layer names its parent and has no sub-layers of its own
            assert table(app).cursor_layer == 1                  # the cursor stayed on blocks.0
            await pilot.press("down", "down", "enter")           # by mean: blocks.2, then blocks.0.mlp
            await pilot.pause()
            assert isinstance(app.screen, LayerDetailScreen)
            assert plain(app.screen.query_one("#title")) == "layer 7: blocks.0.mlp  (in blocks.0)"
            assert "no sub-layers" in plain(app.screen.query_one("#children"))

    run(body())


# -- recording --------------------------------------------------------------------------------------


def test_r_records_to_the_typed_path_and_r_again_stops():
    async def body():
        src = FakeSource(make_session(4, footer=False))
        app = make_app(src)
        notes = capture_notifications(app)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            # escape in the dialog cancels: nothing is recorded
            await pilot.press("r")
            await pilot.pause()
            assert isinstance(app.screen, RecordDialog)
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, MainScreen)
            assert src.recording_calls == [] and app.state.recording_path is None

            await pilot.press("r")
            await pilot.pause()
            assert isinstance(app.screen, RecordDialog)
            field = app.screen.query_one(Input)
            assert field.value.startswith("moments-") and field.value.endswith(".jsonl")
            field.value = ""
            target = "r/a.jsonl"            # the fake source writes nothing: any path will do
            await pilot.press(*target)
            assert field.value == target
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, MainScreen)
            assert src.recording_calls == [("start", target)]
            assert app.state.recording_path == target
            await settle(pilot, app)
            assert "● rec" in header_text(app) and f"rec {target}" in header_text(app)
            assert any(target in m for m, _ in notes)

            await pilot.press("r")                               # r again: stop, no dialog
            await pilot.pause()
            assert isinstance(app.screen, MainScreen)
            assert src.recording_calls == [("start", target), ("stop", None)]
            assert app.state.recording_path is None
            await settle(pilot, app)
            assert "rec" not in header_text(app)

    run(body())


def test_only_live_sources_can_record():
    assert LiveSource.can_record and not ReplaySource.can_record and not WatchSource.can_record
    assert ReplaySource.can_seek and not LiveSource.can_seek and not WatchSource.can_seek


# -- themes -----------------------------------------------------------------------------------------


def test_t_cycles_the_builtin_themes():
    async def body():
        app = make_app(FakeSource(make_session(4)), theme="light")
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            assert app.theme == "moments-light"
            seen = []
            for _ in range(3):
                await pilot.press("t")
                seen.append(app.theme)
            assert seen == ["moments-dark", "moments-high-contrast", "moments-light"]

    run(body())


@pytest.mark.parametrize("spec,expected", [("light", "moments-light"), ("high-contrast", "moments-high-contrast"),
                                           ("dark", "moments-dark"), ("moments-light", "moments-light"),
                                           (None, "moments-dark"), ("", "moments-dark")])
def test_theme_by_name(spec, expected):
    themes, name, warning = theme_files.resolve(spec)
    assert name == expected and warning is None
    assert {"moments-dark", "moments-light", "moments-high-contrast"} <= {t.name for t in themes}


USER_THEME = """\
name = "my-ocean"
dark = true
primary = "#2E86AB"
accent = "#F18F01"
background = "#0B132B"
surface = "#1C2541"
panel = "#3A506B"
foreground = "#E0E0E0"

[variables]
heat-low = "#1C2541"
heat-high = "#F18F01"
"""


def test_theme_file_loads(tmp_path):
    path = tmp_path / "ocean.toml"
    path.write_text(USER_THEME, encoding="utf-8")

    async def body():
        app = make_app(FakeSource(make_session(2)), theme=str(path))
        notes = capture_notifications(app)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            assert app.theme == "my-ocean"
            assert app.theme_variables["heat-high"].upper() == "#F18F01"
            assert not [n for n in notes if n[1] != "information"]
            await pilot.press("t")                               # the user theme is in the cycle
            assert app.theme == "moments-dark"

    run(body())


BROKEN_THEMES = [
    ('name = "x"\nprimary = \n', "not valid TOML"),
    ('name = "x"\nprimary = "not-a-colour"\n', "is not a colour"),
    ('primary = "#123456"\n', "needs a name"),
    ('name = "x"\n', "needs at least a primary colour"),
    ('name = "x"\nprimary = "#123456"\nsparkle = true\n', "unknown key"),
    ('name = "x"\nprimary = "#123456"\ndark = "yes"\n', "dark must be true or false"),
    ('name = "x"\nprimary = "#123456"\nvariables = 3\n', "must be a table"),
    (b"\xff\xfe\x00", "cannot read theme file"),
    (None, "does not exist"),
]


@pytest.mark.parametrize("content,words", BROKEN_THEMES)
def test_broken_theme_file_resolves_to_dark_with_a_warning(tmp_path, content, words):
    path = tmp_path / "broken.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    _themes, name, warning = theme_files.resolve(str(path))
    assert name == "moments-dark"
    assert warning is not None and words in warning and "using the dark theme" in warning
    assert str(path) in warning


def test_unknown_theme_name_resolves_to_dark_with_a_warning():
    _themes, name, warning = theme_files.resolve("solarized")
    assert name == "moments-dark" and "unknown theme 'solarized'" in warning


def test_broken_theme_file_in_the_app_is_a_warning_not_a_crash(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\nprimary = "not-a-colour"\n', encoding="utf-8")

    async def body():
        app = make_app(FakeSource(make_session(2)), theme=str(path))
        notes = capture_notifications(app)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            assert app.theme == "moments-dark"
            warnings = [m for m, severity in notes if severity == "warning"]
            assert len(warnings) == 1
            assert "is not a colour" in warnings[0] and "using the dark theme" in warnings[0]
            assert app.state.steps_total == 2                   # and the monitor runs on
            await pilot.press("t")
            assert app.theme == "moments-high-contrast"

    run(body())


# -- screenshot -------------------------------------------------------------------------------------


def test_x_saves_an_svg_screenshot(tmp_path):
    async def body():
        app = make_app(FakeSource(make_session(4)), screenshot_dir=tmp_path)
        notes = capture_notifications(app)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            await pilot.press("x")
            await pilot.pause()
            files = list(tmp_path.glob("*.svg"))
            assert len(files) == 1
            assert files[0].name.startswith("moments-")
            text = files[0].read_text(encoding="utf-8")
            assert text.lstrip().startswith("<svg") and "tiny-gpt2" in text
            assert any("screenshot saved" in m for m, _ in notes)

            # a folder that does not exist: a message, not a crash
            app.screenshot_dir = tmp_path / "no" / "such"
            await pilot.press("x")
            await pilot.pause()
            assert isinstance(app.screen, MainScreen)
            assert any(severity == "error" and "screenshot not saved" in m for m, severity in notes)
            assert len(list(tmp_path.rglob("*.svg"))) == 1

    run(body())


# -- replay, with the real ReplaySource -------------------------------------------------------------


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_replay_plays_to_the_end(tmp_path):
    path = write_recording(tmp_path / "run.jsonl", make_session(12))
    clock = ManualClock()
    src = ReplaySource(path, speed=1.0, clock=clock)

    async def body():
        app = make_app(src)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            assert app.state.mode == "replay"
            assert app.state.header["model"]["name"] == "tiny-gpt2"
            assert app.state.steps_total == 1                   # no time has passed: step 0 only
            clock.now += 10.0                                   # 10 s of playback: 12 steps take 0.6 s
            await settle(pilot, app)
            assert app.state.steps_total == 12
            assert app.state.footer == footer_record(12)
            assert src.note() == "step 12/12 · finished"
            assert "step 12/12 · finished" in header_text(app)
            assert "replay" in header_text(app)
            assert "steps 12" in header_text(app)

    run(body())


def test_replay_steps_and_seeks(tmp_path):
    path = write_recording(tmp_path / "run.jsonl", make_session(30))
    clock = ManualClock()
    src = ReplaySource(path, speed=1.0, clock=clock)

    async def body():
        app = make_app(src)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            assert app.state.steps_total == 1
            await pilot.press("space")
            assert src.paused and app.state.paused
            clock.now += 10.0                                   # paused: time passes, nothing plays
            await settle(pilot, app)
            assert app.state.steps_total == 1

            for n in (2, 3, 4):                                 # '.' steps one at a time
                await pilot.press("full_stop")
                await settle(pilot, app)
                assert app.state.steps_total == n
                assert app.state.last_step["index"] == n - 1
            assert src.note() == "step 4/30 · paused"
            assert "step 4/30 · paused" in header_text(app)

            await pilot.press("right_square_bracket")           # ] +10
            await settle(pilot, app)
            assert app.state.steps_total == 14
            assert app.state.last_step["index"] == 13
            # The table follows the replay even while paused.
            assert table(app).view is not None and "14" in header_text(app)

            await pilot.press("left_square_bracket")            # [ −10: state rebuilt from the start
            await settle(pilot, app)
            assert app.state.steps_total == 4
            assert app.state.stats.n_steps == 4
            assert len(app.state.step_meta) == 4
            assert app.state.last_step["index"] == 3
            assert len(app.state.samples) == 3                  # samples of steps 0..2 come before step 3
            assert app.state.tokens_total == 8 + 3
            assert app.state.header is not None                 # the header survives the reset
            assert "steps 4 " in header_text(app)

            await pilot.press("g")                              # to the start
            await settle(pilot, app)
            assert app.state.steps_total == 0 and src.note() == "step 0/30 · paused"
            await pilot.press("G")                              # to the end
            await settle(pilot, app)
            assert app.state.steps_total == 30
            assert app.state.last_step["index"] == 29

    run(body())


def test_replay_of_a_cut_off_recording_plays_what_is_there(tmp_path):
    records = make_session(10, footer=False, sample_every=0)    # header + 10 steps, the last cut in half
    path = write_recording(tmp_path / "killed.jsonl", records, cut_last=True)
    clock = ManualClock()
    src = ReplaySource(path, speed=1.0, clock=clock)
    assert any("cut off" in w for w in src.rec.warnings)

    async def body():
        app = make_app(src)
        async with app.run_test(size=SIZE) as pilot:
            clock.now += 10.0
            await settle(pilot, app)
            assert app.state.steps_total == 9
            assert src.note() == "step 9/9 · finished"
            messages = [s.message for s in app.state.statuses]
            assert any("cut off" in m for m in messages)
            # both warnings reach the state; the status line shows the newest
            line = status_text(app)
            assert line.startswith("warning recording: the last line") and "cut off" in line
            assert line.endswith("no footer: the session did not end cleanly (killed, or still being written)")
            assert "replay" in header_text(app) and "step 9/9 · finished" in header_text(app)
            assert app.state.error is None

    run(body())


def test_replay_seek_to_the_start_while_playing_starts_over(tmp_path):
    path = write_recording(tmp_path / "run.jsonl", make_session(20))
    clock = ManualClock()
    src = ReplaySource(path, speed=1.0, clock=clock)

    async def body():
        app = make_app(src)
        async with app.run_test(size=SIZE) as pilot:
            clock.now += 0.5                                    # half a second: steps 0..10
            await settle(pilot, app)
            assert app.state.steps_total == 11 and not src.paused
            await pilot.press("g")                              # back to the start, still playing
            await settle(pilot, app)
            assert app.state.steps_total == 0 and src.note() == "step 0/20 · 1×"
            clock.now += 0.12                                   # and it plays on from there: 0, 50, 100 ms
            await settle(pilot, app)
            assert app.state.steps_total == 3 and src.note() == "step 3/20 · 1×"
            await pilot.press("left_curly_bracket")             # { −100 steps: the start again
            await settle(pilot, app)
            assert app.state.steps_total == 0 and src.note() == "step 0/20 · 1×"
            clock.now += 10.0                                   # to the end once more: footer again
            await settle(pilot, app)
            assert app.state.steps_total == 20 and src.note() == "step 20/20 · finished"
            assert app.state.footer == footer_record(20)

    run(body())


def test_replay_of_a_recording_without_steps(tmp_path):
    path = write_recording(tmp_path / "empty.jsonl", [make_header()])
    src = ReplaySource(path, speed=1.0, clock=ManualClock())

    async def body():
        app = make_app(src)
        notes = capture_notifications(app)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            await pilot.press("full_stop", "right_square_bracket", "left_square_bracket", "G", "g")
            await settle(pilot, app)
            assert app.state.steps_total == 0 and src.note() == "step 0/0 · paused"
            assert "waiting for the first step" in table_lines(table(app))[1]
            assert isinstance(app.screen, MainScreen)

            await pilot.press("r")                              # a replay cannot record: a note, no dialog
            await pilot.pause()
            assert isinstance(app.screen, MainScreen)
            assert ("recording is for live sessions; this is a replay", "warning") in notes

    run(body())


def test_replay_single_steps_reach_the_step_panel_every_time(tmp_path):
    """The step panel redraws on every 3rd frame only; a step that lands on another frame must still
    show up on the next tick, not wait for more data (a paused replay has none)."""
    path = write_recording(tmp_path / "run.jsonl", make_session(12))
    src = ReplaySource(path, speed=1.0, clock=ManualClock())

    async def body():
        app = make_app(src)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            await pilot.press("space")
            for n in range(2, 7):
                await pilot.press("full_stop")
                await settle(pilot, app)                        # the next tick
                assert app.state.steps_total == n
                text = plain(steps_panel(app))
                assert re.search(rf"decode +{n - 1}×", text), (n, text)

    run(body())


def test_a_resize_after_the_data_stopped_fills_the_wide_panels():
    async def body():
        src = FakeSource(make_session(8))
        app = make_app(src)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            await pilot.press("s")                              # one more frame: not a multiple of 3
            await pilot.resize_terminal(160, 48)
            await pilot.pause()
            await settle(pilot, app, frames=2)
            assert app.main.wide
            assert "decode" in plain(steps_panel(app))
            assert app.main.query_one("#heatmap").names == [name for name, _, _ in BLOCK_LAYERS]

    run(body())


def test_a_layout_change_that_comes_after_the_resized_frame_is_drawn():
    """The screen switches to the wide layout on its own resize event, which can arrive after the app
    has already drawn a frame at the new size; the wide panels must still be filled."""
    async def body():
        app = make_app(FakeSource(make_session(8)))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app, frames=2)
            assert not app.main.wide and plain(app.main.query_one("#steps", StepPanel)) == ""
            app.main._apply_size(160, 48)                       # the late layout switch, data unchanged
            await settle(pilot, app, frames=2)
            assert app.main.wide
            assert "decode" in plain(app.main.query_one("#steps", StepPanel))

    run(body())


# -- watch, with the real WatchSource on a growing file ----------------------------------------------


def test_watch_follows_a_growing_file_until_the_writer_finishes(tmp_path):
    path = tmp_path / "growing.jsonl"
    records = make_session(3, footer=False)
    write_recording(path, records)
    src = WatchSource(path, poll_s=0.02)

    async def body():
        app = make_app(src, refresh_hz=50)
        async with app.run_test(size=SIZE) as pilot:
            assert await wait_for(pilot, lambda: app.state.steps_total == 3)
            assert app.state.header["schema"] == "moments/1"
            assert "watch" in header_text(app)

            more = make_session(4, start=3, header=False, footer=False)
            append_records(path, more)
            assert await wait_for(pilot, lambda: app.state.steps_total == 7)
            assert app.state.last_step["index"] == 6

            append_records(path, [footer_record(7)])
            assert await wait_for(pilot, lambda: src.note() == "writer finished"
                                  and "writer finished" in header_text(app))
            assert app.state.footer["reason"] == "completed"
            assert "the writer ended the session (completed)" in status_text(app)
            assert app.state.steps_total == 7
        assert src._stop.is_set()

    run(body())


def test_watch_note_waits_for_the_file_then_notices_an_idle_writer(tmp_path):
    import time

    path = tmp_path / "later.jsonl"
    src = WatchSource(path, poll_s=0.02, idle_after_s=0.3)
    src.start()
    try:
        assert src.note() == f"waiting for {path} to appear"
        write_recording(path, make_session(2, footer=False))
        deadline = time.monotonic() + 5
        got: list = []
        while time.monotonic() < deadline and len([r for r in got if r["type"] == "step"]) < 2:
            got += src.drain()
            time.sleep(0.02)
        assert [r["type"] for r in got][:2] == ["header", "step"]
        assert src.note() == "following"
        time.sleep(0.5)
        assert src.note().startswith("no new data for ") and src.note().endswith("writer stopped?")
    finally:
        src.stop()
    assert src._thread is not None and not src._thread.is_alive()


def test_watch_of_something_that_is_not_a_recording_is_an_error_record(tmp_path):
    import time

    path = tmp_path / "notes.txt"
    path.write_text("hello\n", encoding="utf-8")
    src = WatchSource(path, poll_s=0.02)
    src.start()
    try:
        deadline = time.monotonic() + 5
        got: list = []
        while time.monotonic() < deadline and not got:
            got += src.drain()
            time.sleep(0.02)
        assert got and got[0]["type"] == "error" and "not a moments recording" in got[0]["message"]
    finally:
        src.stop()


# -- honest states ----------------------------------------------------------------------------------


def test_cpu_mode_is_labelled():
    async def body():
        app = make_app(FakeSource(make_session(6, device="cpu", footer=False)))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            panel = clock_panel(app)
            assert panel.border_title == "CPU mode · clock nominal, /proc/cpuinfo"
            assert "CPU clock 2400 MHz" in plain(panel)
            assert "cpu-nominal clock" in plain(panel)
            line = status_text(app)
            assert line.startswith("CPU mode · no GPU in use")
            assert "cpu-nominal" in line
            assert "CPU" in header_text(app)

    run(body())


def test_unsupported_nvml_field_shows_na():
    async def body():
        records = make_session(3, footer=False, sample_every=0)
        records.append(make_gpu_sample(3 * STEP_NS, power_w=None))
        app = make_app(FakeSource(records))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            text = plain(clock_panel(app))
            assert "power n/a" in text
            assert "temp 54 °C" in text                          # the supported fields still show
            assert clock_panel(app).border_title == "GPU clock (NVML)"

    run(body())


def test_hooks_not_firing_says_so_and_shows_dashes_not_zeros():
    async def body():
        records = [make_header()] + [make_step(i, hooks_fired=False) for i in range(5)]
        app = make_app(FakeSource(records))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            assert app.state.steps_total == 5 and app.state.no_layer_timing
            assert status_text(app).startswith("no per-layer timing")
            rows = table_lines(table(app))[1:7]
            for row, (name, _, _) in zip(rows, BLOCK_LAYERS):
                assert name in row
                assert "—" in row
                assert "0.0000" not in row and "0.0%" not in row, row

    run(body())


def test_engine_error_shows_in_status_and_header():
    async def body():
        src = FakeSource(make_session(3, footer=False))
        app = make_app(src)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            src.push({"type": "error", "message": "CUDA out of memory (tried to allocate 2 GiB)"})
            await settle(pilot, app)
            assert app.state.error == "CUDA out of memory (tried to allocate 2 GiB)"
            line = status_text(app)
            assert line.startswith("engine error") and "CUDA out of memory" in line
            assert " error " in header_text(app)
            assert app.state.steps_total == 3                    # what came before is still shown
            await pilot.press("ctrl+c")                          # ctrl+c quits too
            await pilot.pause()
            assert src.stopped >= 1

    run(body())


def test_error_before_the_header_does_not_crash():
    async def body():
        src = FakeSource([{"type": "loading", "message": "loading gpt2…"},
                          {"type": "error", "message": "no such model: gpt7"}])
        app = make_app(src)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            assert "no such model: gpt7" in status_text(app)
            assert isinstance(app.screen, MainScreen)

    run(body())


# -- quit -----------------------------------------------------------------------------------------------


def test_q_closes_the_help_screen_then_quits():
    async def body():
        src = FakeSource(make_session(3, footer=False))
        app = make_app(src)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("q")
            await pilot.pause()
            assert isinstance(app.screen, MainScreen)
            assert src.started == 1 and src.stopped == 0
            await pilot.press("q")                              # on the main screen q quits
            await pilot.pause()
            assert src.stopped >= 1
        assert app.return_code == 0

    run(body())
