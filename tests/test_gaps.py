"""Gaps between layers (issue #10, item 4) and the ops breakdown in the UI (item 2)."""

from __future__ import annotations

import math

import numpy as np
from tui_fakes import BLOCK_LAYERS, FakeSource, make_header, make_step, plain, run, settle

from llm_moments.engine.analysis.steptable import StepTable, layer_gaps
from llm_moments.tui.app import MomentsApp
from llm_moments.tui.screens.detail import LayerDetailScreen
from llm_moments.tui.state import ViewState
from llm_moments.tui.widgets.heatmap import Heatmap

NAN = math.nan
# embed, blocks.0 (with two children), blocks.1, norm
LAYERS = [("embed", None, 0.1), ("blocks.0", None, 1.0), ("blocks.0.attn", 1, 0.4), ("blocks.0.mlp", 1, 0.5),
          ("blocks.1", None, 1.0), ("norm", None, 0.1)]
PARENTS = [p for _, p, _ in LAYERS]


def _step(i: int, starts: list, ms: list) -> dict:
    s = make_step(i, layers=LAYERS, layer_ms=ms)
    s["layer_start_ms"] = starts
    return s


# step 0: gaps 0.2 (first layer after the step's start), 0.3, 0.5, 0.05; step 1: blocks.1 did not run
STARTS0, MS0 = [0.2, 0.6, 0.62, 1.1, 2.1, 3.15], [0.1, 1.0, 0.4, 0.5, 1.0, 0.1]
STARTS1, MS1 = [0.0, 0.1, 0.1, 0.5, None, 1.5], [0.1, 1.0, 0.4, 0.5, None, 0.1]


def test_layer_gaps_on_synthetic_steps():
    g = layer_gaps(np.array([STARTS0, STARTS1], dtype=float), np.array([MS0, MS1], dtype=float), PARENTS)
    np.testing.assert_allclose(g[0], [0.2, 0.3, NAN, NAN, 0.5, 0.05], atol=1e-9)
    np.testing.assert_allclose(g[1], [0.0, 0.0, NAN, NAN, NAN, 0.4], atol=1e-9)


def test_layer_gaps_follow_start_order_not_header_order():
    # the head runs before the norm here (header order says otherwise): gaps follow the starts
    g = layer_gaps(np.array([[0.0, 2.0, 1.0]]), np.array([[0.5, 0.5, 0.25]]), [None, None, None])
    np.testing.assert_allclose(g[0], [0.0, 0.75, 0.5])


def test_layer_gaps_without_starts_are_nan():
    g = layer_gaps(np.full((2, 3), np.nan), np.ones((2, 3)), [None, None, None])
    assert np.isnan(g).all()
    assert layer_gaps(np.zeros((0, 3)), np.zeros((0, 3)), [None] * 3).shape == (0, 3)


def test_step_table_gap_ms():
    header = make_header(layers=LAYERS)
    table = StepTable.from_steps(header, [_step(0, STARTS0, MS0), _step(1, STARTS1, MS1)])
    np.testing.assert_allclose(table.gap_ms[:, 4], [0.5, NAN])
    np.testing.assert_allclose(table.gap_ms[:, 5], [0.05, 0.4], atol=1e-9)


def _state() -> ViewState:
    state = ViewState()
    state.apply([make_header(layers=LAYERS), _step(0, STARTS0, MS0), _step(1, STARTS1, MS1)])
    return state


def test_view_state_gap_column_and_heatmap_mode():
    state = _state()
    view = state.layer_view()
    np.testing.assert_allclose(view.gap_ms, [0.1, 0.15, NAN, NAN, 0.5, 0.225], atol=1e-9)
    heat = state.heatmap(10, "gaps")
    assert heat.shape == (6, 2)
    np.testing.assert_allclose(heat[4], [0.5, NAN])
    np.testing.assert_allclose(state.heatmap(10)[1], [1.0, 1.0])  # moments by default


def test_ops_records_reach_the_state():
    state = _state()
    rec = {"type": "ops", "step": 1, "layer": 1, "layer_ms": 3.0,
           "ops": [{"name": "aten.mm", "calls": 4, "ms": 2.0}, {"name": "aten.add", "calls": 2, "ms": 0.5}]}
    state.apply([rec, {"type": "ops", "layer": "x"}])
    assert state.ops == {1: rec}


class _OpsSource(FakeSource):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.ops_calls: list = []

    def start_ops(self, layer: int, steps: int = 8) -> None:
        self.ops_calls.append((layer, steps))


def test_detail_screen_key_starts_ops_and_shows_the_breakdown():
    async def body():
        steps = [make_step(i, layers=BLOCK_LAYERS) for i in range(6)]
        source = _OpsSource([make_header(layers=BLOCK_LAYERS), *steps])
        app = MomentsApp(source, clock=lambda: 0.0)
        async with app.run_test(size=(120, 60)) as pilot:
            await settle(pilot, app)
            await pilot.press("down", "enter")
            await pilot.pause()
            screen = app.screen
            assert isinstance(screen, LayerDetailScreen) and screen.index == 1
            assert not screen.query_one("#ops").display   # hidden until ops mode is asked for
            await pilot.press("b")
            await pilot.pause()
            assert screen.query_one("#ops").display
            assert "waiting for the operator times" in plain(screen.query_one("#ops"))
            assert source.ops_calls == [(1, LayerDetailScreen.OPS_STEPS)]
            usual = np.median([s["layer_ms"][1] for s in steps])
            source.push({"type": "ops", "step": 5, "layer": 1, "layer_ms": round(usual * 4, 5),
                         "ops": [{"name": "aten.mm", "calls": 4, "ms": round(usual * 2, 5)},
                                 {"name": "aten.add", "calls": 2, "ms": round(usual, 5)}]})
            await settle(pilot, app)
            screen.show(app.state)
            await pilot.pause()
            text = plain(screen.query_one("#ops"))
            assert "aten.mm" in text and "aten.add" in text
            assert "50.0%" in text and "25.0%" in text      # share of the layer
            assert "ops mode: this layer runs ~4.0× slower while on" in text

    run(body())


def test_ops_key_in_a_replay_says_it_is_for_live_sessions():
    async def body():
        source = FakeSource([make_header(layers=BLOCK_LAYERS), *[make_step(i) for i in range(3)]], mode="replay")
        app = MomentsApp(source, clock=lambda: 0.0)
        seen: list = []
        async with app.run_test(size=(120, 60)) as pilot:
            await settle(pilot, app)
            original = app.notify
            app.notify = lambda message, *a, **k: (seen.append(str(message)), original(message, *a, **k))
            await pilot.press("down", "enter")
            await pilot.pause()
            await pilot.press("b")
            await pilot.pause()
        assert any("ops mode is for live sessions" in m for m in seen)

    run(body())


def test_heatmap_values_key_toggles_gaps():
    async def body():
        source = FakeSource([make_header(layers=BLOCK_LAYERS), *[make_step(i) for i in range(3)]])
        app = MomentsApp(source, clock=lambda: 0.0)
        async with app.run_test(size=(200, 60)) as pilot:
            await settle(pilot, app)
            maps = list(app.main.query(Heatmap))
            assert maps and all(h.values == "moments" for h in maps)
            await pilot.press("v")
            await pilot.pause()
            assert all(h.values == "gaps" for h in maps)
            assert "gap before each layer" in str(maps[0].border_title)
            await pilot.press("v")
            await pilot.pause()
            assert all(h.values == "moments" for h in maps)

    run(body())
