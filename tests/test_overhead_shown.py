"""The monitor's own cost (issue #10, item 3): measured at start, recorded, updated, shown.

Fast: the calibration has a ~50 ms budget, the models are the conftest's tiny ones.
"""

from __future__ import annotations

import time

import pytest
from conftest import ids
from tui_fakes import make_header, make_step

from llm_moments.engine.core.overhead import (
    OverheadMeter,
    calibrate_hook_pair,
    cost_line,
    estimate_pct,
    fmt_pct,
    hooks_in_step,
    time_forwards,
)
from llm_moments.engine.core.recording import check_record, load
from llm_moments.engine.session.monitor import Monitor
from llm_moments.tui.state import ViewState
from llm_moments.tui.widgets.header import HeaderBar, overhead_pct, overhead_text
from llm_moments.tui.widgets.status_line import StatusLine


def test_a_hook_pair_is_measured_at_start_within_its_budget():
    t0 = time.perf_counter()
    cal = calibrate_hook_pair("cpu", budget_s=0.05)
    took = time.perf_counter() - t0
    assert cal["hook_pair_us"] is not None and 0 < cal["hook_pair_us"] < 1000
    assert cal["bare_call_us"] > 0 and cal["rounds"] >= 2
    assert took < 1.0   # ~50 ms here; generous for a loaded 2-core machine


def test_calibration_leaves_no_hook_behind_and_never_raises():
    assert calibrate_hook_pair("no-such-device")["hook_pair_us"] is None


def test_the_estimate_is_hooks_times_pair_plus_worker_over_the_step():
    assert estimate_pct(4.0, 100, 200.0, 60.0) == pytest.approx((400 + 200) / 60_000 * 100)
    assert estimate_pct(4.0, 100, None, 40.0) == pytest.approx(1.0)
    assert estimate_pct(None, 100, None, 40.0) is None
    assert estimate_pct(4.0, 100, None, None) is None
    assert [fmt_pct(x) for x in (0.043, 0.7, 3.04, 12.4)] == ["0.04 %", "0.7 %", "3.0 %", "12 %"]


def test_hooks_fired_per_step_count_calls_nested_calls_and_the_root():
    assert hooks_in_step({"layer_calls": [1, 2, 0, 1]}) == 5
    assert hooks_in_step({"layer_calls": [1, 1], "layer_nested_calls": [0, 3]}) == 6


def test_the_meter_measures_hooks_and_worker_cpu_per_step():
    m = OverheadMeter(hook_pair_us=2.0, every_s=5.0)
    assert not m.due(0)                     # nothing to say before a step
    for _ in range(4):
        m.step({"layer_calls": [1] * 9, "wall_ms": 10.0})
    m.worker_cpu(400_000)                   # 400 µs of worker CPU over 4 steps
    assert m.due(1_000)                     # the first record comes early
    rec = m.record(123, now_ns=1_000)
    assert rec["type"] == "overhead" and rec["window"] == "period" and rec["steps"] == 4
    assert rec["hooks_per_step"] == 10 and rec["worker_us_per_step"] == 100
    assert rec["est_pct"] == pytest.approx((2.0 * 10 + 100) / 10_000 * 100)
    m.step({"layer_calls": [1] * 9, "wall_ms": 10.0})
    assert not m.due(2_000) and m.due(1_000 + 5_000_000_000)
    final = m.final(999)
    assert final["window"] == "session" and final["steps"] == 5
    assert check_record(rec, 9) is None     # the reader takes it


def test_time_forwards_times_top_level_calls_only(plain_net):
    with time_forwards(plain_net) as times:
        for _ in range(3):
            plain_net(ids())
    assert len(times) == 3 and times.median_ms() > 0
    assert not plain_net._forward_hooks and not plain_net._forward_pre_hooks


