"""The live table's caches and shortcuts (issue #11: 500 rows at 12 frames/s) give exactly the numbers
of the plain computation they replace: the window read from its newest rows, percentiles from one
sort, per-step work and gaps kept as the steps arrive, the layer view held until a step or the sort
changes. Checked after many steps fed in batches of every size, after the window wrapped, with
layers that ran in some steps only and one that never ran."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest

from llm_moments.engine.analysis.outliers import OutlierDetector
from llm_moments.engine.analysis.roofline import Roof, layer_work
from llm_moments.engine.analysis.stats import (
    RollingStats,
    RowRing,
    column_percentiles,
    layer_arrays,
)
from llm_moments.engine.analysis.steptable import StepTable, layer_gaps
from llm_moments.tui.state import HISTORY_STEPS, STATS_WINDOW_STEPS, ViewState

N_LAYERS = 13
SOMETIMES = (2, 7)     # sub-layers that run in every third step only (NaN in the others)
NEVER = 11             # a sub-layer that never runs
PARENTS = [None if j % 4 == 0 else j - j % 4 for j in range(N_LAYERS)]
NAMES = [f"blocks.{j // 4}" if j % 4 == 0 else f"blocks.{j // 4}.part{j % 4}" for j in range(N_LAYERS)]
TOP = np.array([p is None for p in PARENTS])
BATCH_SIZES = [1, 2, 5, 17, 64, 300]


def header(work: bool = True) -> dict:
    h = {"type": "header", "schema": "moments/1", "model": {"name": "m"}, "device": {"kind": "cuda"},
         "clock": {"source": "nvml", "sm_clock_max_mhz": 2000},
         "layers": [{"name": n, "parent": p} for n, p in zip(NAMES, PARENTS)]}
    if work:
        h["work"] = {"layers": [[1e6 * (j + 1), 512.0 if j % 4 == 1 else 0.0, 3e6, 2e4, 256.0 if j % 4 == 1 else 0.0,
                                 0.0, -1.0, 0.0 if j % 4 == 1 else -1.0] for j in range(N_LAYERS)]}
        h["roof"] = {"peak_flops": 1e14, "peak_bytes_per_s": 2e12, "source": "test"}
    return h


def step(i: int, rng: np.random.Generator) -> dict:
    """A step with jittered moments, starts in order (gaps), prefills now and then, a varying clock."""
    prefill = i % 97 == 0
    ms = rng.uniform(0.05, 3.0, N_LAYERS) * (8.0 if prefill else 1.0)
    ms[rng.random(N_LAYERS) < 0.01] *= 20                       # outliers now and then
    ran = np.ones(N_LAYERS, dtype=bool)
    ran[NEVER] = False
    if i % 3:
        ran[list(SOMETIMES)] = False
    starts = np.cumsum(np.where(TOP, ms + rng.uniform(0, 0.2, N_LAYERS), 0.0)) - ms

    def row(x):
        return [float(v) if r else None for v, r in zip(x, ran)]

    seq = 64 if prefill else 1
    return {"type": "step", "index": i, "kind": "prefill" if prefill else "decode", "t_ns": i * 10_000_000,
            "wall_ms": float(ms[TOP].sum() * 1.05), "tokens": seq, "batch": 1,
            "seq_len": seq, "past_len": i % 500, "layer_ms": row(ms), "layer_cycles": row(ms * 1.9e6),
            "layer_start_ms": row(starts), "layer_calls": [int(r) for r in ran],
            "clock_mhz": float(1900 + i % 50) if i % 11 else None, "throttle_reasons": []}


def steps(n: int, seed: int = 0, start: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [step(i, rng) for i in range(start, start + n)]


def fed(records: list[dict], seed: int = 1, view_every: bool = True) -> ViewState:
    """A state fed the records in batches of random sizes, asking for the view after each, as frames do."""
    state, rnd, i = ViewState(), random.Random(seed), 0
    while i < len(records):
        n = rnd.choice(BATCH_SIZES)
        state.apply(records[i:i + n])
        if view_every:
            state.layer_view()
        i += n
    return state


# -- the reference: the plain computation, as layer_view made it before the caches ---------------------
def plain_view(state: ViewState, spark_steps: int = 16) -> dict:
    stats = state.stats
    full = {f: stats.window.column(c) for f, c in (("layer_ms", "ms"), ("layer_cycles", "cycles"),
                                                  ("wall_ms", "wall_ms"), ("start_ms", "start_ms"))}
    a = {f: x[max(len(x) - STATS_WINDOW_STEPS, 0):] for f, x in full.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        la = plain_layer_arrays(a["layer_ms"], a["layer_cycles"], a["wall_ms"])
    table = stats.window.take(slice(max(stats.n_steps - STATS_WINDOW_STEPS, 0), None))
    placed = layer_work(table, Roof.of(state.header)).placed
    g = layer_gaps(a["start_ms"], a["layer_ms"], stats.parents)
    ok = np.isfinite(g)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(ok.any(axis=0), np.where(ok, g, 0).sum(axis=0) / ok.sum(axis=0), np.nan)
    return {**la, "recent_ms": a["layer_ms"][-spark_steps:].T, "placed": placed, "gap_ms": gap}


def plain_layer_arrays(ms: np.ndarray, cycles: np.ndarray, wall: np.ndarray) -> dict:
    """layer_arrays as it was: np.percentile / np.nanpercentile straight on the window."""
    missing = np.isnan(ms)
    holes = missing.any(axis=0)
    p50, p99 = np.empty(ms.shape[1]), np.empty(ms.shape[1])
    p50[~holes], p99[~holes] = np.percentile(ms[:, ~holes], [50, 99], axis=0)
    p50[holes], p99[holes] = np.nanpercentile(ms[:, holes], [50, 99], axis=0)
    newest = len(ms) - 1 - np.argmax(~missing[::-1], axis=0)
    counts = len(ms) - missing.sum(axis=0)
    return {"count": counts, "last_ms": np.where(counts > 0, ms[newest, np.arange(ms.shape[1])], np.nan),
            "mean_ms": np.nanmean(ms, axis=0), "p50_ms": p50, "p99_ms": p99,
            "mean_cycles": np.nanmean(cycles, axis=0), "share": np.nansum(ms, axis=0) / np.nansum(wall)}


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Bit for bit, NaN where NaN."""
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), strict=True)


