"""The merged view of several ranks (``w``): driven by a fake source of rank-tagged records.

The scenario: tensor-parallel ranks whose moments look alike because a blocking collective ends
together on every rank — the fast ranks' moments hold the wait (``comm_ms``). Rank 1 computes
``blocks.2`` slowly; ranks 0 and 2 wait for it, and their moments come out a little *longer* than
rank 1's (the wait plus the collective's own cost), so a rule by moment would blame a waiting rank.
The view must name rank 1.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
from tui_fakes import BLOCK_LAYERS, FakeSource, make_cpu_sample, make_header, make_step, write_recording

from llm_moments.tui.app import MomentsApp
from llm_moments.tui.rank_state import nanmedian0
from llm_moments.tui.screens.main import MainScreen
from llm_moments.tui.screens.ranks import RanksScreen
from llm_moments.tui.state import ViewState
from llm_moments.tui.widgets.header import HeaderBar
from llm_moments.tui.widgets.ranks_heatmap import RankHeatmap
from llm_moments.tui.widgets.ranks_summary import RankSummary
from llm_moments.tui.widgets.ranks_table import RankTable

SIZE = (160, 48)
SLOW_LAYER = 3                     # blocks.2
CULPRIT = 1
HOSTILE = "evil\x1b[31mhost\x07\x1b]52;c;cGF3bmVk\x07"


def rank_records(world: int = 3, steps: int = 12, hostile_rank: int = 2) -> list[dict]:
    out = []
    for r in range(world):
        h = make_header(device="cpu")
        host = HOSTILE if r == hostile_rank else "node-a"
        h["dist"] = {"rank": r, "local_rank": r, "world_size": world, "host": host,
                     "backend": "gloo", "session": "s1", "layout": {"tp": world, "pp": 1, "dp": 1, "tp_rank": r}}
        out.append({**h, "rank": r})
    for i in range(steps):
        for r in range(world):
            step = make_step(i, clock_mhz=2400.0)
            ms = list(step["layer_ms"])
            comm = [None] * len(ms)
            compute_slow = 3.0                      # rank 1's compute of blocks.2
            if r == CULPRIT:
                ms[SLOW_LAYER] = compute_slow + 0.1     # its own compute + a short collective
                comm[SLOW_LAYER] = 0.1
            else:
                ms[SLOW_LAYER] = compute_slow + 0.3     # a fast compute (0.5) + the wait (2.8)
                comm[SLOW_LAYER] = 2.8
            step.update(layer_ms=ms, comm_ms=comm, rank=r)
            out.append(step)
            out.append({**make_cpu_sample(step["t_ns"] + 1, util=50.0 + r), "rank": r})
    return out


def test_state_culprit_is_the_compute_slow_rank_not_the_waiting_one():
    state = ViewState(primary_rank=0)
    state.apply(rank_records())
    view = state.ranks.view()
    assert view.ranks == [0, 1, 2]
    assert int(view.culprit[SLOW_LAYER]) == CULPRIT
    assert int(np.nanargmax(view.p50_ms[:, SLOW_LAYER])) != CULPRIT   # by moment, a waiting rank looks slowest
    assert np.isclose(view.skew_ms[SLOW_LAYER], 0.2)
    # the primary rank feeds the usual screens; the others only the merged view
    assert state.steps_total == 12 and view.steps == [12, 12, 12]
    assert state.header["dist"]["rank"] == 0


def test_nanmedian0_matches_numpy():
    rng = np.random.default_rng(1)
    a = rng.random((9, 7))
    a[rng.random(a.shape) < 0.3] = np.nan
    a[:, 2] = np.nan
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = np.nanmedian(a, axis=0)
    np.testing.assert_allclose(nanmedian0(a), want, equal_nan=True)


def _strip_text(widget, y: int) -> str:
    return "".join(seg.text for seg in widget.render_line(y))


def test_pilot_merged_view_shows_the_culprit_heatmap_and_inert_host_names():
    async def body():
        source = FakeSource(rank_records(), mode="live")
        source.primary_rank = 0
        app = MomentsApp(source)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.3)
            assert isinstance(app.screen, MainScreen)
            head = app.screen.query_one(HeaderBar).render_text(app.state, None).plain
            assert "rank 0 of 3 (w: all ranks)" in head
            await pilot.press("w")
            await pilot.pause(0.3)
            screen = app.screen
            assert isinstance(screen, RanksScreen)
            table = screen.query_one(RankTable)
            lines = [_strip_text(table, y) for y in range(len(BLOCK_LAYERS) + 1)]
            assert "rank 0" in lines[0] and "rank 2" in lines[0] and "culprit" in lines[0]
            row = lines[1 + SLOW_LAYER]
            assert row.startswith("blocks.2") and row.rstrip().endswith("rank 1")
            assert row.count("*") == 1
            summary = RankSummary.render_text(app.state.ranks.view()).plain
            assert "3 of 3 ranks" in summary and "(worst)" in summary
            assert "\x1b" not in summary and "\x07" not in summary   # the hostile host name is inert
            assert "evil\\x1b[31mhos" in summary
            svg = app.export_screenshot()
            assert "\x1b" not in svg and "\x07" not in svg
            # l: latest moments instead of p50
            await pilot.press("l")
            await pilot.pause(0.1)
            assert "latest" in _strip_text(table, 0)
            # m: the layers × ranks heatmap in place of the table
            await pilot.press("m")
            await pilot.pause(0.3)
            heat = screen.query_one(RankHeatmap)
            assert heat.display and not table.display
            assert heat.levels.shape == (len(BLOCK_LAYERS), 3)
            hot = heat.levels[SLOW_LAYER]
            assert int(np.argmax(hot)) == CULPRIT and hot[CULPRIT] == hot.max() > hot.min()
            first = _strip_text(heat, 0)
            assert "layer" in first and "0" in first and "2" in first
            assert _strip_text(heat, 1 + SLOW_LAYER).startswith("blocks.2")
            await pilot.press("escape")
            await pilot.pause(0.1)
            assert isinstance(app.screen, MainScreen)
    asyncio.run(body())


def test_a_dead_rank_is_said_in_the_status_line():
    state = ViewState(primary_rank=0)
    state.apply(rank_records(steps=2))
    died = "rank 1 died: killed by SIGKILL; stopping ranks 0, 2"
    state.apply([{"type": "error", "rank": 1, "died": True, "message": died},
                 {"type": "error", "rank": 0, "message": "RuntimeError: Connection closed by peer"}])
    assert state.error.startswith("rank 1 died")


def test_one_rank_only_says_so_on_w():
    async def body():
        app = MomentsApp(FakeSource([make_header(device="cpu"), make_step(0)], mode="live"))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.2)
            await pilot.press("w")
            await pilot.pause(0.1)
            assert isinstance(app.screen, MainScreen)
    asyncio.run(body())


def test_replay_and_watch_of_rank_files_show_every_rank(tmp_path):
    from llm_moments.engine.core.rankfiles import find_ranks
    from llm_moments.tui.rank_sources import RankReplaySource, RankWatchSource

    recs = rank_records(world=2, steps=6, hostile_rank=1)
    for r in (0, 1):
        mine = [{k: v for k, v in x.items() if k != "rank"} for x in recs if x.get("rank") == r]
        mine.append({"type": "footer", "t_ns": 10**9, "steps": 6, "reason": "completed"})
        write_recording(tmp_path / f"run.rank{r}.jsonl", mine)
    for name in ("run.jsonl", "run.rank1.jsonl"):
        rs = find_ranks(tmp_path / name)
        assert rs is not None and rs.ranks == [0, 1]
        replay = RankReplaySource(rs, speed=1000)
        replay.start()
        replay.seek_to_step(6)
        state = ViewState(mode="replay", primary_rank=replay.primary_rank)
        state.apply(replay.drain())
        assert state.ranks.view().steps == [6, 6] and state.steps_total == 6
        assert "2 ranks" in replay.note()
    watch = RankWatchSource(find_ranks(tmp_path / "run.jsonl"), poll_s=0.05)
    watch.start()
    try:
        state = ViewState(mode="watch", primary_rank=watch.primary_rank)
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (state.ranks is None or state.ranks.view().steps != [6, 6]):
            state.apply(watch.drain())
            time.sleep(0.05)
        assert state.ranks.view().steps == [6, 6]
        assert json.dumps(state.ranks.view().hosts)   # names kept as data; drawn through visible()
    finally:
        watch.stop()