def test_header_says_the_estimate_and_records_say_the_measure(plain_net, tmp_path):
    path = tmp_path / "run.jsonl"
    seen: list[dict] = []
    with Monitor(plain_net, record=path, depth="sublayers", step_ms_hint=5.0, listeners=[seen.append]) as mon:
        for _ in range(6):
            plain_net(ids())
    o = mon.header["overhead"]
    hooked = len(mon.layers)
    assert o["depth"] == "sublayers" and o["hooks_per_step"] == hooked
    assert o["hook_pair_us"] > 0 and o["step_ms"] == 5.0 and o["worker_us_per_step"] is None
    assert o["est_pct"] == pytest.approx(o["hook_pair_us"] * hooked / 5e3 * 100, rel=1e-2)
    types = [r["type"] for r in seen]
    final = [r for r in seen if r["type"] == "overhead" and r["window"] == "session"]
    assert len(final) == 1 and types.index("overhead") < types.index("footer")
    assert types[-2:] == ["overhead", "footer"]
    f = final[0]
    assert f["steps"] == 6 and f["hooks_per_step"] == hooked + 1   # each module once, plus the root
    assert f["worker_us_per_step"] > 0 and f["est_pct"] > 0
    rec = load(path)
    assert not rec.warnings and rec.header["overhead"] == o
    assert [r["window"] for r in rec.others if r["type"] == "overhead"][-1] == "session"


def test_without_a_step_time_the_estimate_waits_for_steps(plain_net):
    with Monitor(plain_net) as mon:
        plain_net(ids())
    assert mon.header["overhead"]["est_pct"] is None and mon.header["overhead"]["step_ms"] is None


def test_the_cost_line_before_a_headless_run():
    line = cost_line({"depth": "leaves", "hooks_per_step": 125, "hook_pair_us": 3.7, "step_ms": 26.6,
                      "step_kind": "decode step", "est_pct": 1.74})
    assert line == ("depth leaves: 125 hooked modules ≈ 1.7 % of a decode step here "
                    "(hook pair 3.7 µs, decode step 26.6 ms)")
    no_step = cost_line({"depth": "blocks", "hooks_per_step": 14, "hook_pair_us": 3.7, "step_ms": None,
                         "est_pct": None})
    assert no_step.startswith("depth blocks: 14 hooked modules ≈ 0.0518 ms per step here")


def test_run_help_gives_the_depths_typical_costs():
    from llm_moments.engine.cli import build_parser

    parser, _ = build_parser("moments")
    run = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "run")[1]
    text = " ".join(run.format_help().split())
    assert "blocks ≈ 0.5 %" in text and "leaves ≈ 2–5 %" in text


# -- shown: header and status line ---------------------------------------------------------------------


def _state(overhead: dict | None, steps: int = 4) -> ViewState:
    header = make_header(device="cpu")
    if overhead is not None:
        header["overhead"] = overhead
    state = ViewState()
    state.apply([header, *(make_step(i, clock_mhz=2400.0) for i in range(steps))])
    return state


def test_header_and_status_line_show_the_cost():
    state = _state({"depth": "blocks", "hook_pair_us": 3.5, "hooks_per_step": 6, "worker_us_per_step": None,
                    "step_ms": 3.0, "est_pct": 0.7})
    assert overhead_text(state) == "monitor ≈ 0.7 % of a step"
    assert "monitor ≈ 0.7 % of a step" in HeaderBar().render_text(state, None).plain
    assert "monitor ≈ 0.7 % of a step" in StatusLine.content(state).plain
    # a measured record replaces the start's estimate
    state.apply([{"type": "overhead", "t_ns": 1, "window": "period", "steps": 4, "hook_pair_us": 3.5,
                  "hooks_per_step": 7, "worker_us_per_step": 300.0, "step_p50_ms": 3.0, "est_pct": 10.8}])
    assert "monitor ≈ 11 % of a step" in StatusLine.content(state).plain


def test_without_a_step_time_the_ui_uses_the_steps_it_has():
    state = _state({"depth": "blocks", "hook_pair_us": 4.0, "hooks_per_step": 6, "worker_us_per_step": None,
                    "step_ms": None, "est_pct": None})
    p50 = state.step_percentiles()[0]
    assert overhead_pct(state) == pytest.approx(4.0 * 6 / (p50 * 1e3) * 100, rel=1e-3)


def test_an_older_recording_without_overhead_shows_nothing():
    state = _state(None)
    assert overhead_text(state) is None
    assert "monitor" not in StatusLine.content(state).plain
    assert "monitor" not in HeaderBar().render_text(state, None).plain
