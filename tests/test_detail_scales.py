"""Detail screen scales that survive one hiccup (issue #10, item 5).

The series from the issue: 2,000 moments of 0.8 ms ± a little noise and one of 80 ms. With min–max
scales the history chart is flat and 1,993 moments share one histogram bin; with robust scales the
histogram has ≥ 10 populated bins, the chart's top stays under 5 ms and the one outlier is counted,
marked (▲) and labelled.
"""

from __future__ import annotations

import numpy as np
import pytest
from tui_fakes import BLOCK_LAYERS, STEP_NS, FakeSource, make_gpu_sample, make_header, make_step, plain, run, settle

from llm_moments.tui.app import MomentsApp
from llm_moments.tui.render import OVER_MARK, chart, chart_scale, robust_histogram
from llm_moments.tui.screens.detail import LayerDetailScreen

N = 2000


def hiccup_series(at: int = 1500) -> np.ndarray:
    rng = np.random.default_rng(0)
    series = np.round(0.8 + rng.normal(0.0, 0.01, N + 1), 5)
    series[at] = 80.0
    return series


def test_the_chart_scale_ignores_one_hiccup():
    scale = chart_scale(hiccup_series())
    assert scale.hi < 5.0 and scale.hi == pytest.approx(0.84, abs=0.03)
    assert scale.over == 1 and scale.over_max == 80.0


def test_the_hiccup_is_marked_at_the_top_of_the_chart():
    series = hiccup_series(at=N - 3)            # inside the newest 60 columns drawn
    scale = chart_scale(series)
    rows = chart(series, 60, 4, hi=scale.hi)
    assert rows[0].count(OVER_MARK) == 1 and rows[0][-4] == OVER_MARK
    # the rest are not flattened: each normal moment reaches the top rows
    assert sum(ch == " " for ch in rows[1]) == 0


def test_the_histogram_spreads_the_moments_over_its_bins():
    h = robust_histogram(hiccup_series(), bins=10)
    assert h.populated >= 10
    assert h.over >= 1 and h.over_max == 80.0 and h.under >= 1
    assert int(h.counts.sum()) + h.under + h.over == N + 1
    assert h.edges[-1] < 5.0 and not h.log


def test_min_max_scales_were_the_problem():
    counts, _ = np.histogram(hiccup_series(), bins=8)     # the old histogram
    assert counts.max() >= 1993


def test_a_wide_spread_gets_log_spaced_bins_and_constant_series_one_bin():
    mixed = np.concatenate([np.full(50, 40.0), np.full(1000, 0.8)]) * np.linspace(0.98, 1.02, 1050)
    h = robust_histogram(mixed, bins=10)
    assert h.log and h.populated >= 2
    flat = robust_histogram(np.full(30, 1.0))
    assert flat.populated == 1 and flat.under == flat.over == 0
    assert chart_scale(np.full(30, 1.0)).over == 0
    assert robust_histogram(np.array([np.nan])).counts.size == 0
    assert chart_scale(np.array([])).hi == 0.0


def test_few_values_are_never_fenced_off():
    assert chart_scale([0.8, 0.8, 6.0]).over == 0


# -- the screen -------------------------------------------------------------------------------------


def hiccup_session() -> list[dict]:
    """2,001 steps; blocks.0 (row 1) holds the hiccup series, the rest their usual moments."""
    series = hiccup_series()
    records = [make_header(layers=BLOCK_LAYERS)]
    for i, v in enumerate(series):
        ms = [base for _, _, base in BLOCK_LAYERS]
        ms[1] = float(v)
        records.append(make_step(i, kind="decode", layer_ms=ms))
        if i % 20 == 0:
            records.append(make_gpu_sample(i * STEP_NS + STEP_NS // 2, sm=1980.0 - (i % 7) * 10,
                                           power_w=300.0 + (i % 13)))
    return records


async def _open_detail(pilot) -> None:
    pilot.app.refresh_frame()
    await pilot.pause()
    await pilot.press("down", "enter")
    await pilot.pause()
    pilot.app.redraw()
    await pilot.pause()


def test_the_detail_screen_shows_the_outlier_without_being_flattened():
    async def body():
        app = MomentsApp(FakeSource(hiccup_session()), clock=lambda: 0.0)
        async with app.run_test(size=(120, 48)) as pilot:
            await settle(pilot, app)
            await _open_detail(pilot)
            screen = app.screen
            assert isinstance(screen, LayerDetailScreen) and screen.index == 1
            history = plain(screen.query_one("#history"))
            assert f"{OVER_MARK} 1 above the scale, up to 80.0" in history
            top = float(history.split(" · 0 to ")[1].split(" ms")[0])
            assert top < 5.0
            histogram = plain(screen.query_one("#histogram"))
            assert f"{OVER_MARK} 1 outlier, up to 80.0" in histogram
            rows = [l for l in histogram.splitlines() if "–" in l]
            assert sum(int(r.split()[-1]) > 0 for r in rows) >= 10
            assert histogram.splitlines()[0].lstrip().startswith("< ")
            # w: the graph at the bottom switches from the SM clock to the power drawn
            assert "SM clock" in screen.query_one("#clockgraph").border_title
            await pilot.press("w")
            await pilot.pause()
            assert "power" in screen.query_one("#clockgraph").border_title
            assert "W" in plain(screen.query_one("#clockgraph"))

    run(body())


def test_snapshot_robust_detail(snap_compare):
    app = MomentsApp(FakeSource(hiccup_session()), clock=lambda: 0.0)
    assert snap_compare(app, terminal_size=(120, 40), run_before=_open_detail)
