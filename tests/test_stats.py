"""Statistics against numbers worked out by hand; the rolling window; outlier detection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm_moments.engine.analysis.outliers import OutlierDetector, robust_outliers
from llm_moments.engine.analysis.stats import RollingStats, summarize, summarize_recording
from llm_moments.engine.analysis.steptable import StepTable

NAN = float("nan")
NAMES = ["a", "b", "a.x"]
PARENTS = [None, None, 0]
# 4 steps × 3 layers; layer b did not fire in step 2; a.x is a child of a (not top level)
LAYER_MS = np.array([[1.0, 2.0, 0.5],
                     [3.0, 2.0, 1.5],
                     [5.0, NAN, 2.5],
                     [7.0, 4.0, 3.5]])
WALL = np.array([4.0, 6.0, 8.0, 12.0])
KINDS = np.array(["prefill", "decode", "decode", "decode"])
TOKENS = np.array([10, 2, 2, 2])


@pytest.fixture
def summary():
    return summarize(NAMES, PARENTS, LAYER_MS, LAYER_MS * 1000, WALL, KINDS, TOKENS)


def test_layer_rows_by_hand(summary):
    a, b, ax = summary.layers
    assert [r.name for r in summary.layers] == NAMES
    assert [r.parent for r in summary.layers] == PARENTS
    # a: 1 3 5 7
    assert (a.count, a.mean_ms, a.p50_ms, a.last_ms) == (4, 4.0, 4.0, 7.0)
    assert a.p99_ms == pytest.approx(5 + 0.97 * 2)        # linear between the 3rd and 4th value
    assert a.mean_cycles == pytest.approx(4000.0)
    assert a.share == pytest.approx(16 / 30)              # Σ moments / Σ wall
    # b: 2 2 – 4 (the missing moment is not a zero)
    assert (b.count, b.p50_ms, b.last_ms) == (3, 2.0, 4.0)
    assert b.mean_ms == pytest.approx(8 / 3)
    assert b.p99_ms == pytest.approx(2 + 0.98 * 2)
    assert b.mean_cycles == pytest.approx(8000 / 3)
    assert b.share == pytest.approx(8 / 30)
    # a.x: 0.5 1.5 2.5 3.5
    assert (ax.count, ax.mean_ms, ax.p50_ms, ax.last_ms) == (4, 2.0, 2.0, 3.5)
    assert ax.p99_ms == pytest.approx(2.5 + 0.97)


def test_coverage_counts_top_level_layers_only(summary):
    # covered per step: a + b = 3, 5, 5, 11 → 24 of 30 ms; a.x is inside a and is not added again
    assert summary.coverage == pytest.approx(24 / 30)
    assert summary.unattributed_ms_mean == pytest.approx((1 + 1 + 3 + 1) / 4)
    assert (summary.steps_total, summary.steps_in_window) == (4, 4)


def test_step_rows_by_kind(summary):
    prefill, decode = summary.steps
    assert (prefill.kind, prefill.count, prefill.tokens) == ("prefill", 1, 10)
    assert (prefill.mean_ms, prefill.std_ms, prefill.p50_ms, prefill.p99_ms) == (4.0, 0.0, 4.0, 4.0)
    assert (decode.kind, decode.count, decode.tokens) == ("decode", 3, 6)
    assert decode.mean_ms == pytest.approx(26 / 3)
    assert decode.std_ms == pytest.approx(math.sqrt(((6 - 26 / 3) ** 2 + (8 - 26 / 3) ** 2 + (12 - 26 / 3) ** 2) / 3))
    assert decode.p50_ms == 8.0
    assert decode.p90_ms == pytest.approx(8 + 0.8 * 4)
    assert decode.p99_ms == pytest.approx(8 + 0.98 * 4)


def test_a_layer_that_never_fired(recwarn):
    ms = np.array([[1.0, NAN], [2.0, NAN]])
    s = summarize(["a", "b"], [None, None], ms, ms, np.array([2.0, 3.0]), np.array(["encode"] * 2),
                  np.array([1, 1]))
    b = s.layers[1]
    assert b.count == 0 and b.share == 0.0
    assert all(math.isnan(x) for x in (b.mean_ms, b.p50_ms, b.p99_ms, b.last_ms, b.mean_cycles))
    assert s.layers[0].mean_ms == 1.5
    assert s.coverage == pytest.approx(3 / 5)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # no "mean of empty slice"


def test_no_steps():
    s = summarize(["a"], [None], np.zeros((0, 1)), np.zeros((0, 1)), np.zeros(0), np.array([]), np.zeros(0))
    assert s.layers == [] and s.steps == [] and s.steps_in_window == 0
    assert math.isnan(s.coverage)


def test_summary_of_a_recording_skips_misaligned_steps():
    header = {"layers": [{"name": n, "parent": p} for n, p in zip(NAMES, PARENTS)]}
    steps = [{"kind": k, "tokens": int(t), "wall_ms": float(w),
              "layer_ms": [None if math.isnan(x) else x for x in row],
              "layer_cycles": [None] * 3}
             for k, t, w, row in zip(KINDS, TOKENS, WALL, LAYER_MS)]
    steps.append({"kind": "decode", "tokens": 1, "wall_ms": 99.0, "layer_ms": [1.0], "layer_cycles": [None]})
    s = summarize_recording(header, steps)
    assert s.steps_in_window == 4
    assert s.layers[1].count == 3 and s.layers[1].mean_ms == pytest.approx(8 / 3)
    assert math.isnan(s.layers[0].mean_cycles)  # null cycles: no clock
    assert s.coverage == pytest.approx(24 / 30)


# -- the rolling window -----------------------------------------------------------------------------


def _step(i, kind="decode"):
    return {"kind": kind, "tokens": 1, "wall_ms": float(i) + 1, "t_ns": i,
            "layer_ms": [float(i), None], "layer_cycles": [float(i) * 1000, None], "clock_mhz": 1000.0}


def test_window_keeps_the_newest_steps_in_order():
    stats = RollingStats(["a", "b"], [None, None], window_steps=4)
    stats.extend(_step(i) for i in range(4))
    assert list(stats.arrays()["layer_ms"][:, 0]) == [0, 1, 2, 3]  # exactly full
    stats.extend(_step(i) for i in range(4, 6))
    a = stats.arrays()
    assert list(a["layer_ms"][:, 0]) == [2, 3, 4, 5]  # wrapped: oldest first
    assert list(a["wall_ms"]) == [3, 4, 5, 6]
    assert list(a["t_ns"]) == [2, 3, 4, 5]
    assert np.isnan(a["layer_ms"][:, 1]).all()
    assert (stats.n_steps, stats.steps_seen) == (4, 6)
    assert list(stats.arrays(last=2)["layer_ms"][:, 0]) == [4, 5]
    assert stats.arrays(last=0)["layer_ms"].shape == (0, 2)
    assert list(stats.arrays(last=10)["layer_ms"][:, 0]) == [2, 3, 4, 5]
    stats.extend(_step(i) for i in range(6, 8))  # two full turns
    assert list(stats.arrays()["layer_ms"][:, 0]) == [4, 5, 6, 7]


def test_window_summary_covers_the_window_and_counts_every_step():
    stats = RollingStats(["a", "b"], [None, None], window_steps=3)
    stats.extend([_step(0, "prefill"), *(_step(i) for i in range(1, 5))])
    s = stats.summary()
    assert (s.steps_total, s.steps_in_window) == (5, 3)
    assert s.layers[0].mean_ms == 3.0  # steps 2, 3, 4
    assert s.layers[0].last_ms == 4.0
    assert [r.kind for r in s.steps] == ["decode"]  # the prefill has left the window


# -- outliers ----------------------------------------------------------------------------------------


def test_robust_outliers_finds_a_planted_spike():
    rng = np.random.default_rng(0)
    history = 1.0 + 0.01 * rng.standard_normal((200, 5))
    newest = np.median(history, axis=0).copy()
    newest[3] = 1.5
    assert list(robust_outliers(history, newest)) == [False, False, False, True, False]


def test_robust_outliers_finds_nothing_on_a_steady_series():
    rng = np.random.default_rng(1)
    series = 2.0 + 0.01 * rng.standard_normal((300, 4))
    for t in range(200, 300):
        assert not robust_outliers(series[:t], series[t]).any()


def test_robust_outliers_ignores_missing_layers_and_tiny_excesses():
    history = np.ones((50, 3))
    history[:, 2] = np.nan
    newest = np.array([1.001, np.nan, 5.0])  # +1 µs on a flat series is below the floor
    assert list(robust_outliers(history, newest)) == [False, False, False]


def test_the_detector_needs_history():
    detector = OutlierDetector(["a"])
    flat = {"kind": "decode", "wall_ms": 1.0, "layer_ms": [1.0], "layer_cycles": [None]}
    slow = {"kind": "decode", "wall_ms": 9.0, "layer_ms": [9.0], "layer_cycles": [None]}

    def push(steps):
        table = StepTable(["a"], [None])
        table.extend(steps)
        return detector.push(table)

    assert push([flat] * 10 + [slow]) == []  # 10 steps of history: too few to judge
    found = push([flat] * 20 + [slow])
    assert [(o["layer"], o["ms"]) for o in found] == [("a", 9.0)]
