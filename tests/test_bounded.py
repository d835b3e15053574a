"""Bounded memory for `report`, `export` and `diff` on recordings of any length (issue #8, item 4):
the accumulators do not grow with the number of steps, the quantile sketch keeps its documented
error bound, exports stream out and stay valid JSON. The 1M-step figures are bench/memory.py's."""

from __future__ import annotations

import io
import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from llm_moments.engine.analysis import sketch
from llm_moments.engine.analysis.diff import compare
from llm_moments.engine.analysis.outliers import OutlierDetector
from llm_moments.engine.analysis.report import analyze
from llm_moments.engine.analysis.sketch import RELATIVE_ERROR, Moments, QuantileSketch, Reservoir
from llm_moments.engine.analysis.stats import SummaryAcc
from llm_moments.engine.analysis.steptable import StepTable
from llm_moments.engine.core.recording import load
from llm_moments.engine.output.export import export, write_export

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import memory as bench

N_LAYERS = 16


def chunk_table(rng: np.random.Generator, m: int, first: int) -> StepTable:
    """A step table of ``m`` synthetic steps made with numpy (no records: the test stays fast)."""
    names = [f"l{j}" for j in range(N_LAYERS)]
    t = StepTable(names, [None] * N_LAYERS, capacity=m)
    ms = rng.lognormal(0, 0.1, (m, N_LAYERS)) * np.linspace(0.1, 2, N_LAYERS)
    ms[rng.random((m, N_LAYERS)) < 0.01] = np.nan       # layers that did not run
    cols = {name: np.full((m, N_LAYERS), np.nan) for name in ("ms", "cycles", "calls", "start_ms", "positions",
                                                              "context")}
    cols.update(ms=ms, cycles=ms * 2e6)
    kind = np.where(np.arange(first, first + m) % 64 == 0, "prefill", "decode").astype("<U8")
    throttle = np.empty(m, dtype=object)
    throttle[:] = [()] * m
    cols.update(index=np.arange(first, first + m), kind=kind, t_ns=np.arange(first, first + m) * 10**7,
                wall_ms=np.nansum(ms, axis=1) + 0.5, tokens=np.ones(m, dtype=np.int64),
                batch=np.ones(m, dtype=np.int64),
                seq_len=np.ones(m, dtype=np.int64), past_len=np.zeros(m, dtype=np.int64),
                clock_mhz=np.full(m, 2100.0), hooks_fired=np.ones(m, dtype=bool), throttle=throttle)
    t._write(cols)
    return t


def retained_after(n_steps: int) -> int:
    """Bytes the report's accumulators hold after folding ``n_steps`` steps (tracemalloc)."""
    rng = np.random.default_rng(1)
    tracemalloc.start()
    try:
        names = [f"l{j}" for j in range(N_LAYERS)]
        acc, detector, kept = SummaryAcc(names, [None] * N_LAYERS), OutlierDetector(names), []
        for lo in range(0, n_steps, 4096):
            table = chunk_table(rng, min(4096, n_steps - lo), lo)
            acc.add(table)
            kept = (kept + detector.push(table))[-20:]
            del table
        acc.summary()
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_the_accumulators_do_not_grow_with_the_steps(monkeypatch):
    monkeypatch.setattr(sketch, "EXACT_CELLS", 4096)   # past the exact budget at once: the sketch's memory
    small, big = retained_after(20_000), retained_after(80_000)
    assert big < small * 1.1 + 64 * 1024, (small, big)


@pytest.mark.parametrize("seed", [0, 1])
def test_sketch_quantiles_stay_within_the_documented_relative_error(seed):
    rng = np.random.default_rng(seed)
    x = rng.lognormal(0, 1.5, (60_000, 3))
    x[:, 1] = rng.uniform(0.01, 0.02, 60_000)         # a narrow column
    x[rng.random(x.shape) < 0.05] = np.nan            # holes
    sk = QuantileSketch(3, exact_cells=0)
    for lo in range(0, len(x), 4096):
        sk.add(x[lo:lo + 4096])
    assert not sk.exact
    qs = [0, 1, 10, 50, 90, 99, 99.9, 100]
    got = sk.quantiles(qs)
    want = np.nanpercentile(x, qs, axis=0)
    assert np.all(np.abs(got - want) <= RELATIVE_ERROR * np.abs(want) + 1e-12), np.max(np.abs(got / want - 1))
    assert got[0].tolist() == want[0].tolist() and got[-1].tolist() == want[-1].tolist()  # min, max exact
    assert sk.nbytes() == 3 * sketch.N_BINS * 8


