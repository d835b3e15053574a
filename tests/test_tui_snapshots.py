"""Screenshots of the monitor compared with baselines in tests/__snapshots__/ (pytest-textual-snapshot).

The data is fixed and all of it is there at the first drain; the source is "live" with no note, so
nothing on screen depends on the wall clock (a watch shows idle seconds, a replay its play position).
Update the baselines after a deliberate UI change with:

    .venv/bin/python -m pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest
from tui_fakes import STEP_NS, SUB_LAYERS, FakeSource, make_gpu_sample, make_header, make_step

from llm_moments.tui.app import MomentsApp

SIZES = {"80x24": (80, 24), "160x48": (160, 48)}


def fixed_session() -> list[dict]:
    """24 steps of a 6-block model timed at sub-layer depth, a throttled clock, and an outlier."""
    records = [make_header(layers=SUB_LAYERS, depth="sublayers")]
    for i in range(24):
        spike = {3: 6.0} if i == 23 else None                    # blocks.2 spikes in the newest step
        throttle = ["sw_power_cap"] if i >= 20 else []
        clock = 1980.0 - 15 * (i % 4) - (300.0 if throttle else 0.0)
        records.append(make_step(i, layers=SUB_LAYERS, spike=spike, clock_mhz=clock, throttle=throttle))
        records.append(make_gpu_sample(i * STEP_NS + STEP_NS // 2, sm=clock, throttle=throttle))
    return records


def app_for(theme: str) -> MomentsApp:
    return MomentsApp(FakeSource(fixed_session()), theme=theme, clock=lambda: 0.0)


async def first_frame(pilot) -> None:
    pilot.app.refresh_frame()
    await pilot.pause()


async def open_detail(pilot) -> None:
    await first_frame(pilot)
    await pilot.press("down", "enter")                           # blocks.0, which has sub-layers
    await pilot.pause()
    pilot.app.redraw()
    await pilot.pause()


@pytest.mark.parametrize("theme", ["dark", "light"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("screen", ["main", "detail"])
def test_snapshot(snap_compare, screen, size, theme):
    run_before = first_frame if screen == "main" else open_detail
    assert snap_compare(app_for(theme), terminal_size=SIZES[size], run_before=run_before)
