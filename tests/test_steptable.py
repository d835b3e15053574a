"""Issue #7: one step table under every analysis, one outlier detector, one set of unit formatters."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from tui_fakes import BLOCK_LAYERS, make_session, make_step, write_recording

from llm_moments.engine.analysis import steptable
from llm_moments.engine.analysis.outliers import OutlierDetector, find_outliers
from llm_moments.engine.analysis.report import analyze
from llm_moments.engine.analysis.stats import RollingStats
from llm_moments.engine.analysis.steptable import StepTable
from llm_moments.engine.core.recording import load
from llm_moments.engine.core.work import step_work
from llm_moments.engine.output import units
from llm_moments.engine.output.markdown import render_markdown
from llm_moments.tui.state import ViewState

HEADER = {"type": "header", "layers": [{"name": "a", "parent": None}, {"name": "b", "parent": None},
                                       {"name": "a.x", "parent": 0}],
          "work": {"layers": [[2.0, 0.5, 100.0, 4.0, 1.0, 0.0], [3.0, 0.0, 10.0, 1.0, 0.0, 1.0],
                              [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]}}


def step(i, kind="decode", ms=(1.0, 2.0, 0.5), **extra):
    return {"type": "step", "index": i, "kind": kind, "t_ns": i * 1000, "wall_ms": sum(m or 0 for m in ms[:2]) + 0.1,
            "tokens": 2, "batch": 2, "seq_len": 1, "past_len": 5 + i, "layer_ms": list(ms),
            "layer_cycles": [m * 1e3 if m is not None else None for m in ms], "clock_mhz": 1000.0, **extra}


# -- the step table ------------------------------------------------------------------------------------


def test_values_and_the_one_none_to_nan_conversion():
    steps = [step(0, "prefill", seq_len=4, tokens=8, past_len=0), step(1, ms=(1.5, None, None)),
             step(2, clock_mhz=None, throttle_reasons=["hw_thermal"], hooks_fired=False)]
    t = StepTable.from_steps(HEADER, steps)
    assert len(t) == 3 and t.names == ["a", "b", "a.x"] and list(t.top_level) == [True, True, False]
    np.testing.assert_array_equal(t.ms, [[1.0, 2.0, 0.5], [1.5, np.nan, np.nan], [1.0, 2.0, 0.5]])
    np.testing.assert_array_equal(t.cycles[1], [1500.0, np.nan, np.nan])
    assert list(t.index) == [0, 1, 2] and list(t.kind) == ["prefill", "decode", "decode"]
    assert list(t.tokens) == [8, 2, 2] and list(t.past_len) == [0, 6, 7] and list(t.t_ns) == [0, 1000, 2000]
    assert t.clock_mhz[0] == 1000.0 and math.isnan(t.clock_mhz[2])
    assert list(t.hooks_fired) == [True, True, False] and t.throttle[2] == ("hw_thermal",)
    assert np.isnan(t.start_ms).all()


def test_layer_calls_are_read_and_unknown_when_absent():
    t = StepTable.from_steps(HEADER, [step(0, layer_calls=[1, 2, None]), step(1)])
    np.testing.assert_array_equal(t.calls, [[1, 2, np.nan], [np.nan] * 3])  # an older file: NaN, not 0


def test_mismatched_records_are_dropped_and_counted():
    t = StepTable.from_steps(HEADER, [step(0), {"type": "step", "layer_ms": [1.0]}, step(2)])
    assert len(t) == 2 and t.dropped == 1 and list(t.index) == [0, 2]


def test_work_matches_step_work_record_by_record():
    steps = [step(0, "prefill", seq_len=4, tokens=8, past_len=0), step(1), {**step(2), "seq_len": None},
             {**step(3), "batch": None, "tokens": None}]
    t = StepTable.from_steps(HEADER, steps)
    flops, moved = t.work()
    for i, s in enumerate(steps):
        f, b = step_work(t.coeffs, s)
        np.testing.assert_allclose(flops[i], f)
        np.testing.assert_allclose(moved[i], b)
    assert StepTable.from_steps({"layers": HEADER["layers"]}, steps).work() is None


def test_appending_in_chunks_equals_one_go(monkeypatch):
    steps = [step(i, ms=(1.0 + i, 2.0, None if i % 3 else 0.5)) for i in range(50)]
    whole = StepTable.from_steps(HEADER, steps)
    monkeypatch.setattr(steptable, "CHUNK", 7)
    chunked = StepTable.for_header(HEADER, capacity=1)
    for lo in range(0, 50, 11):
        chunked.extend(steps[lo:lo + 11])
    for name in ("ms", "cycles", "calls", "index", "kind", "wall_ms", "clock_mhz"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))


def test_the_ring_keeps_the_newest_steps_in_order():
    ring = StepTable.for_header(HEADER, capacity=4, ring=True)
    ring.extend(step(i) for i in range(3))
    ring.extend_table(StepTable.from_steps(HEADER, [step(i) for i in range(3, 10)]))
    assert len(ring) == 4 and ring.steps_seen == 10 and list(ring.index) == [6, 7, 8, 9]
    assert list(ring.tail(2).index) == [8, 9] and list(ring.of_kind("decode").index) == [6, 7, 8, 9]
    stats = RollingStats(["a", "b", "a.x"], [None, None, 0], window_steps=4)
    stats.extend(step(i) for i in range(10))
    assert list(stats.table().index) == [6, 7, 8, 9] and stats.arrays(last=2)["layer_ms"].shape == (2, 3)


# -- one outlier detector -------------------------------------------------------------------------------


PLANTED = {(30, 2), (45, 4), (77, 1), (120, 3), (121, 3), (200, 0), (333, 5)}


def planted_session(n=400):
    records = make_session(n, footer=True)
    for r in records:
        if r.get("type") == "step":
            r["kind"] = "prefill" if r["index"] % 25 == 0 else "decode"
            r["layer_ms"] = [x * (4 if r["kind"] == "prefill" else 1) for x in r["layer_ms"]]
            for i, j in PLANTED:
                if r["index"] == i:
                    r["layer_ms"][j] *= 6
                    r["clock_mhz"], r["throttle_reasons"] = 900.0, ["sw_thermal"]
    return records


def test_the_report_and_the_ui_list_the_same_outliers(tmp_path):
    records = planted_session()
    rec = load(write_recording(tmp_path / "planted.jsonl", records))
    report = analyze(rec, max_outliers=1000)
    # step 200 is the 9th prefill: fewer than 16 prefills before it, too few to judge it by
    assert {(o["step"], o["layer_index"]) for o in report.outliers} == PLANTED - {(200, 0)}
    assert all(o["clock_mhz"] == 900.0 and o["throttle_reasons"] == ["sw_thermal"] for o in report.outliers)
    chronological = sorted(report.outliers, key=lambda o: (o["step"], o["layer_index"]))
    assert chronological == find_outliers(rec.header, rec.steps)
    rng = random.Random(7)
    for trial in range(3):  # the UI takes the same steps in batches of any size: the same list
        state, i = ViewState(), 0
        while i < len(records):
            n = rng.choice([1, 2, 5, 17, 64, 300]) if trial else len(records)
            state.apply(records[i:i + n])
            state.layer_view()
            i += n
        assert list(state.outlier_log.entries) == chronological
        assert state.outlier_log.total == report.outliers_total
    md = render_markdown(rec)
    listed = [l for l in md.split("## Outlier moments")[1].splitlines() if l.startswith("| ") and "`" in l]
    assert len(listed) == min(20, len(chronological))


def test_the_tables_mark_is_the_detectors_verdict_on_the_newest_step():
    records = make_session(40, footer=False)
    state = ViewState()
    state.apply(records)
    assert not state.layer_view().outlier.any()
    state.apply([make_step(40, spike={3: 40.0})])
    view = state.layer_view()
    assert list(np.flatnonzero(view.outlier)) == [3]
    assert state.outlier_log.entries[-1]["layer"] == BLOCK_LAYERS[3][0]


def test_a_rare_kind_is_judged_against_its_own_history_however_far_back():
    """Prefills every 50 steps: their reference lies far outside any window of recent steps."""
    det = OutlierDetector(["a"])
    found = []
    for i in range(2000):
        kind = "prefill" if i % 50 == 0 else "decode"
        ms = 4.0 if kind == "prefill" else 1.0
        if i == 1900:
            ms = 20.0
        t = StepTable(["a"], [None])
        t.append({"index": i, "kind": kind, "wall_ms": ms, "layer_ms": [ms * (1 + 0.001 * (i % 7))]})
        found += det.push(t)
    assert [(o["step"], o["kind"]) for o in found] == [(1900, "prefill")]


# -- one set of formatters ------------------------------------------------------------------------------


def test_unit_formatters():
    assert [units.fmt_ms(x) for x in (123.456, 1.23456, 0.012345, None, math.nan, math.inf)] == \
        ["123.5", "1.235", "0.0123", "—", "—", "—"]
    assert [units.fmt3(x) for x in (1234.5, 12.345, 1.2345, 0.012345, 0.0, None)] == \
        ["1234", "12.3", "1.23", "0.0123", "0", "—"]
    assert [units.fmt_cycles(x) for x in (2.5e9, 1_234_567, 45_600, 999, None)] == \
        ["2.50 G", "1.23 M", "45.60 k", "999", "n/a"]
    assert (units.fmt_mhz(1410.0), units.fmt_mhz(None), units.na(54.0, "{:.0f}", " °C")) == ("1410 MHz", "n/a", "54 °C")
    assert (units.si(2e10, "FLOP/s"), units.si(8e9, "B/s"), units.si(1e12, "FLOP/s"), units.si(None)) == \
        ("20.0 GFLOP/s", "8.00 GB/s", "1.00 TFLOP/s", "—")
    assert (units.pct(0.1234), units.pct(None), units.signed_pct(-12.5), units.signed_pct(3.0)) == \
        ("12.3", "—", "-12.5%", "+3.0%")
    assert units.params(123_456) == "123,456 params" and units.params(1.5e9) == "1.50 B params"
    assert units.bar(0.5, 4) == "██  " and units.bar(None, 3) == "   " and units.share_bar(math.nan) == ""
    assert units.fmt_scaled(2.5e9, 1e9) == "2.50"


def test_the_ui_and_the_cli_share_the_formatters():
    from llm_moments.engine.output import text
    from llm_moments.tui import render

    for name in ("fmt_ms", "fmt3", "fmt_cycles", "fmt_mhz", "bar", "si", "na"):
        assert getattr(render, name) is getattr(units, name)
    assert text.fmt_ms is units.fmt_ms and not hasattr(text, "bar")


@pytest.mark.parametrize("module", ["llm_moments.engine.analysis.steptable", "llm_moments.engine.analysis.outliers",
                                    "llm_moments.engine.analysis.roofline", "llm_moments.engine.analysis.report"])
def test_the_analysis_layer_imports_no_output_and_no_torch(module):
    import subprocess
    import sys

    code = (f"import sys, {module}; from llm_moments.engine.analysis.steptable import StepTable; "
            "StepTable.from_steps({'layers': [{'name': 'a'}], 'work': {'layers': [[1, 0, 0, 0, 0, 0]]}}, "
            "[{'layer_ms': [1.0], 'wall_ms': 1.0}]).work(); bad = [m for m in sys.modules if m.startswith(('torch', "
            f"'llm_moments.engine.output', 'llm_moments.engine.session', 'textual'))]; print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], check=True)