def test_sketch_is_exact_within_its_budget_and_moments_match_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(5, 1, (5000, 4))
    x[::7, 2] = np.nan
    sk, m = QuantileSketch(4), Moments()
    for lo in range(0, 5000, 999):
        sk.add(x[lo:lo + 999])
        m.add(x[lo:lo + 999, 0])
    assert sk.exact
    np.testing.assert_array_equal(sk.quantiles([50, 99]), np.nanpercentile(x, [50, 99], axis=0))
    assert m.avg == pytest.approx(x[:, 0].mean(), rel=1e-12) and m.std == pytest.approx(x[:, 0].std(), rel=1e-12)


def test_reservoir_keeps_everything_in_order_then_a_seeded_uniform_sample():
    x = np.arange(10_000, dtype=float)[:, None]
    r = Reservoir(1, 100, seed=5)
    r.add(x[:60])
    assert r.values(0).tolist() == list(range(60))
    for lo in range(60, 10_000, 777):
        r.add(x[lo:lo + 777])
    again = Reservoir(1, 100, seed=5)
    again.add(x[:60])
    for lo in range(60, 10_000, 777):
        again.add(x[lo:lo + 777])
    assert len(r.values(0)) == 100 and r.values(0).tolist() == again.values(0).tolist()
    assert 3000 < r.values(0).mean() < 7000    # drawn from the whole stream, not its start


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    path = tmp_path_factory.mktemp("bounded") / "big.jsonl"
    bench.write_recording(path, 6000)
    return path


def test_a_report_past_the_exact_budget_is_within_the_bound(big, monkeypatch):
    exact = analyze(load(big))
    monkeypatch.setattr(sketch, "EXACT_CELLS", 1024)
    approx = analyze(big)                          # streamed from the path, sketches in histogram mode
    assert approx.n_steps == exact.n_steps == 6000 and approx.outliers_total == exact.outliers_total
    assert approx.outliers == exact.outliers
    for a, e in zip(approx.summary.layers, exact.summary.layers):
        assert (a.count, a.last_ms) == (e.count, e.last_ms)
        assert a.mean_ms == pytest.approx(e.mean_ms, rel=1e-9) and a.share == pytest.approx(e.share, rel=1e-9)
        assert a.p50_ms == pytest.approx(e.p50_ms, rel=RELATIVE_ERROR)
        assert a.p99_ms == pytest.approx(e.p99_ms, rel=RELATIVE_ERROR)
    for a, e in zip(approx.summary.steps, exact.summary.steps):
        assert (a.kind, a.count, a.tokens) == (e.kind, e.count, e.tokens)
        assert a.std_ms == pytest.approx(e.std_ms, rel=1e-6)
        assert a.p90_ms == pytest.approx(e.p90_ms, rel=RELATIVE_ERROR)
    assert len(approx.table) == 400 and approx.table.index[-1] == 5999   # the heatmap's newest steps
    assert sum(int(c.sum()) for c in approx.wall_histogram(np.linspace(0, 1e3, 9)).values()) == 6000


def test_diff_a_vs_a_with_a_small_reservoir_is_noise(big):
    d = compare(big, big, reservoir=256)
    assert d.kind == "decode" and not d.step_significant
    assert all(l.change_pct == 0 and l.ci_low_pct <= 0 <= l.ci_high_pct and not l.significant for l in d.layers)
    assert all(l.ci_high_pct - l.ci_low_pct < 2 for l in d.layers)   # scaled to all the steps, not 256


class _Sink(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes, self.biggest = 0, 0

    def write(self, s: str) -> int:
        self.writes += 1
        self.biggest = max(self.biggest, len(s))
        return super().write(s)


@pytest.mark.parametrize("fmt", ["json", "chrome", "csv"])
def test_exports_stream_out_and_stay_valid(big, fmt):
    out = _Sink()
    write_export(big, fmt, out)
    assert out.writes > 1000 and out.biggest <= 64 * 1024    # piece by piece, never the whole document
    text = out.getvalue()
    if fmt == "json":
        doc = json.loads(text)
        rec = load(big)
        assert doc["header"] == rec.header and doc["steps"] == rec.steps and doc["samples"] == rec.samples
        assert doc["footer"] == rec.footer and doc["others"] == [] and doc["warnings"] == []
    elif fmt == "chrome":
        doc = json.loads(text)
        assert doc == json.loads(export(load(big), "chrome"))
        assert sum(e["ph"] == "C" for e in doc["traceEvents"]) == 600
    else:
        assert text.count("\n") == 1 + 6000 * len(bench.LAYERS)
