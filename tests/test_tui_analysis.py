"""Issue #4 on screen: the roofline view, the outlier list, the diff screen and the work columns."""

from __future__ import annotations

from textual.widgets import DataTable, Static
from tui_fakes import (
    BLOCK_LAYERS,
    FakeSource,
    capture_notifications,
    make_session,
    make_step,
    run,
    settle,
    write_recording,
)

from llm_moments.engine.analysis.diff import compare
from llm_moments.engine.core import recording
from llm_moments.tui.app import MomentsApp
from llm_moments.tui.screens.diff import DiffScreen
from llm_moments.tui.screens.outliers import OutliersScreen
from llm_moments.tui.screens.roofline import RooflineScreen

SIZE = (140, 40)
ROOF = {"peak_flops": 1e12, "peak_bytes_per_s": 1e11, "source": "test"}


def with_work(records, roof=ROOF):
    """The fake session's header given work coefficients (1 MFLOP and 2 MB per token) and a roof."""
    header = dict(records[0])
    header["work"] = {"layers": [[1e6, 0.0, 0.0, 2e6, 0.0, 0.0] for _ in header["layers"]]}
    if roof is not None:
        header["roof"] = roof
    return [header] + records[1:]


def app_for(records, **kwargs) -> MomentsApp:
    return MomentsApp(FakeSource(records), clock=lambda: 0.0, **kwargs)


def test_the_table_shows_achieved_flops_and_percent_of_roof():
    async def body():
        app = app_for(with_work(make_session(8, footer=False)))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            view = app.main.query_one("LayerTable").view
            # layer 0: 1 MFLOP per token over a decode step of base ms → FLOP/s = 1e6 / (ms / 1e3)
            assert view.flops_per_s is not None and view.flops_per_s[0] > 0
            assert view.memory_bound.all()              # intensity 0.5 FLOP/B < ridge 10 FLOP/B
            # memory-bound: attainable = intensity × bandwidth = 0.5 × 1e11
            expected_pct = view.flops_per_s[0] / (0.5 * 1e11) * 100
            assert abs(view.roof_pct[0] - expected_pct) < 1e-6

    run(body())


def test_f_opens_the_roofline_with_one_labelled_point_per_top_level_layer():
    async def body():
        app = app_for(with_work(make_session(8, footer=False)))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            await pilot.press("f")
            await pilot.pause()
            assert isinstance(app.screen, RooflineScreen)
            app.screen.show(app.state)
            legend = str(app.screen.query_one("#legend", Static).visual)
            for name, parent, _ in BLOCK_LAYERS:
                if parent is None:
                    assert name[-20:] in legend
            title = str(app.screen.query_one("#title", Static).visual)
            assert "1.00 TFLOP/s" in title and "100 GB/s" in title  # units.si: three significant digits
            plot = str(app.screen.query_one("#plot", Static).visual)
            assert "A" in plot and "╱" in plot             # a point, and the memory roof
            await pilot.press("escape")
            assert not isinstance(app.screen, RooflineScreen)

    run(body())


def test_the_roofline_says_so_when_the_session_has_no_roof():
    async def body():
        app = app_for(with_work(make_session(4, footer=False), roof=None))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            await pilot.press("f")
            await pilot.pause()
            title = str(app.screen.query_one("#title", Static).visual)
            assert "no roof" in title

    run(body())


def test_o_lists_an_outlier_moment_with_its_step_clock_and_throttle_reasons():
    async def body():
        records = make_session(40, footer=False)
        records.append(make_step(40, spike={2: 50.0}, clock_mhz=1410.0, throttle=["hw_thermal"]))
        app = app_for(records)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            await pilot.press("o")
            await pilot.pause()
            assert isinstance(app.screen, OutliersScreen)
            table = app.screen.query_one(DataTable)
            rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
            assert rows, "the planted spike is listed"
            step, _kind, layer, ms, _median, _ratio, clock, throttle = rows[0]
            assert (step, layer, clock, throttle) == ("40", BLOCK_LAYERS[2][0], "1410 MHz", "hw_thermal")
            assert float(ms) == 50.0

    run(body())


def test_d_shows_the_diff_of_two_recordings_and_a_planted_slower_layer(tmp_path):
    a = write_recording(tmp_path / "a.jsonl", make_session(40))
    slow = [dict(r) for r in make_session(40)]
    for r in slow:
        if r["type"] == "step":
            r["layer_ms"] = list(r["layer_ms"])
            r["layer_ms"][3] *= 2
    b = write_recording(tmp_path / "b.jsonl", slow)
    diff = compare(recording.load(a), recording.load(b))

    async def body():
        app = app_for(make_session(4, footer=False), compare=(diff, "a.jsonl", "b.jsonl"))
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot, app)
            await pilot.press("d")
            await pilot.pause()
            assert isinstance(app.screen, DiffScreen)
            table = app.screen.query_one(DataTable)
            rows = {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[-1]) for i in range(table.row_count)}
            assert rows[BLOCK_LAYERS[3][0]] == "slower"
            assert all(v == "noise" for k, v in rows.items() if k != BLOCK_LAYERS[3][0])

    run(body())


def test_d_without_a_comparison_says_how_to_get_one():
    async def body():
        app = app_for(make_session(4, footer=False))
        async with app.run_test(size=SIZE) as pilot:
            seen = capture_notifications(app)
            await settle(pilot, app)
            await pilot.press("d")
            await pilot.pause()
            assert any("--compare" in message for message, _ in seen)

    run(body())


def test_prefills_among_decode_steps_are_not_outliers():
    from llm_moments.tui.state import ViewState

    records = [make_session(1, footer=False)[0]]
    for i in range(60):  # a new prompt every 10 steps: its prefill is 4× a decode step
        records.append(make_step(i, kind="prefill" if i % 10 == 0 else "decode"))
    state = ViewState()
    state.apply(records)
    view = state.layer_view()
    assert state.outlier_log.total == 0
    assert not view.outlier.any()
    state.apply([make_step(60, kind="decode", spike={4: 40.0})])
    view = state.layer_view()
    assert state.outlier_log.total == 1 and view.outlier[4]


def test_no_color_turns_the_screen_monochrome(monkeypatch):
    from textual.filter import Monochrome

    monkeypatch.setenv("NO_COLOR", "1")
    app = app_for(make_session(4, footer=False))
    assert app.no_color and any(isinstance(f, Monochrome) for f in app._filters)
    monkeypatch.delenv("NO_COLOR")
    assert not app_for(make_session(4, footer=False)).no_color