def assert_view_is_plain(state: ViewState) -> None:
    v, want = state.layer_view(), plain_view(state)
    for field, key in (("last_ms", "last_ms"), ("mean_ms", "mean_ms"), ("p50_ms", "p50_ms"), ("p99_ms", "p99_ms"),
                       ("cycles", "mean_cycles"), ("share", "share"), ("recent_ms", "recent_ms"),
                       ("gap_ms", "gap_ms")):
        assert_same(getattr(v, field), want[key])
    assert want["placed"] is not None
    assert_same(v.flops_per_s, want["placed"]["flops_per_s"])
    assert_same(v.roof_pct, want["placed"]["roof_pct"])
    assert_same(v.memory_bound, want["placed"]["memory_bound"])
    for key, arr in state.work.result().placed.items():   # the roofline screen's numbers too
        assert_same(arr, want["placed"][key])


# -- percentiles from one sort -----------------------------------------------------------------------
@pytest.mark.parametrize("rows", [1, 2, 3, 17, 100, 256, 257])
def test_column_percentiles_are_numpys_numbers(rows):
    rng = np.random.default_rng(rows)
    x = rng.lognormal(0, 1, (rows, 40))
    x[:, 5] = 1.25                                        # ties
    x[rng.random((rows, 40)) < 0.2] = np.nan              # holes everywhere: counts of every size
    x[:, 3] = np.nan                                      # a layer that never ran
    x[:, 9] = rng.lognormal(0, 1, rows)                   # and one without holes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanpercentile(x, [0, 1, 25, 50, 90, 99, 99.9, 100], axis=0)
    assert_same(column_percentiles(x, (0, 1, 25, 50, 90, 99, 99.9, 100)), want)
    full = rng.lognormal(0, 1, (rows, 40))
    assert_same(column_percentiles(full, (50, 99)), np.percentile(full, [50, 99], axis=0))
    assert_same(column_percentiles(-full, [37.5]), np.percentile(-full, [37.5], axis=0))
    before = x.copy()
    column_percentiles(x, (50,))
    assert_same(x, before)


def test_column_percentiles_of_no_rows_are_nan():
    assert np.isnan(column_percentiles(np.zeros((0, 4)), (50, 99))).all()
    assert column_percentiles(np.zeros((0, 4)), (50, 99)).shape == (2, 4)


