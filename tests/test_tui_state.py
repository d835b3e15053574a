"""tui/state.py, the UI's reducer: records in, view data out (no Textual needed)."""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tui_fakes import (
    BLOCK_LAYERS,
    STEP_NS,
    SUB_LAYERS,
    make_cpu_sample,
    make_gpu_sample,
    make_header,
    make_session,
    make_step,
)

import llm_moments.tui.state as tui_state
from llm_moments.tui.state import RATE_WINDOW_NS, SORT_KEYS, ViewState


def state_with(records, mode: str = "live") -> ViewState:
    s = ViewState(mode=mode)
    s.apply(records)
    return s


def arrays(steps, key):
    return np.array([[np.nan if v is None else v for v in s[key]] for s in steps], dtype=np.float64)


ROOT = Path(__file__).resolve().parents[1]
ENGINE_MODULES = ["llm_moments", "llm_moments.engine", "llm_moments.engine.cli", "llm_moments.engine.session.monitor",
                  "llm_moments.engine.core.recording", "llm_moments.engine.analysis.stats",
                  "llm_moments.engine.session.models", "llm_moments.engine.session.runner",
                  "llm_moments.engine.output.text"]


# -- layering: the engine stands alone ----------------------------------------------------------------


def test_importing_the_engine_does_not_import_textual_or_the_ui():
    """A fresh interpreter: the named modules, then every other module of the package."""
    code = ("import importlib, pkgutil, sys\nimport llm_moments.engine as engine\n"
            f"names = {ENGINE_MODULES!r} + "
            "[m.name for m in pkgutil.walk_packages(engine.__path__, 'llm_moments.engine.')"
            " if not m.name.endswith('__main__')]\n"
            "for name in names: importlib.import_module(name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'textual' or m.startswith('llm_moments.tui'))\n"
            "print('IMPORTED:', len(names), 'UI MODULES:', bad)\nsys.exit(1 if bad else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "UI MODULES: []" in done.stdout


IMPORT_LINE = re.compile(r"^\s*(import|from)\s+(textual|tui|llm_moments\.tui)\b", re.MULTILINE)


def test_no_engine_file_imports_textual_or_the_ui():
    files = sorted((ROOT / "engine").rglob("*.py"))
    assert len(files) > 5
    offenders = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        if IMPORT_LINE.search(text):
            offenders.append(str(path.relative_to(ROOT)))
        for node in ast.walk(ast.parse(text, filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)
                  and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")):
                names = [node.args[0].value]
            if any(n.split(".")[0] in ("textual", "tui") or n.startswith("llm_moments.tui") for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


# -- apply --------------------------------------------------------------------------------------------


def test_state_module_does_not_import_textual():
    """The reducer imports numpy and the engine only (and the engine never imports Textual: below)."""
    tree = ast.parse(Path(tui_state.__file__).read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert "textual" not in roots and "rich" not in roots
    assert roots <= {"__future__", "collections", "math", "dataclasses", "typing", "numpy", "llm_moments"}


def test_apply_header_steps_and_samples():
    s = ViewState()
    assert s.apply([]) == 0 and s.version == 0
    assert s.layer_view() is None and s.rates() == (0.0, 0.0)
    s.apply([{"type": "loading", "message": "loading gpt2…"}])
    assert s.loading == "loading gpt2…"

    records = make_session(5, footer=False)
    version = s.version
    assert s.apply(records) == len(records)
    assert s.version == version + 1                  # one bump per batch, not per record
    assert s.loading is None
    assert s.header["model"]["name"] == "tiny-gpt2"
    assert s.layer_names == [name for name, _, _ in BLOCK_LAYERS]
    assert s.stats.parents == [None] * 6
    assert s.steps_total == 5 and s.stats.n_steps == 5
    assert s.tokens_total == 8 + 4                   # prefill of 8 tokens, 4 decodes of 1
    assert len(s.samples) == 5 and s.samples[-1]["sm_clock_mhz"] == 1980.0
    assert s.last_step["index"] == 4
    assert s.newest_t_ns == 4 * STEP_NS + STEP_NS // 2     # the last sample is newer than the last step
    assert next(iter(s.step_meta)) == (0, "prefill", 1980.0, ())
    assert s.footer is None and s.error is None and not s.no_layer_timing

    s.apply([{"type": "footer", "steps": 5, "reason": "completed"}])
    assert s.footer["reason"] == "completed"
    s.apply([{"type": "recording", "path": "a.jsonl"}])
    assert s.recording_path == "a.jsonl"


def test_steps_before_the_header_or_of_another_shape_are_ignored():
    s = ViewState()
    s.apply([make_step(0)])
    assert s.steps_total == 0 and s.stats is None
    s.apply([make_header()])
    s.apply([make_step(1, layers=SUB_LAYERS)])       # 8 moments for a 6-layer header
    assert s.steps_total == 0
    s.apply([make_step(2)])
    assert s.steps_total == 1


def test_statuses_dedupe_and_keep_the_newest_twenty():
    s = ViewState()
    warn = {"type": "status", "level": "warning", "message": "NVML: power not supported"}
    s.apply([warn, warn, warn])
    assert len(s.statuses) == 1 and s.statuses[0].level == "warning"
    s.apply([{"type": "status", "level": "info", "message": f"m{i}"} for i in range(30)])
    assert len(s.statuses) == 20 and s.statuses[-1].message == "m29"


def test_error_record():
    s = state_with(make_session(2, footer=False))
    s.apply([{"type": "error", "message": "CUDA out of memory"}])
    assert s.error == "CUDA out of memory"
    assert s.statuses[-1].level == "error" and s.statuses[-1].message == "CUDA out of memory"
    assert s.steps_total == 2


def test_hooks_not_firing():
    s = state_with([make_header()] + [make_step(i) for i in range(3)])
    assert not s.no_layer_timing
    s.apply([make_step(3, hooks_fired=False)])
    assert s.no_layer_timing and s.steps_without_timing == 1 and s.steps_total == 4
    view = s.layer_view()
    # "last" is each layer's newest moment that exists (step 2's); the table shows "—" for every
    # number while no_layer_timing holds, so these are never drawn as if they were current
    np.testing.assert_allclose(view.last_ms, make_step(2)["layer_ms"])
    assert np.isfinite(view.mean_ms).all()           # the earlier steps still count
    s.apply([make_step(4)])
    assert not s.no_layer_timing


def test_reset_record_forgets_steps_and_samples_but_keeps_header_and_settings():
    s = state_with(make_session(6))
    s.sort_key, s.paused, s.recording_path = "mean", True, "x.jsonl"
    stats_before = s.stats
    s.apply([{"type": "reset"}])
    assert s.header is not None and s.layer_names == [n for n, _, _ in BLOCK_LAYERS]
    assert s.stats is not stats_before and s.stats.n_steps == 0
    assert s.steps_total == s.tokens_total == s.steps_without_timing == 0
    assert len(s.samples) == 0 and len(s.step_meta) == 0
    assert s.last_step is None and s.footer is None
    assert s.layer_view() is None
    assert (s.sort_key, s.paused, s.recording_path) == ("mean", True, "x.jsonl")
    s.apply(make_session(2, start=10, header=False, footer=False))
    assert s.steps_total == 2 and s.last_step["index"] == 11


def test_a_new_header_starts_new_statistics():
    s = state_with(make_session(3, footer=False))
    s.apply([make_header(layers=SUB_LAYERS)])
    assert len(s.layer_names) == 8 and s.stats.n_steps == 0
    s.apply([make_step(0, layers=SUB_LAYERS)])
    assert s.stats.n_steps == 1


# -- rates --------------------------------------------------------------------------------------------


def test_rates_in_recorded_time():
    s = state_with([make_header(), make_step(0)])
    assert s.rates() == (0.0, 0.0)                  # one step: no interval yet
    s.apply([make_step(i) for i in range(1, 11)])
    sps, tps = s.rates()
    assert sps == pytest.approx(20.0)                # a step every 50 ms
    assert tps == pytest.approx(20.0)                # tokens after the first step of the window: 1 each


def test_rates_use_only_the_last_five_seconds():
    s = state_with([make_header()])
    # 100 slow steps (1 s apart), then 40 fast ones (50 ms apart): only the recent pace counts
    slow = [make_step(i, kind="decode") | {"t_ns": i * 1_000_000_000} for i in range(100)]
    t0 = 100 * 1_000_000_000
    fast = [make_step(100 + i, kind="decode") | {"t_ns": t0 + i * STEP_NS, "tokens": 4} for i in range(40)]
    s.apply(slow + fast)
    sps, tps = s.rates()
    newest = t0 + 39 * STEP_NS
    t = np.array([r["t_ns"] for r in slow + fast])
    sel = t[t >= newest - RATE_WINDOW_NS]
    span = (sel[-1] - sel[0]) / 1e9
    tokens = sum(r["tokens"] for r in (slow + fast)[-len(sel) + 1:])
    assert sps == pytest.approx((len(sel) - 1) / span)
    assert tps == pytest.approx(tokens / span)


def test_step_percentiles():
    s = ViewState()
    assert all(math.isnan(x) for x in s.step_percentiles())
    steps = [make_step(i) for i in range(20)]
    s.apply([make_header()] + steps)
    wall = [st["wall_ms"] for st in steps]
    p50, p99 = s.step_percentiles()
    assert p50 == pytest.approx(np.percentile(wall, 50)) and p99 == pytest.approx(np.percentile(wall, 99))


# -- layer view ---------------------------------------------------------------------------------------


def test_layer_view_values():
    steps = [make_step(i, clock_mhz=1500.0 + i) for i in range(12)]
    s = state_with([make_header()] + steps)
    v = s.layer_view(spark_steps=5)
    ms, cyc = arrays(steps, "layer_ms"), arrays(steps, "layer_cycles")
    wall = np.array([st["wall_ms"] for st in steps])
    assert v.names == [n for n, _, _ in BLOCK_LAYERS]
    np.testing.assert_allclose(v.last_ms, ms[-1])
    np.testing.assert_allclose(v.mean_ms, ms.mean(axis=0))
    np.testing.assert_allclose(v.p50_ms, np.percentile(ms, 50, axis=0))
    np.testing.assert_allclose(v.p99_ms, np.percentile(ms, 99, axis=0))
    np.testing.assert_allclose(v.cycles, cyc.mean(axis=0))
    np.testing.assert_allclose(v.share, ms.sum(axis=0) / wall.sum())
    assert v.share.sum() < 1.0                       # the step's unattributed 0.1 ms is nobody's share
    assert v.recent_ms.shape == (6, 5)
    np.testing.assert_allclose(v.recent_ms, ms[-5:].T)
    assert v.order.tolist() == list(range(6))
    assert not v.outlier.any()                       # too little history to call anything an outlier
    assert v.slowest.tolist() == [False, False, True, False, False, False]   # blocks.1 only (6 // 4 = 1)


@pytest.mark.parametrize("key", [k for k in SORT_KEYS if k not in ("order", "flops", "roof")])
def test_sort_both_directions(key):
    s = state_with(make_session(8, footer=False))
    s.sort_key = key
    s.sort_reverse = True
    assert s.layer_view().order.tolist() == [2, 4, 1, 3, 0, 5]       # largest first
    s.sort_reverse = False
    assert s.layer_view().order.tolist() == [5, 0, 3, 1, 4, 2]       # smallest first


def test_sort_by_last_follows_the_newest_step_not_the_mean():
    s = state_with([make_header()] + [make_step(i) for i in range(8)] + [make_step(8, spike={5: 50.0})])
    s.sort_key = "last"
    assert s.layer_view().order.tolist()[0] == 5     # norm's newest moment is the largest
    s.sort_key = "mean"
    assert s.layer_view().order.tolist()[0] == 5     # 50 ms / 9 steps outweighs blocks.1 too
    s.sort_key = "p50"
    assert s.layer_view().order.tolist()[0] == 2     # but not its median


def test_sort_puts_layers_without_moments_last_when_descending():
    layers = BLOCK_LAYERS
    steps = [make_step(i, layer_ms=[0.05, 0.8, None, 0.6, 1.0, 0.02]) for i in range(4)]
    s = state_with([make_header(layers=layers)] + steps)
    s.sort_key = "mean"
    order = s.layer_view().order.tolist()
    assert order == [4, 1, 3, 0, 5, 2]
    assert math.isnan(s.layer_view().mean_ms[2])


def test_cycle_sort_goes_round():
    s = ViewState()
    seen = [s.cycle_sort() for _ in SORT_KEYS]
    assert seen == list(SORT_KEYS[1:]) + ["order"]
    assert s.version == len(SORT_KEYS)


def test_outlier_flag_on_a_planted_spike():
    steps = [make_step(i) for i in range(24)] + [make_step(24, spike={3: 6.0})]   # blocks.2: 0.6 → 6 ms
    s = state_with([make_header()] + steps)
    v = s.layer_view()
    assert v.outlier.tolist() == [False, False, False, True, False, False]
    assert v.last_ms[3] == pytest.approx(6.0)
    assert v.slowest.tolist() == [False, False, True, False, False, False]        # by mean: still blocks.1
    s.apply([make_step(25)])                         # the next ordinary step clears the mark
    assert not s.layer_view().outlier.any()


def test_slowest_marks_count_only_top_level_layers():
    # 12 top-level layers → 3 slowest marked; sub-layers never are, however slow
    layers = [(f"blocks.{i}", None, 0.1 * (i + 1)) for i in range(12)] + [("blocks.0.mlp", 0, 9.0)]
    s = state_with([make_header(layers=layers)] + [make_step(i, layers=layers) for i in range(5)])
    v = s.layer_view()
    assert np.flatnonzero(v.slowest).tolist() == [9, 10, 11]
    assert not v.slowest[12]
    # fewer than 4 top-level layers: nothing is marked
    few = layers[:3]
    s = state_with([make_header(layers=few)] + [make_step(i, layers=few) for i in range(5)])
    assert not s.layer_view().slowest.any()


# -- step distribution, history, heatmap, clocks ------------------------------------------------------


def test_step_distribution():
    steps = [make_step(i) for i in range(20)]
    s = state_with([make_header()] + steps)
    d = s.step_distribution(bins=6)
    assert d["counts"].sum() == 20 and len(d["counts"]) == 6 and len(d["edges"]) == 7
    wall = np.array([st["wall_ms"] for st in steps])
    assert d["edges"][0] == pytest.approx(wall.min()) and d["edges"][-1] == pytest.approx(wall.max())
    assert set(d["by_kind"]) == {"prefill", "decode"}
    assert d["by_kind"]["prefill"]["count"] == 1
    assert d["by_kind"]["prefill"]["mean"] == pytest.approx(wall[0])
    dec = d["by_kind"]["decode"]
    assert dec["count"] == 19
    assert dec["mean"] == pytest.approx(wall[1:].mean()) and dec["std"] == pytest.approx(wall[1:].std())
    assert dec["p50"] == pytest.approx(np.percentile(wall[1:], 50))
    assert dec["p90"] == pytest.approx(np.percentile(wall[1:], 90))
    assert dec["p99"] == pytest.approx(np.percentile(wall[1:], 99))
    empty = ViewState().step_distribution()
    assert empty["counts"].size == 0 and empty["by_kind"] == {}


def test_step_history_and_heatmap():
    steps = [make_step(i) for i in range(10)]
    s = state_with([make_header()] + steps)
    wall, kinds = s.step_history(last=4)
    np.testing.assert_allclose(wall, [st["wall_ms"] for st in steps[-4:]])
    assert kinds.tolist() == ["decode"] * 4
    assert s.step_history()[1][0] == "prefill"
    h = s.heatmap(3)
    assert h.shape == (6, 3)
    np.testing.assert_allclose(h, arrays(steps[-3:], "layer_ms").T)
    assert ViewState().heatmap(5).shape == (0, 0)


def test_clock_history_skips_unsupported_fields():
    s = state_with([make_header(device="cpu")] + [make_cpu_sample(i, mhz=2000.0 + i) for i in range(5)])
    assert s.clock_history("cpu_clock_mhz", last=3) == [2002.0, 2003.0, 2004.0]
    s.apply([make_gpu_sample(10, power_w=None), make_gpu_sample(11, power_w=250.0)])
    assert s.clock_history("power_w") == [250.0]


# -- layer detail ---------------------------------------------------------------------------------------


def test_layer_detail_children_and_numbers():
    steps = [make_step(i, layers=SUB_LAYERS) for i in range(10)]
    s = state_with([make_header(layers=SUB_LAYERS, depth="sublayers")] + steps)
    d = s.layer_detail(1)                            # blocks.0
    ms = arrays(steps, "layer_ms")
    assert d["name"] == "blocks.0" and d["parent"] is None and d["count"] == 10
    assert [c["name"] for c in d["children"]] == ["blocks.0.attn", "blocks.0.mlp"]
    assert d["children"][0]["mean_ms"] == pytest.approx(ms[:, 6].mean())
    assert d["children"][0]["share_of_parent"] == pytest.approx(0.3 / 0.8)
    assert d["children"][1]["share_of_parent"] == pytest.approx(0.4 / 0.8)
    assert d["mean_ms"] == pytest.approx(ms[:, 1].mean())
    assert d["p50_ms"] == pytest.approx(np.percentile(ms[:, 1], 50))
    assert d["p99_ms"] == pytest.approx(np.percentile(ms[:, 1], 99))
    cyc = arrays(steps, "layer_cycles")
    assert d["mean_cycles"] == pytest.approx(cyc[:, 1].mean())
    assert d["last_cycles"] == pytest.approx(cyc[-1, 1])
    np.testing.assert_allclose(d["history_ms"], ms[:, 1])

    leaf = s.layer_detail(7)                         # blocks.0.mlp: inside blocks.0, no children
    assert leaf["name"] == "blocks.0.mlp" and leaf["parent"] == 1 and leaf["children"] == []


def test_layer_detail_slowest_moments_with_their_clock_and_throttle():
    records = [make_header()]
    for i in range(12):
        if i == 5:
            records.append(make_step(5, spike={2: 7.0}, clock_mhz=1410.0,
                                     throttle=["sw_thermal_slowdown", "hw_slowdown"]))
        elif i == 9:
            records.append(make_step(9, spike={2: 6.0}, clock_mhz=1755.0, throttle=["sw_power_cap"]))
        else:
            records.append(make_step(i))
    s = state_with(records)
    slowest = s.layer_detail(2)["slowest"]
    assert len(slowest) == 5
    assert slowest[0] == {"step": 5, "kind": "decode", "ms": 7.0, "clock_mhz": 1410.0,
                          "throttle": ["sw_thermal_slowdown", "hw_slowdown"]}
    assert slowest[1] == {"step": 9, "kind": "decode", "ms": 6.0, "clock_mhz": 1755.0,
                          "throttle": ["sw_power_cap"]}
    assert slowest[2]["step"] == 0 and slowest[2]["kind"] == "prefill"     # the prefill is next
    assert [r["ms"] for r in slowest] == sorted((r["ms"] for r in slowest), reverse=True)


def test_layer_detail_of_a_layer_that_never_fired():
    steps = [make_step(i, layer_ms=[0.05, 0.8, None, 0.6, 1.0, 0.02]) for i in range(4)]
    s = state_with([make_header()] + steps)
    d = s.layer_detail(2)
    assert d["count"] == 0 and d["slowest"] == []
    assert math.isnan(d["mean_ms"]) and math.isnan(d["p50_ms"]) and math.isnan(d["mean_cycles"])


def test_layer_detail_after_a_reset_lines_up_with_the_new_steps():
    s = state_with(make_session(10, footer=False))
    s.apply([{"type": "reset"}, make_step(3, spike={4: 5.0}, clock_mhz=1600.0, throttle=["hw_slowdown"]),
             make_step(4)])
    d = s.layer_detail(4)
    assert d["count"] == 2
    assert d["slowest"][0] == {"step": 3, "kind": "decode", "ms": 5.0, "clock_mhz": 1600.0,
                               "throttle": ["hw_slowdown"]}


def test_one_slow_step_does_not_set_the_step_histograms_range():
    """200 decode steps of about 10 ms and one 800 ms hiccup: the bins span the decode steps (p1–p99),
    the hiccup is counted above them, not stretching the first bin over 199 steps."""
    steps = [make_step(i) for i in range(201)]
    rng = np.random.default_rng(3)
    for st in steps[1:]:
        st["kind"], st["wall_ms"] = "decode", float(10 + rng.normal(0, 0.3))
    steps[100]["wall_ms"] = 800.0
    d = state_with([make_header()] + steps).step_distribution(bins=8)
    assert d["edges"][-1] < 20 and d["over"] >= 1        # the hiccup (and the prefill) above the bins
    assert d["counts"].max() < 150                         # the decode steps spread over several bins
    assert int(d["counts"].sum()) + d["under"] + d["over"] == 201


def test_the_step_panel_shows_the_steps_above_its_bins():
    from llm_moments.tui.widgets.step_panel import StepPanel

    steps = [make_step(i) for i in range(201)]
    for st in steps[1:]:
        st["kind"], st["wall_ms"] = "decode", 10.0 + (st["index"] % 7) * 0.1
    steps[100]["wall_ms"] = 800.0
    text = StepPanel().content(state_with([make_header()] + steps), 50, 10).plain
    assert re.search(r"> 10\.\d+ ms .* [1-9]", text), text
