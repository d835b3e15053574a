"""Reading recordings back: outlier moments, `moments diff` (per-layer bootstrap interval of the ratio
of medians) and `moments export` (Chrome / Perfetto trace, CSV, JSON).

Recordings here are synthetic (a header and steps with jittered moments, written as JSON Lines) so
the changes planted in them are known exactly, plus one made by the Monitor from a tiny real model.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FakeClock, generate, ids, run_cli

from llm_moments import MomentsError, Monitor
from llm_moments.engine.analysis.diff import compare
from llm_moments.engine.analysis.outliers import find_outliers
from llm_moments.engine.cli import main
from llm_moments.engine.core.recording import load
from llm_moments.engine.output.export import CSV_COLUMNS, chrome_trace, csv_rows, export, to_csv
from llm_moments.engine.output.text import render_diff

# -- synthetic recordings ----------------------------------------------------------------------------

# name, parent name, p50 moment in ms. Children follow their parent (as hooks.find_layers orders them).
LAYERS = [
    ("embed", None, 0.10),
    ("block.0", None, 1.00),
    ("block.0.attn", "block.0", 0.40),
    ("block.0.mlp", "block.0", 0.50),
    ("block.1", None, 1.00),
    ("block.1.attn", "block.1", 0.40),
    ("block.1.mlp", "block.1", 0.50),
    ("head", None, 0.30),
]
KIND_SCALE = {"prefill": 4.0, "decode": 1.0, "encode": 2.0}


def header(layers=LAYERS, work: bool = True) -> dict[str, Any]:
    names = [n for n, _, _ in layers]
    h = {"type": "header", "schema": "moments/1", "model": {"name": "synthetic", "architecture": "Synth",
                                                             "parameters": 1000, "dtype": "float32",
                                                             "random_weights": True, "generative": True},
         "device": {"kind": "cpu", "name": None}, "clock": {"source": "fake"}, "timer": "perf_counter",
         "depth": "sublayers",
         "layers": [{"name": n, "parent": None if p is None else names.index(p)} for n, p, _ in layers]}
    if work:
        h["work"] = {"columns": ["a", "b", "w", "c", "d", "last_only"],
                     "layers": [[1e4, 128.0, 4e4, 1e3, 256.0, float(n == "head")] for n in names]}
        h["roof"] = {"peak_flops": 1e11, "peak_bytes_per_s": 1e10, "source": "test"}
    return h


def make_steps(n: int, seed: int = 0, jitter: float = 0.03, kinds: list[str] | None = None, layers=LAYERS,
               starts: bool = True, scale: dict[str, float] | None = None, clock: float = 1500.0,
               gap_ms: float = 0.05) -> list[dict[str, Any]]:
    """Steps whose moments are each layer's base × kind scale × (1 ± jitter, uniform); a parent's
    moment covers its children; ``scale``: {layer name: factor} applied before that."""
    rng = np.random.default_rng(seed)
    names = [name for name, _, _ in layers]
    parents = [None if p is None else names.index(p) for _, p, _ in layers]
    kinds = kinds or ["decode"] * n
    out, t_ns = [], 1_000_000
    for i in range(n):
        k = KIND_SCALE[kinds[i]]
        ms = [base * k * (scale or {}).get(name, 1.0) * (1 + rng.uniform(-jitter, jitter))
              for name, _, base in layers]
        for j, _p in enumerate(parents):  # a parent lasts at least as long as its children, plus a little
            kids = [c for c, q in enumerate(parents) if q == j]
            if kids:
                ms[j] = max(ms[j], sum(ms[c] for c in kids) + 0.02)
        start = [0.0] * len(layers)
        cursor: dict[int | None, float] = {None: gap_ms}
        for j, p in enumerate(parents):  # one after another; children from just after their parent's start
            start[j] = cursor[p]
            cursor[p] = start[j] + ms[j] + 0.005
            cursor[j] = start[j] + 0.01
        wall = cursor[None] + gap_ms
        step = {"type": "step", "index": i, "kind": kinds[i], "t_ns": t_ns, "wall_ms": round(wall, 5),
                "tokens": 10 if kinds[i] != "decode" else 2, "batch": 2, "seq_len": 5 if kinds[i] != "decode" else 1,
                "past_len": 0 if kinds[i] != "decode" else 5 + i,
                "layer_ms": [round(x, 5) for x in ms], "layer_cycles": [int(x * clock * 1e3) for x in ms],
                "clock_mhz": clock, "cycles": int(wall * clock * 1e3), "throttle_reasons": []}
        if starts:
            step["layer_start_ms"] = [round(x, 5) for x in start]
        out.append(step)
        t_ns += int(wall * 1e6) + 200_000
    return out


def write(path: Path, steps: list[dict[str, Any]], hdr: dict[str, Any] | None = None,
          samples: list[dict[str, Any]] = (), footer: bool = True) -> Path:
    lines = [hdr or header(), *samples, *steps]
    if footer:
        lines.append({"type": "footer", "steps": len(steps), "reason": "completed"})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def scaled(steps: list[dict[str, Any]], layer: str, factor: float) -> list[dict[str, Any]]:
    """The same steps with one layer `factor` times slower (its parent and the step longer by as much)."""
    names = [n for n, _, _ in LAYERS]
    j = names.index(layer)
    parent = LAYERS[j][1]
    out = copy.deepcopy(steps)
    for s in out:
        extra = s["layer_ms"][j] * (factor - 1)
        s["layer_ms"][j] = round(s["layer_ms"][j] * factor, 5)
        s["layer_cycles"][j] = int(s["layer_ms"][j] * s["clock_mhz"] * 1e3)
        if parent is not None:
            p = names.index(parent)
            s["layer_ms"][p] = round(s["layer_ms"][p] + extra, 5)
        s["wall_ms"] = round(s["wall_ms"] + extra, 5)
    return out


@pytest.fixture
def rec_a(tmp_path) -> Path:
    return write(tmp_path / "a.jsonl", make_steps(60, seed=1, kinds=["prefill"] + ["decode"] * 59))


# -- outliers ---------------------------------------------------------------------------------------------


def test_outliers_finds_planted_spikes_with_clock_and_throttle(tmp_path):
    steps = make_steps(120, seed=3)
    names = [n for n, _, _ in LAYERS]
    planted = {(40, "block.0.mlp"), (77, "head"), (101, "embed")}
    for i, name in planted:
        steps[i]["layer_ms"][names.index(name)] *= 3
        steps[i]["clock_mhz"] = 900.0
        steps[i]["throttle_reasons"] = ["sw_thermal"]
    found = find_outliers(header(), steps)
    assert {(o["step"], o["layer"]) for o in found} == planted
    for o in found:
        j = names.index(o["layer"])
        assert o["ms"] == steps[o["step"]]["layer_ms"][j]
        assert o["median_ms"] == pytest.approx(LAYERS[j][2], rel=0.05)
        assert o["clock_mhz"] == 900.0 and o["throttle_reasons"] == ["sw_thermal"]
        assert o["kind"] == "decode"
    assert [o["step"] for o in found] == sorted(o["step"] for o in found)


@pytest.mark.parametrize("seed", range(5))
def test_no_outliers_in_a_steady_series(seed):
    assert find_outliers(header(), make_steps(300, seed=seed, jitter=0.03)) == []


def test_no_outliers_in_gaussian_jitter():
    steps = make_steps(300, seed=11, jitter=0.0)
    rng = np.random.default_rng(5)
    for s in steps:
        s["layer_ms"] = [x * (1 + rng.normal(0, 0.01)) for x in s["layer_ms"]]  # σ 1 %, 5 MAD is 5 σ
    assert find_outliers(header(), steps) == []


def test_no_outliers_before_min_history():
    steps = make_steps(40, seed=2)
    steps[5]["layer_ms"][1] *= 10   # inside the first 16 steps: no history to judge it by
    steps[20]["layer_ms"][1] *= 10
    found = find_outliers(header(), steps, min_history=16)
    assert [(o["step"], o["layer"]) for o in found] == [(20, "block.0")]
    assert find_outliers(header(), steps[:16], min_history=16) == []


def test_prefills_are_judged_against_prefills_not_decodes():
    """A generative session: a prefill every 8 steps is 4× a decode step, and that is no outlier."""
    kinds = ["prefill" if i % 8 == 0 else "decode" for i in range(400)]
    steps = make_steps(400, seed=4, kinds=kinds)
    assert find_outliers(header(), steps) == []
    names = [n for n, _, _ in LAYERS]
    steps[200]["layer_ms"][names.index("head")] *= 3  # a prefill (200 = 25 × 8), slow among prefills
    found = find_outliers(header(), steps)
    assert [(o["step"], o["kind"], o["layer"]) for o in found] == [(200, "prefill", "head")]


# -- diff -----------------------------------------------------------------------------------------------------


def test_a_session_diffed_with_itself_shows_no_change(rec_a):
    a = load(rec_a)
    diff = compare(a, a)
    assert diff.kind == "decode" and diff.a_steps == diff.b_steps == 59
    assert [l.name for l in diff.layers] == [n for n, _, _ in LAYERS]
    for l in diff.layers:
        assert l.change_pct == 0 and not l.significant
        assert l.ci_low_pct <= 0 <= l.ci_high_pct
        assert l.a_p50_ms == l.b_p50_ms and l.a_cycles == l.b_cycles
    assert diff.step_change_pct == 0 and not diff.step_significant
    assert diff.only_in_a == diff.only_in_b == []


def test_a_layer_twice_as_slow_is_significant_and_the_others_are_not(tmp_path, rec_a):
    a = load(rec_a)
    b = load(write(tmp_path / "b.jsonl", scaled(a.steps, "block.1.mlp", 2.0)))
    diff = compare(a, b)
    by = {l.name: l for l in diff.layers}
    mlp = by["block.1.mlp"]
    assert mlp.significant and mlp.change_pct == pytest.approx(100.0, abs=0.01)
    assert mlp.ci_low_pct > 50 and mlp.b_cycles == pytest.approx(2 * mlp.a_cycles, rel=1e-3)
    assert mlp.b_share > mlp.a_share
    assert by["block.1"].significant and by["block.1"].change_pct > 20  # it holds the slower MLP
    for name in ("embed", "block.0", "block.0.attn", "block.0.mlp", "block.1.attn", "head"):
        assert not by[name].significant and by[name].change_pct == 0, name
    assert diff.step_significant and diff.step_change_pct > 10
    text = render_diff(diff, "a.jsonl", "b.jsonl")
    line = next(l for l in text.splitlines() if l.lstrip().startswith("block.1.mlp"))
    assert "slower" in line and "+100.0%" in line
    assert "slower" not in next(l for l in text.splitlines() if l.lstrip().startswith("block.0.mlp"))


def test_twice_as_slow_stands_out_of_independent_noise(tmp_path):
    a = load(write(tmp_path / "a.jsonl", make_steps(40, seed=1)))
    b = load(write(tmp_path / "b.jsonl", make_steps(40, seed=2, scale={"head": 2.0})))
    head = next(l for l in compare(a, b).layers if l.name == "head")
    assert head.significant and head.change_pct == pytest.approx(100, abs=5)
    faster = next(l for l in compare(b, a).layers if l.name == "head")
    assert faster.significant and faster.change_pct == pytest.approx(-50, abs=3)
    assert "faster" in render_diff(compare(b, a), "b", "a")


def test_layers_match_by_name_and_mismatches_are_listed(tmp_path, rec_a):
    a = load(rec_a)
    # B: a new layer first (every index moves), the head renamed
    layers_b = [("prefix", None, 0.2)] + [("lm_head" if n == "head" else n, p, base) for n, p, base in LAYERS]
    steps_b = make_steps(30, seed=9, layers=layers_b, scale={"block.0.attn": 3.0})
    b = load(write(tmp_path / "b.jsonl", steps_b, hdr=header(layers_b)))
    diff = compare(a, b)
    assert diff.only_in_a == ["head"] and diff.only_in_b == ["prefix", "lm_head"]
    assert [l.name for l in diff.layers] == [n for n, _, _ in LAYERS if n != "head"]
    by = {l.name: l for l in diff.layers}
    assert by["block.0.attn"].b_p50_ms == pytest.approx(1.2, rel=0.05)  # B's own column, not B's index 2
    assert by["block.0.attn"].significant and not by["embed"].significant
    text = render_diff(diff, "a.jsonl", "b.jsonl")
    assert "only in A (a.jsonl): head" in text and "only in B (b.jsonl): prefix, lm_head" in text


def test_kind_selection(tmp_path):
    kinds = (["prefill"] + ["decode"] * 9) * 4
    a = load(write(tmp_path / "a.jsonl", make_steps(40, seed=1, kinds=kinds)))
    b = load(write(tmp_path / "b.jsonl", make_steps(40, seed=2, kinds=kinds)))
    assert compare(a, b).kind == "decode"          # decode by default
    pre = compare(a, b, kind="prefill")
    assert pre.kind == "prefill" and pre.a_steps == pre.b_steps == 4
    assert pre.a_step_p50_ms > 3 * compare(a, b).a_step_p50_ms
    with pytest.raises(MomentsError, match="--kind encode"):
        compare(a, b, kind="encode")
    enc = load(write(tmp_path / "enc.jsonl", make_steps(10, kinds=["encode"] * 10)))
    assert compare(enc, enc).kind == "encode"
    with pytest.raises(MomentsError, match="share no step kind"):
        compare(a, enc)


def test_diff_command(tmp_path, rec_a, capsys):
    a = load(rec_a)
    b_path = write(tmp_path / "b.jsonl", scaled(a.steps, "head", 2.0))
    assert main(["diff", str(rec_a), str(b_path)]) == 0
    out = capsys.readouterr().out
    for name, _, _ in LAYERS:
        assert name in out
    assert "slower" in out and "decode steps" in out
    assert main(["diff", str(rec_a), str(b_path), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "decode" and doc["a"] == str(rec_a) and doc["b"] == str(b_path)
    head = next(l for l in doc["layers"] if l["name"] == "head")
    assert head["significant"] is True and head["change_pct"] == pytest.approx(100, abs=0.01)
    assert main(["diff", str(rec_a), str(b_path), "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "| layer |" in md and "| head |" in md


def test_diff_command_errors(tmp_path, rec_a, capsys):
    assert main(["diff", str(rec_a), str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moments: error:") and "missing.jsonl" in err and err.count("\n") == 1
    assert main(["diff", str(rec_a), str(rec_a), "--kind", "encode"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moments: error: --kind encode") and err.count("\n") == 1


def test_moments_diff_in_a_subprocess(tmp_path, rec_a):
    b_path = write(tmp_path / "b.jsonl", scaled(load(rec_a).steps, "embed", 2.0))
    done = run_cli("diff", str(rec_a), str(b_path), timeout=60, moments=True)
    assert done.returncode == 0, done.stderr
    assert "embed" in done.stdout and "slower" in done.stdout
    done = run_cli("diff", str(rec_a), str(tmp_path / "nope.jsonl"), timeout=60, moments=True)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.startswith("moments: error:") and done.stderr.count("\n") == 1


# -- exports: Chrome / Perfetto trace ---------------------------------------------------------------------------------

EPS_US = 1e-6


def check_trace(doc: dict[str, Any], rec) -> list[dict[str, Any]]:
    """Valid trace-event JSON whose spans nest; returns the X events."""
    doc = json.loads(json.dumps(doc, allow_nan=False))  # strict JSON: no NaN
    events = doc["traceEvents"]
    for e in events:
        assert {"ph", "pid", "ts"} <= set(e), e
        assert isinstance(e["ts"], (int, float))
        if e["ph"] == "X":
            assert e["dur"] >= 0 and "name" in e and "tid" in e
    spans = [e for e in events if e["ph"] == "X"]
    layers = rec.header["layers"]
    names = [l["name"] for l in layers]
    step_events = [e for e in spans if e["cat"] == "step"]
    assert len(step_events) == len(rec.steps)
    # every layer span inside its step span, every sub-layer span inside its parent's
    for step, se in zip(sorted(rec.steps, key=lambda s: s["t_ns"]), step_events):
        assert se["name"] == f"{step['kind']} #{step['index']}"
        lo, hi = se["ts"], se["ts"] + se["dur"]
        mine = [e for e in spans if e["cat"] != "step" and lo - EPS_US <= e["ts"] <= hi + EPS_US]
        assert len(mine) == sum(ms is not None for ms in step["layer_ms"])
        by_name = {e["name"]: e for e in mine}
        for e in mine:
            assert lo - EPS_US <= e["ts"] and e["ts"] + e["dur"] <= hi + EPS_US
            parent = layers[names.index(e["name"])]["parent"]
            if parent is not None and names[parent] in by_name:
                p = by_name[names[parent]]
                assert p["ts"] - EPS_US <= e["ts"] and e["ts"] + e["dur"] <= p["ts"] + p["dur"] + EPS_US
                assert e["cat"] == "sublayer"
    # and no two spans on the track overlap partly: disjoint, or one inside the other
    ivs = sorted(((e["ts"], e["ts"] + e["dur"]) for e in spans), key=lambda x: (x[0], -x[1]))
    stack: list[tuple[float, float]] = []
    for s, t in ivs:
        while stack and s >= stack[-1][1] - EPS_US:
            stack.pop()
        if stack:
            assert t <= stack[-1][1] + EPS_US, (s, t, stack[-1])
        stack.append((s, t))
    return spans


def test_chrome_trace_of_a_real_sublayer_recording(tiny_gpt2, tmp_path):
    path = tmp_path / "gpt2.jsonl"
    with Monitor(tiny_gpt2, depth="sublayers", record=path, clock_source=FakeClock(1000.0), sample_hz=20,
                 roof={"peak_flops": 1e11, "peak_bytes_per_s": 1e10, "source": "test"},
                 model_info={"name": "tiny-gpt2", "generative": True}):
        generate(tiny_gpt2, ids(2, 5, 64), 3)
        generate(tiny_gpt2, ids(1, 4, 64), 2)
    rec = load(path)
    assert [s["kind"] for s in rec.steps] == ["prefill", "decode", "decode", "prefill", "decode"]
    assert any(l["parent"] is not None for l in rec.header["layers"])
    assert all(len(s["layer_start_ms"]) == len(s["layer_ms"]) for s in rec.steps)
    doc = chrome_trace(rec)
    spans = check_trace(doc, rec)
    assert len(spans) == len(rec.steps) * (1 + len(rec.header["layers"]))
    counters = [e for e in doc["traceEvents"] if e["ph"] == "C"]
    assert len(counters) == sum(s.get("clock_mhz") is not None for s in rec.samples) >= 1
    assert all(e["args"]["MHz"] == 1000.0 for e in counters)
    # the recorded times survive: each span's args carry its moment
    first = next(e for e in spans if e["name"] == "transformer.h.0.attn")
    assert first["args"]["ms"] == rec.steps[0]["layer_ms"][rec.layer_names.index("transformer.h.0.attn")]


def test_chrome_trace_of_synthetic_records(tmp_path):
    samples = [{"type": "sample", "t_ns": 1_000_000 + 500_000 * i, "source": "fake",
                "clock_mhz": 1500.0 - i, "throttle_reasons": []} for i in range(6)]
    samples.append({"type": "sample", "t_ns": 9_000_000, "source": "fake", "clock_mhz": None})
    rec = load(write(tmp_path / "s.jsonl", make_steps(6, kinds=["prefill"] + ["decode"] * 5), samples=samples))
    doc = chrome_trace(rec)
    check_trace(doc, rec)
    counters = [e for e in doc["traceEvents"] if e["ph"] == "C"]
    assert [e["ts"] for e in counters] == [s["t_ns"] / 1e3 for s in samples[:6]]  # the null clock is left out
    assert [e["args"]["MHz"] for e in counters] == [1500.0 - i for i in range(6)]
    # moments sit where they were recorded (the synthetic layout already nests)
    step, spans = rec.steps[2], [e for e in doc["traceEvents"] if e["ph"] == "X"]
    head = [e for e in spans if e["name"] == "head"][2]
    j = rec.layer_names.index("head")
    assert head["ts"] == pytest.approx(step["t_ns"] / 1e3 + step["layer_start_ms"][j] * 1e3)
    assert head["dur"] == pytest.approx(step["layer_ms"][j] * 1e3)


def test_chrome_trace_without_layer_start_ms_still_nests(tmp_path):
    steps = make_steps(5, starts=False)
    steps[3]["layer_ms"][2] = None  # a sub-layer that did not run
    steps[4]["layer_ms"][1] = None  # a parent that did not run: its children hang from the step
    rec = load(write(tmp_path / "old.jsonl", steps))
    doc = chrome_trace(rec)
    spans = check_trace(doc, rec)
    # laid out one after another: top-level layers of a step do not overlap
    top = {"embed", "block.0", "block.1", "head"}
    for step in rec.steps[:3]:
        mine = sorted((e for e in spans if e["name"] in top and step["t_ns"] / 1e3 <= e["ts"]
                       <= step["t_ns"] / 1e3 + step["wall_ms"] * 1e3), key=lambda e: e["ts"])
        assert [e["name"] for e in mine] == ["embed", "block.0", "block.1", "head"]
        for x, y in itertools.pairwise(mine):
            assert x["ts"] + x["dur"] <= y["ts"] + EPS_US


def test_chrome_trace_keeps_spans_inside_when_timer_reads_overlap(tmp_path):
    """Children measured a little longer than their parent, a sibling starting before the previous
    one ended, a step longer than the gap to the next step (GPU event time): still strictly nested."""
    steps = make_steps(3)
    names = [n for n, _, _ in LAYERS]
    s = steps[0]
    s["layer_ms"][names.index("block.0.attn")] = s["layer_ms"][names.index("block.0")] + 0.3
    s["layer_start_ms"][names.index("block.0.mlp")] = s["layer_start_ms"][names.index("block.0.attn")] + 0.01
    s["layer_start_ms"][names.index("head")] = 0.0
    steps[1]["wall_ms"] = (steps[2]["t_ns"] - steps[1]["t_ns"]) / 1e6 + 1.0
    rec = load(write(tmp_path / "odd.jsonl", steps))
    check_trace(chrome_trace(rec), rec)


# -- exports: CSV and JSON ---------------------------------------------------------------------------------------


def test_csv_has_a_row_per_step_and_layer_and_its_columns_parse(tmp_path):
    steps = make_steps(7, kinds=["prefill"] + ["decode"] * 6)
    steps[3]["layer_ms"][2] = None
    steps[3]["layer_cycles"][2] = None
    rec = load(write(tmp_path / "c.jsonl", steps))
    text = to_csv(rec)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == CSV_COLUMNS
    assert len(rows) == 1 + len(steps) * len(LAYERS) == 1 + len(csv_rows(rec))
    col = {c: i for i, c in enumerate(CSV_COLUMNS)}
    for r in rows[1:]:
        assert len(r) == len(CSV_COLUMNS)
        int(r[col["step"]]), int(r[col["t_ns"]]), float(r[col["step_wall_ms"]]), int(r[col["tokens"]])
        assert r[col["kind"]] in ("prefill", "decode")
        assert r[col["layer"]] in [n for n, _, _ in LAYERS]
        for c in ("moment_ms", "start_ms", "cycles", "flops", "bytes", "flops_per_s", "roof_pct", "clock_mhz"):
            if r[col[c]] != "":
                float(r[col[c]])
    empty = next(r for r in rows[1:] if r[col["step"]] == "3" and r[col["layer"]] == "block.0.attn")
    assert empty[col["moment_ms"]] == "" and empty[col["cycles"]] == "" and empty[col["flops_per_s"]] == ""
    sub = next(r for r in rows[1:] if r[col["layer"]] == "block.1.mlp")
    assert sub[col["parent"]] == "block.1"
    # work: the head of the prefill sees one position per sequence (batch 2), a block all 10 tokens
    pre = {r[col["layer"]]: r for r in rows[1:] if r[col["step"]] == "0"}
    assert float(pre["head"][col["flops"]]) == 1e4 * 2 + 128 * 2 * 5
    assert float(pre["embed"][col["flops"]]) == 1e4 * 10 + 128 * 10 * 5


def test_csv_without_work_in_the_header(tmp_path):
    rec = load(write(tmp_path / "c.jsonl", make_steps(3), hdr=header(work=False)))
    rows = list(csv.reader(io.StringIO(to_csv(rec))))
    assert len(rows) == 1 + 3 * len(LAYERS)
    assert all(r[CSV_COLUMNS.index("flops")] == "" for r in rows[1:])


def test_json_export_round_trips_header_and_steps(tmp_path):
    rec = load(write(tmp_path / "j.jsonl", make_steps(4), samples=[{"type": "sample", "t_ns": 5, "clock_mhz": 1.0}]))
    doc = json.loads(export(rec, "json"))
    assert doc["header"] == rec.header and doc["steps"] == rec.steps
    assert doc["samples"] == rec.samples and doc["footer"] == rec.footer
    with pytest.raises(ValueError):
        export(rec, "xml")


# -- `moments export` ---------------------------------------------------------------------------------------------


def test_export_command_default_output_names(tmp_path, capsys):
    src = write(tmp_path / "run.jsonl", make_steps(5))
    assert main(["export", str(src), "--format", "chrome"]) == 0
    trace = tmp_path / "run.trace.json"
    assert trace.is_file() and "wrote" in capsys.readouterr().err
    assert json.loads(trace.read_text())["traceEvents"]
    assert main(["export", str(src), "--format", "csv"]) == 0
    assert (tmp_path / "run.csv").read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
    assert main(["export", str(src), "--format", "json"]) == 0
    assert json.loads((tmp_path / "run.json").read_text())["steps"] == load(src).steps
    out = tmp_path / "elsewhere.csv"
    assert main(["export", str(src), "--format", "csv", "-o", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 1 + 5 * len(LAYERS)
    capsys.readouterr()
    assert main(["export", str(src), "--format", "json", "-o", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["header"] == load(src).header


def test_export_command_errors(tmp_path, capsys):
    src = write(tmp_path / "run.jsonl", make_steps(2))
    assert main(["export", str(src), "--format", "chrome", "-o", str(tmp_path / "no" / "such" / "t.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moments: error:") and err.count("\n") == 1
    assert not (tmp_path / "no").exists()
    assert main(["export", str(tmp_path / "missing.jsonl"), "--format", "csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moments: error:") and err.count("\n") == 1


def test_moments_export_in_a_subprocess(tmp_path):
    src = write(tmp_path / "session.v2.jsonl", make_steps(3))
    done = run_cli("export", str(src), "--format", "chrome", timeout=60, moments=True)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "session.v2.trace.json"
    assert json.loads(out.read_text())["traceEvents"]
    done = run_cli("export", str(src), "--format", "chrome", "-o", str(tmp_path / "nope" / "x.json"),
                   timeout=60, moments=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("moments: error:") and done.stderr.count("\n") == 1