def test_layer_arrays_match_the_plain_computation_with_holes():
    rng = np.random.default_rng(3)
    ms = rng.uniform(0.1, 2.0, (256, 30))
    ms[rng.random(ms.shape) < 0.1] = np.nan
    ms[:, 4] = np.nan
    cycles, wall = ms * 1.5e6, rng.uniform(20, 30, 256)
    got = layer_arrays(ms, cycles, wall)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = plain_layer_arrays(ms, cycles, wall)
    for key in want:
        assert_same(got[key], want[key])


# -- the window read from its newest rows --------------------------------------------------------------
@pytest.mark.parametrize("total", [0, 5, 64, 65, 128, 300, 1000])
def test_newest_rows_and_tables_equal_the_ordered_window(total):
    stats = RollingStats(NAMES, PARENTS, 64, coeffs=None)
    records, rnd, i = steps(total), random.Random(total), 0
    while i < total:   # batches of every size, some larger than the ring itself
        n = rnd.choice([1, 3, 50, 70])
        stats.extend(records[i:i + n])
        i += n
    assert stats.n_steps == min(total, 64)
    for last in (None, 0, 1, 17, 63, 64, 100, -3):
        lo = stats.n_steps if last is not None and last <= 0 else max(stats.n_steps - (last or stats.n_steps), 0)
        a = stats.arrays(last=last)
        for f in RollingStats.FIELDS:
            want = stats.window.column(RollingStats._COLUMN.get(f, f))[lo:]
            assert_same(a[f], want)
        t = stats.table(last=last)
        ref = stats.window.take(slice(lo, None))
        assert len(t) == len(ref) == stats.n_steps - lo
        for name in stats.window._cols:
            assert_same(t.column(name), ref.column(name))


def test_arrays_are_copies_the_caller_may_change():
    stats = RollingStats(NAMES, PARENTS, 64)
    stats.extend(steps(40))           # not wrapped: the newest rows are one piece of the ring
    a = stats.arrays(last=10, fields=("layer_ms",))["layer_ms"]
    a[:] = -1.0
    assert (stats.arrays(last=10, fields=("layer_ms",))["layer_ms"] != -1.0).any()


def test_row_ring_gives_the_newest_rows_in_order():
    ring, pushed, rnd = RowRing(50, 3), [], random.Random(5)
    rng = np.random.default_rng(5)
    for _ in range(60):
        rows = rng.normal(size=(rnd.choice([0, 1, 7, 49, 50, 51, 120]), 3))
        ring.push(rows)
        pushed.append(rows)
        every = np.concatenate(pushed)
        for n in (0, 1, 13, 50, 80):
            assert_same(ring.newest(n), every[max(len(every) - min(n, 50), 0):])
    assert ring.seen == len(np.concatenate(pushed))


# -- the window's statistics, held until a step arrives -----------------------------------------------
def test_window_layer_arrays_are_held_until_a_new_step_and_read_only():
    stats = RollingStats(NAMES, PARENTS, HISTORY_STEPS)
    stats.extend(steps(300))
    first = stats.layer_arrays(256)
    assert stats.layer_arrays(256) is first                # no new step: nothing worked out again
    with pytest.raises(ValueError):
        first["mean_ms"][0] = 0.0                          # shared with every caller: read only
    stats.extend(steps(1, seed=9, start=300))
    second = stats.layer_arrays(256)
    assert second is not first
    a = stats.arrays(last=256, fields=("layer_ms", "layer_cycles", "wall_ms"))
    want = layer_arrays(a["layer_ms"], a["layer_cycles"], a["wall_ms"])
    for key in want:
        assert_same(second[key], want[key])


# -- the live view: work, gaps, statistics, fed as a session feeds them ---------------------------------
@pytest.mark.parametrize("n_steps", [1, 40, STATS_WINDOW_STEPS + 3, HISTORY_STEPS + 700])
def test_layer_view_equals_the_plain_computation(n_steps):
    """Before the window fills, after it wrapped (the 2048-step ring too), with NaN layers."""
    state = fed([header()] + steps(n_steps))
    assert state.stats.steps_seen == n_steps
    assert_view_is_plain(state)
    v = state.layer_view()
    assert np.isnan(v.mean_ms[NEVER]) and np.isnan(v.p99_ms[NEVER])
    assert np.isfinite(v.p99_ms[list(SOMETIMES)]).all()


def test_layer_view_equals_the_plain_computation_after_every_batch():
    records, state, rnd, i = [header()] + steps(2400, seed=4), ViewState(), random.Random(8), 0
    while i < len(records):
        n = rnd.choice(BATCH_SIZES)
        state.apply(records[i:i + n])
        i += n
        if state.stats.n_steps and rnd.random() < 0.3:
            assert_view_is_plain(state)
    assert state.stats.steps_seen == 2400


