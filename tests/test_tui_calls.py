"""Calls per step in the layer detail screen (issue #7): ``layer_calls`` (how many times each layer ran in
a step; absent in older recordings) and ``layer_nested_calls`` (calls that ran inside another layer's
moment, their time counted there)."""

from __future__ import annotations

from tui_fakes import SUB_LAYERS, FakeSource, make_header, make_step, plain, run, settle

from llm_moments.tui.app import MomentsApp
from llm_moments.tui.screens.detail import LayerDetailScreen
from llm_moments.tui.state import ViewState

ATTN, MLP = 6, 7  # blocks.0.attn, blocks.0.mlp in SUB_LAYERS


def session(calls: bool = True, nested: bool = True, n: int = 9) -> list[dict]:
    header = make_header(layers=SUB_LAYERS, depth="sublayers")
    if nested:
        header["attribution"] = "enclosing"
    out = [header]
    for i in range(n):
        step = make_step(i, layers=SUB_LAYERS)
        if calls:
            c = [1] * len(SUB_LAYERS)
            c[ATTN] = 3 if i == n - 1 else 2          # typical 2, the newest step 3
            c[5] = 0 if i == n - 1 else 1             # norm did not run in the newest step
            step["layer_calls"] = c
        if nested and i % 3 == 0:                   # the MLP ran inside the attention in some steps
            nc = [0] * len(SUB_LAYERS)
            nc[MLP] = 2 if i == 6 else 1
            step["layer_nested_calls"] = nc
        out.append(step)
    return out


def test_layer_detail_counts_calls_and_nested_calls():
    state = ViewState()
    state.apply(session())
    d = state.layer_detail(ATTN)
    assert (d["calls_last"], d["calls_median"], d["calls_steps"]) == (3.0, 2.0, 9)
    assert d["nested_calls"] == 0
    d = state.layer_detail(5)
    assert d["calls_last"] == 0.0 and d["calls_median"] == 1.0
    d = state.layer_detail(MLP)
    assert d["nested_calls"] == 4 and d["nested_steps"] == 3 and d["nested_last"] == 2   # steps 0, 3, 6
    assert d["attribution"] == "enclosing"
    state.reset()                                     # a replay seeking back forgets them
    assert not state.nested_calls.any() and not state.nested_steps.any()


def test_older_recordings_say_calls_are_not_recorded():
    state = ViewState()
    state.apply(session(calls=False, nested=False))
    d = state.layer_detail(ATTN)
    assert d["calls_steps"] == 0 and d["nested_calls"] == 0


def test_detail_screen_shows_calls_and_where_nested_time_went():
    async def body(records, index):
        app = MomentsApp(FakeSource(records), clock=lambda: 0.0)
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(pilot, app)
            await app.push_screen(LayerDetailScreen(index))
            await pilot.pause()
            return plain(app.screen.query_one("#numbers"))

    text = run(body(session(), ATTN))
    assert "calls 3 in the newest step · typical 2 per step (median of 9)" in text
    assert "runs inside" not in text
    text = run(body(session(), MLP))
    assert "calls 1 in the newest step" in text
    assert "runs inside other layers (2× in the newest such step, in 3 steps); its time is counted there" in text
    assert "a call counts to the layer open when it runs" in text
    text = run(body(session(calls=False, nested=False), ATTN))
    assert "calls not recorded (older file)" in text