def test_gaps_from_the_ring_and_beyond_it():
    state = fed([header()] + steps(STATS_WINDOW_STEPS * 2), view_every=False)
    for last in (0, 1, 38, STATS_WINDOW_STEPS, STATS_WINDOW_STEPS + 50):   # the last: past the ring, computed
        a = state.stats.arrays(last=last, fields=("start_ms", "layer_ms"))
        assert_same(state.gaps(last), layer_gaps(a["start_ms"], a["layer_ms"], state.stats.parents))
        assert_same(state.heatmap(last, "gaps"), layer_gaps(a["start_ms"], a["layer_ms"], state.stats.parents).T)


def test_work_and_gaps_of_steps_that_bypassed_the_batch_are_computed_whole():
    """Steps added to the rolling stats some other way: the rings have not seen them, so the plain
    computation answers, never a stale ring."""
    state = fed([header()] + steps(300), view_every=False)
    state.stats.extend(steps(20, seed=6, start=300))
    assert_view_is_plain(state)
    a = state.stats.arrays(last=30, fields=("start_ms", "layer_ms"))
    assert_same(state.gaps(30), layer_gaps(a["start_ms"], a["layer_ms"], state.stats.parents))


def test_a_session_without_work_coefficients():
    state = fed([header(work=False)] + steps(500))
    v = state.layer_view()
    assert v.flops_per_s is None and state.work.per_layer() is None
    assert state.work.result().note is not None and "work coefficients" in state.work.result().note
    want = plain_view(state)
    assert_same(v.p99_ms, want["p99_ms"])
    assert_same(v.gap_ms, want["gap_ms"])


def test_the_view_is_held_until_a_step_or_the_sort_changes():
    state = fed([header()] + steps(100))
    v = state.layer_view()
    assert state.layer_view() is v
    state.apply([{"type": "sample", "t_ns": 1, "clock_mhz": 1900}])      # not a step: the same view
    assert state.layer_view() is v
    state.sort_key = "mean"
    by_mean = state.layer_view()
    assert by_mean is not v and by_mean.order.tolist() == state.sort_order(by_mean).tolist()
    assert by_mean.order[0] == int(np.nanargmax(by_mean.mean_ms))
    state.sort_reverse = False
    assert state.layer_view().order[0] == int(np.nanargmin(by_mean.mean_ms))
    assert state.layer_view(spark_steps=4).recent_ms.shape == (N_LAYERS, 4)
    state.apply(steps(1, seed=2, start=100))
    after = state.layer_view()
    assert after is not by_mean and after.last_ms[0] == state.stats.arrays(last=1)["layer_ms"][0, 0]


def test_a_reset_or_a_new_header_never_shows_the_old_view():
    state = fed([header()] + steps(50))
    old = state.layer_view()
    state.apply([{"type": "reset"}] + steps(50, seed=3))        # the same step count again, other numbers
    assert state.stats.steps_seen == 50
    new = state.layer_view()
    assert new is not old
    assert_view_is_plain(state)
    state.apply([header()] + steps(50, seed=5))
    assert_view_is_plain(state)


def test_the_outlier_marks_are_the_detectors_on_the_newest_step():
    records = [header()] + steps(800, seed=11)
    state = fed(records)
    detector = OutlierDetector(NAMES)
    table = StepTable.from_steps(records[0], records[1:])
    found = detector.push(table)
    newest = records[-1]["index"]
    marked = {o["layer_index"] for o in found if o["step"] == newest}
    assert set(np.flatnonzero(state.layer_view().outlier)) == marked
    assert [(o["step"], o["layer_index"]) for o in state.outlier_log.entries] == \
        [(o["step"], o["layer_index"]) for o in found][-len(state.outlier_log.entries):]


def test_column_median_equals_numpy_with_holes():
    """The one-sort column median gives np.nanmedian's numbers bit for bit, holes and empty columns too."""
    from llm_moments.engine.analysis.outliers import column_median

    rng = np.random.default_rng(7)
    for rows in (1, 2, 3, 17, 64):
        x = rng.lognormal(0, 1, (rows, 40))
        x[rng.random(x.shape) < 0.3] = np.nan
        x[:, 5] = np.nan                       # a layer that never ran
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = np.nanmedian(x, axis=0)
        got = column_median(x)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(got[~np.isnan(want)], want[~np.isnan(want)])
