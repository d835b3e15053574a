"""The live ``moments compare``: its engine child, the compare state, and the split of the records.

The child (engine/session/compare_stream.py) is the real one, started by the UI's CompareLiveSource
with tiny-gpt2 (a few seconds each here): it streams steps tagged by variant and ``compare`` records
whose final analysis is exactly what ``report`` computes from its recording; ``quit`` (or the UI going
away) ends it with a ``completed`` (``interrupted``) footer and the recording closed; ``record`` /
``stop-record`` switch a recording that report reads as a compare. The tests wait on conditions,
never on fixed sleeps. The state and the split are driven by fake records (below; the compare
screen's tests in tests/test_tui_compare.py use them too): a header with ``variants``, steps tagged
``variant`` / ``round``, and ``compare`` records whose analysis analyze_compare makes from those steps.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest
from conftest import cli_env
from test_live import Live as LiveBase
from test_live import _n_steps
from tui_fakes import BLOCK_LAYERS, CPU_CLOCK_MHZ, STEP_NS, make_cpu_sample, make_header, make_step

from llm_moments.engine import cli
from llm_moments.engine.analysis.compare import analyze_compare, from_scan
from llm_moments.engine.analysis.scan import scan
from llm_moments.engine.core.recording import load
from llm_moments.engine.errors import MomentsError
from llm_moments.engine.output.compare import render_compare_json
from llm_moments.engine.session.compare_stream import compare_argv, parser
from llm_moments.engine.session.setup import add_run_options
from llm_moments.engine.session.variants import add_compare_options
from llm_moments.tui.compare_live import BUFFER_STEPS, CHILD_MODULE, MIN_BUFFER_STEPS, CompareFeed, CompareLiveSource
from llm_moments.tui.compare_state import ABSENT, NO_TIMING, TOO_FEW, CompareState
from llm_moments.tui.state import ViewState

TINY = ["--model", "tiny-gpt2", "--no-calibrate", "--threads", "1", "--warmup", "0", "--max-new-tokens", "2",
        "--sample-hz", "5", "--util-hz", "2"]


# -- fake records: what the child sends, the analysis made by the engine's own code ---------------------

VARIANTS = [("base", ""), ("bf16", "--dtype bfloat16"), ("drop", "--drop-layers 2-3"), ("compiled", "--compile")]
BLOCKS = (1, 2, 3, 4)          # BLOCK_LAYERS: embed, blocks.0-3, norm
KINDS = ("prefill", "decode", "decode")


def compare_header(variants=VARIANTS, rounds: int = 12) -> dict[str, Any]:
    h = make_header(device="cpu")
    h["compare"] = {"baseline": variants[0][0], "rounds": rounds, "margin": 0.02,
                    "order": "ABAB/BABA: baseline-first order on even rounds, reversed on odd rounds"}
    h["variants"] = []
    for i, (label, options) in enumerate(variants):
        own = 12_400_000 if "dtype" in options else 0
        h["variants"].append({
            "label": label, "options": options, "settings": {"dtype": "bfloat16"} if "dtype" in options else {},
            "model_object": i, "shares_model_with": None, "own_param_bytes": own,
            "memory": "own weights" if own else ("shares the loaded model object" if i == 0
                                                 else "own module tree, the loaded weights"),
            "per_layer_timing": "compile" not in options,
            "notes": ["blocks 2-3 dropped (2 kept)"] if "drop" in options else []})
    return h


def _ms(label: str, r: int, v: int, kind: str, i: int) -> list[float | None]:
    """Each layer's moment: the fake base × a drift shared by the round × a small jitter of its own."""
    base = make_step(i, kind=kind)["layer_ms"]
    drift = 1.0 + 0.05 * ((r * 7) % 5 - 2)
    jitter = 1.0 + 0.004 * (((r * 3 + v * 5 + i) % 7) - 3)
    out: list[float | None] = []
    for j, x in enumerate(base):
        y = x * drift * jitter
        if label == "bf16" and j in BLOCKS:
            y *= 0.7
        if label == "drop" and j in (3, 4):
            out.append(None)
            continue
        out.append(round(y, 6))
    return out


def compare_steps(variants=VARIANTS, rounds: int = 12) -> list[dict[str, Any]]:
    labels = [l for l, _ in variants]
    steps: list[dict[str, Any]] = []
    for r in range(rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            v = labels.index(label)
            for kind in KINDS:
                i = len(steps)
                s = make_step(i, kind=kind, clock_mhz=CPU_CLOCK_MHZ, layer_ms=_ms(label, r, v, kind, i))
                if label == "compiled":   # the hooks do not fire inside a compiled graph: no moments
                    s.update(layer_ms=[None] * len(BLOCK_LAYERS), layer_cycles=[None] * len(BLOCK_LAYERS),
                             hooks_fired=False)
                s.update(variant=label, round=r)
                steps.append(s)
    return steps


def compare_record(header: dict[str, Any], steps: list[dict[str, Any]], rounds_done: int,
                   final: bool = False, output: dict | None = None) -> dict[str, Any]:
    """The record the engine child sends, its analysis made by the engine's code from ``steps``."""
    result = analyze_compare(header, [s for s in steps if s["round"] < rounds_done], output=output)
    labels = [v["label"] for v in header["variants"]]
    return {"type": "compare", "t_ns": rounds_done * STEP_NS, "rounds_done": rounds_done,
            "rounds": header["compare"]["rounds"], "order": labels if rounds_done % 2 == 0 else labels[::-1],
            "final": final, "analysis_round": rounds_done, "analysis": json.loads(render_compare_json(result))}


OUTPUT = {"base": {"measure": "token_agreement", "texts": 12, "tokens": 48, "token_agreement": 1.0},
          "bf16": {"measure": "token_agreement", "texts": 12, "tokens": 48, "token_agreement": 0.875},
          "drop": {"measure": "token_agreement", "texts": 12, "tokens": 48, "token_agreement": 0.25},
          "compiled": {"measure": "token_agreement", "texts": 12, "tokens": 48, "token_agreement": 1.0}}


def compare_session(variants=VARIANTS, rounds: int = 12, analysed: int = 10) -> list[dict[str, Any]]:
    """Header, the steps of ``rounds`` rounds with a clock sample after each round, and the compare
    record made after round ``analysed`` (so the screen says 'ratios as of round 10')."""
    header = compare_header(variants, rounds=rounds + 4)
    steps = compare_steps(variants, rounds)
    out: list[dict[str, Any]] = [header]
    per_round = len(variants) * len(KINDS)
    for r in range(rounds):
        out += steps[r * per_round:(r + 1) * per_round]
        out.append(make_cpu_sample((r + 1) * per_round * STEP_NS))
        if r + 1 == analysed:
            out.append(compare_record(header, steps, analysed, output=OUTPUT))
    return out



def args_for(*extra: str) -> argparse.Namespace:
    return cli.build_parser()[0].parse_args(["compare", *TINY, *extra])


class Live(LiveBase):
    """A CompareLiveSource, what its child sent (raw, before the split) and what the main screen got."""

    WAIT_S = 90.0

    def __init__(self, source: CompareLiveSource):
        self.source, self.records, self.main = source, [], []
        self._raw = source.feed.split
        source.feed.split = self._split   # keep the raw records too

    def _split(self, records):
        records = list(records)
        self.records += records
        out = self._raw(records)
        self.main += out
        return out

    def pump(self) -> list[dict]:
        self.source.drain()   # the split keeps the raw records (self._split)
        return self.records

    def analyses(self) -> list[dict]:
        return [r for r in self.of_type("compare") if "analysis" in r]


@pytest.fixture
def live(monkeypatch, tmp_path):
    for k, v in cli_env().items():
        monkeypatch.setenv(k, v)
    texts = tmp_path / "short.txt"   # short prompts: cheap rounds
    texts.write_text("The cat sat\nA short prompt\nHello there\nOne two three\n")
    made: list[Live] = []

    def start(*extra: str) -> Live:
        src = CompareLiveSource(args_for("--inputs", str(texts), *extra))
        src.start()
        made.append(Live(src))
        return made[-1]

    yield start
    for lv in made:
        if lv.source.proc is not None and lv.source.proc.poll() is None:
            lv.source.proc.kill()
            lv.source.proc.wait()


# -- the child --------------------------------------------------------------------------------------


def test_the_child_streams_a_compare_whose_final_analysis_is_its_recordings(live, tmp_path):
    path = tmp_path / "run.jsonl"
    lv = live("--rounds", "4", "--variant", "base:", "--variant", "drop: --drop-layers 2-5", "--record", str(path))
    lv.wait(lambda rs: any(r.get("type") == "footer" for r in rs), why="the footer")
    lv.source.proc.wait(30)
    assert lv.source.exit_code == 0 and lv.of_type("error") == []
    steps = lv.of_type("step")
    assert {s["variant"] for s in steps} == {"base", "drop"}
    assert {s["round"] for s in steps} == {0, 1, 2, 3}
    progress = lv.of_type("compare")
    assert [r["rounds_done"] for r in progress] == [0, 1, 2, 3, 4, 4] and all(r["rounds"] == 4 for r in progress)
    assert [r["order"] for r in progress[:3]] == [["base", "drop"], ["drop", "base"], ["base", "drop"]]
    analyses = lv.analyses()
    # from round 1 on, every few rounds (fewer when the statistics would cost too much), and the final one
    rounds = [r["analysis_round"] for r in analyses]
    assert rounds[0] == 1 and rounds == sorted(rounds) and rounds[-1] == 4 and analyses[-1]["final"] is True
    assert all(a["analysis"]["variants"] == ["base", "drop"] for a in analyses)
    final = analyses[-1]["analysis"]
    rows = {r["name"]: r for r in final["layers"]}
    assert "drop" in rows["transformer.h.3"]["absent_in"] and 0.0 <= final["output"]["drop"]["token_agreement"] <= 1
    # exactly what report computes from the recording (same steps, same header, same output agreement)
    assert json.loads(render_compare_json(from_scan(scan(path)))) == final
    assert lv.records.index(analyses[-1]) < lv.records.index(lv.of_type("footer")[0])
    rec = load(path)
    assert rec.footer["reason"] == "completed" and rec.warnings == []
    assert [s["index"] for s in rec.steps] == [s["index"] for s in steps]
    assert all(s["variant"] in ("base", "drop") and isinstance(s["round"], int) for s in rec.steps)
    assert "compare" not in {r.get("type") for r in map(json.loads, path.read_text().splitlines())}
    costs = lv.of_type("overhead")   # each monitor's cost, with the variants it times
    assert costs and all(set(r["variants"]) <= {"base", "drop"} and r["variants"] for r in costs)
    # the main screen got the baseline's steps only
    main_steps = [r for r in lv.main if r.get("type") == "step"]
    assert main_steps and {s["variant"] for s in main_steps} == {"base"}
    assert len(main_steps) == sum(s["variant"] == "base" for s in steps)
    state = lv.source.compare_state
    assert state.final and state.rounds_done == 4 and state.footer["reason"] == "completed"
    assert state.steps == {"base": len(main_steps), "drop": len(steps) - len(main_steps)}


def test_record_stop_record_then_quit_close_both_recordings(live, tmp_path, capsys):
    """--record a.jsonl from the start; stop-record closes it mid-session (output so far, footer);
    record b.jsonl records the rest (the session's header first); quit closes b with ``completed``.
    Both are compare recordings that report and analyze_compare read. ops is refused with a status."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    lv = live("--rounds", "100000", "--variant", "base:", "--variant", "t1: --threads 1", "--record", str(a))
    lv.wait(lambda rs: len(lv.analyses()) >= 1, why="a first analysis")
    lv.source._send({"cmd": "ops", "layer": 1, "steps": 2})
    lv.wait(lambda rs: any(r.get("type") == "status" and "ops mode" in r.get("message", "") for r in rs),
            why="the refusal of ops")
    lv.source.stop_recording()
    lv.wait(lambda rs: [r.get("path") for r in lv.of_type("recording")] == [str(a), None], why="a closed")
    assert lv.source.start_recording(str(b)) == str(b)
    lv.wait(lambda rs: _n_steps(b) >= 6, why="steps in b.jsonl")
    lv.source.stop(timeout_s=60)
    assert lv.source.exit_code == 0
    assert lv.of_type("footer")[0]["reason"] == "completed" and lv.of_type("error") == []
    for path in (a, b):
        rec = load(path)
        assert rec.warnings == [] and rec.footer["reason"] == "completed"
        assert rec.footer["steps"] == len(rec.steps) > 0
        assert [v["label"] for v in rec.header["variants"]] == ["base", "t1"]
        assert {s["variant"] for s in rec.steps} == {"base", "t1"}
        result = analyze_compare(rec.header, rec.steps)
        assert result.labels == ["base", "t1"] and result.kinds
        assert cli.main(["report", str(path), "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["variants"] == ["base", "t1"] and doc["output"]["t1"]["token_agreement"] == 1.0
    a_idx = [s["index"] for s in load(a).steps]
    b_idx = [s["index"] for s in load(b).steps]
    assert a_idx[0] == 0 and a_idx[-1] < b_idx[0]       # a: from the start; b: after it, none twice


def test_the_ui_going_away_ends_it_interrupted_with_the_recording_closed(live, tmp_path):
    path = tmp_path / "c.jsonl"
    lv = live("--rounds", "100000", "--variant", "base:", "--variant", "B:", "--record", str(path))
    lv.wait(lambda rs: _n_steps(path) >= 4, why="recorded steps")
    lv.source.stop(timeout_s=60, interrupted=True)
    assert lv.source.exit_code == 130
    rec = load(path)
    assert rec.warnings == [] and rec.footer["reason"] == "interrupted"
    assert analyze_compare(rec.header, rec.steps).labels == ["base", "B"]
    assert lv.wait(lambda rs: any(r.get("type") == "footer" for r in rs), timeout=5)


# -- options reach the child from their one definition -------------------------------------------------


def _actions(add) -> list[argparse.Action]:
    probe = argparse.ArgumentParser(add_help=False)
    add(probe)
    return [a for a in probe._actions if a.option_strings]


def _other_value(action: argparse.Action) -> str | None:
    if action.nargs == 0:
        return None
    if action.choices:
        return [c for c in action.choices if c != action.default][-1]
    if action.type is not None and action.type.__name__ in ("positive_int", "non_negative_int", "int"):
        return "7"
    if action.type is not None and action.type.__name__ in ("rate_hz", "float"):
        return "0.125"
    return "-odd value=with spaces.jsonl"


def test_every_run_and_compare_option_reaches_the_child_unchanged():
    argv = ["compare"]
    for action in _actions(add_run_options):
        value = _other_value(action)
        argv += [action.option_strings[-1]] if value is None else [f"{action.option_strings[-1]}={value}"]
    specs = ["base:", "bf16: --dtype bfloat16 --attn eager", "-x: --drop-layers 1-2", "q: --quantize int8-dynamic"]
    for spec in specs:
        argv += ["--variant", spec]
    argv += ["--rounds", "7", "--margin", "0.125"]
    given = cli.build_parser()[0].parse_args(argv)
    got = parser().parse_args(compare_argv(given))
    dests = [a.dest for a in _actions(add_run_options) + _actions(add_compare_options)]
    assert len(dests) >= 19 and "variant" in dests
    for dest in dests:
        assert getattr(got, dest) == getattr(given, dest), dest
    assert got.variant == specs
    src = CompareLiveSource(given)
    assert src.argv[1:4] == ["-P", "-m", CHILD_MODULE] and src.is_compare and src.mode == "live"


# -- the compare state (fake records) -----------------------------------------------------------------


def test_the_state_folds_the_engines_records():
    records = compare_session()
    state = CompareState()
    state.apply(records)
    assert state.labels == [l for l, _ in VARIANTS] and state.baseline == "base" and state.others == state.labels[1:]
    assert (state.rounds_done, state.rounds, state.analysis_round, state.final) == (10, 16, 10, False)
    assert state.steps == {label: 12 * 3 for label, _ in VARIANTS}
    assert state.kinds == ["decode", "prefill"] and state.current_kind == "decode"
    doc = next(r for r in records if r["type"] == "compare")["analysis"]
    rows = state.rows()
    assert [r.name for r in rows] == ["step"] + [l["name"] for l in doc["layers"]] and rows[0].is_step
    for row, layer in zip(rows[1:], doc["layers"]):
        assert row.base.p50_ms == layer["variants"]["base"]["p50_ms"]
        e = layer["variants"]["bf16"]
        c = row.cells["bf16"]
        assert (c.p50_ms, c.ratio, c.ci_low, c.ci_high, c.verdict) == (
            e["p50_ms"], e["ratio"], e["ci_low"], e["ci_high"], e["verdict"])
        assert row.cells["compiled"].verdict == NO_TIMING and row.cells["compiled"].ratio is None
    by = {r.name: r for r in rows}
    assert by["blocks.0"].cells["bf16"].verdict == "faster" and by["blocks.0"].cells["bf16"].ratio == pytest.approx(
        0.7, rel=0.01)
    assert by["blocks.2"].cells["drop"].verdict == ABSENT and by["embed"].cells["drop"].verdict == "within-noise"
    assert by["step"].cells["compiled"].ratio == pytest.approx(1.0, abs=0.03)   # its step row still compares
    # the clock-normalized figures are the *_clock_normalized fields
    doc["by_kind"]["decode"]["layers"][1]["variants"]["bf16"]["ratio_clock_normalized"] = 0.123
    state.apply([dict(next(r for r in records if r["type"] == "compare"), analysis=doc)])
    state.toggle_normalized()
    assert state.rows()[2].cells["bf16"].ratio == 0.123 and state.has_normalized()
    state.toggle_normalized()
    assert state.rows()[2].cells["bf16"].ratio != 0.123
    assert state.next_kind() == "prefill" and state.rows()[1].base.p50_ms == doc["by_kind"]["prefill"]["layers"][0][
        "variants"]["base"]["p50_ms"]
    # the output agreement: from the analysis, then the session's last word
    lines = {v.label: v for v in state.variant_lines()}
    assert lines["bf16"].output == "87.5 % of 48 tokens agree" and lines["base"].output == "(baseline)"
    assert lines["drop"].notes == ["blocks 2-3 dropped (2 kept)"] and not lines["compiled"].per_layer_timing
    assert lines["bf16"].memory == "own weights (12.4 MB)" and lines["base"].shown
    state.apply([{"type": "compare_output", "output": {"bf16": {"measure": "max_abs_diff", "texts": 2,
                                                                 "max_abs_diff_last_hidden": 0.25}}}])
    assert {v.label: v.output for v in state.variant_lines()}["bf16"] == "max |Δ| last hidden 0.25"
    assert state.ratios_text() == "ratios as of round 10" and state.rounds_text() == "round 11 of 16"
    assert state.order_text().startswith("this round: base → bf16 → drop → compiled")
    state.apply([{"type": "footer", "reason": "interrupted"}])
    assert state.rounds_text() == "ended (interrupted) after 10 of 16 rounds" and state.order_text() is None


def test_an_early_analysis_says_too_few_rounds_and_a_new_session_starts_over():
    header = compare_header()
    steps = compare_steps(rounds=3)
    state = CompareState()
    state.apply([header, *steps, compare_record(header, steps, 3)])
    by = {r.name: r for r in state.rows()}
    assert by["blocks.0"].cells["bf16"].verdict == TOO_FEW and by["blocks.0"].cells["bf16"].ratio is not None
    assert by["blocks.0"].cells["bf16"].ci_low is None
    assert state.order_text().startswith("this round: compiled → drop → bf16 → base")   # round 4: reversed
    state.apply([compare_header(VARIANTS[:2])])
    assert state.labels == ["base", "bf16"] and state.analysis is None and state.rows() == []
    assert state.ratios_text() == "ratios after the first round" and sum(state.steps.values()) == 0


# -- the split: the main screen gets one variant --------------------------------------------------------


def test_the_main_state_gets_one_variants_steps_and_restarts_on_a_switch():
    feed = CompareFeed()
    records = compare_session()
    out = feed.split(records)
    steps = [r for r in out if r["type"] == "step"]
    assert steps and {s["variant"] for s in steps} == {"base"} and len(steps) == 12 * 3
    assert sum(r["type"] == "sample" for r in out) == 12 and out[0]["variant"] == "base"
    assert any(r["type"] == "compare" for r in out)   # passed on: the main state redraws on it
    main = ViewState()
    main.apply(out)
    assert main.steps_total == 12 * 3 and main.last_step["variant"] == "base"
    assert feed.note() == "4 variants · c: compare"
    assert out[0]["model"]["name"] == "tiny-gpt2 · variant base (baseline)"

    # a monitor's cost reaches the main screen when that monitor times the variant shown
    cost = {"type": "overhead", "t_ns": 1, "window": "period", "steps": 4, "est_pct": 1.5}
    assert feed.split([dict(cost, variants=["drop"])]) == []
    assert feed.split([dict(cost, variants=["bf16", "base"])]) == [dict(cost, variants=["bf16", "base"])]

    assert not feed.show_variant("nope") and feed.shown == "base"
    assert feed.show_variant("bf16")
    new = [dict(s, index=9000 + k) for k, s in enumerate(compare_steps(rounds=1))]
    out = feed.split(new)
    assert out[0] == {"type": "reset"} and out[1]["type"] == "header" and out[1]["variant"] == "bf16"
    assert out[1]["model"]["dtype"] == "bfloat16" and records[0]["model"]["dtype"] == "float32"
    assert out[1]["model"]["name"] == "tiny-gpt2 · variant bf16" and records[0]["model"]["name"] == "tiny-gpt2"
    steps = [r for r in out if r["type"] == "step"]
    assert {s["variant"] for s in steps} == {"bf16"} and len(steps) == 12 * 3 + 3
    assert [s["index"] for s in steps] == sorted(s["index"] for s in steps)
    main.apply(out)
    assert main.steps_total == 12 * 3 + 3 and main.header["variant"] == "bf16"

    # the buffers are bounded (the newest steps kept); an ended session stays ended across a switch
    feed.split([{"type": "footer", "steps": 1, "reason": "completed"}])
    many = [dict(s, index=20_000 + k, variant="drop") for k, s in enumerate(compare_steps(rounds=100))]
    assert not [r for r in feed.split(many) if r["type"] == "step"]   # bf16 is shown
    feed.show_variant("drop")
    out = feed.split([])
    steps = [r for r in out if r["type"] == "step"]
    assert len(steps) == max(MIN_BUFFER_STEPS, BUFFER_STEPS // 4) < len(many)
    assert steps[-1]["index"] == many[-1]["index"] and out[-1]["type"] == "footer"


def test_the_child_analyses_every_few_rounds_within_its_cost_share(monkeypatch):
    """From round 1, every ANALYSIS_EVERY_ROUNDS rounds; skipped while the last analysis took more than
    ANALYSIS_MAX_SHARE of the time since it; the final one always (a fake session: fake steps)."""
    import threading
    from types import SimpleNamespace

    from llm_moments.engine.session import compare_stream

    header = compare_header(VARIANTS[:2], rounds=9)
    steps = compare_steps(VARIANTS[:2], rounds=9)
    session = SimpleNamespace(
        variants=[SimpleNamespace(label=l) for l, _ in VARIANTS[:2]], args=SimpleNamespace(rounds=9),
        header=header, steps=[], _lock=threading.Lock(), output={}, flush=lambda: None, _now_ns=lambda: 0,
        agreement=SimpleNamespace(result=lambda: {}))
    now = [100.0]
    monkeypatch.setattr(compare_stream.time, "monotonic", lambda: now[0])
    sent: list[dict] = []
    analyst = compare_stream._Analyst(session, sent.append)
    analyst.start()
    for r in range(1, 10):
        session.steps = [s for s in steps if s["round"] < r]
        now[0] += 1.0                      # a round takes a second
        if r == 4:
            analyst.cost_s = 0.5           # as if the round-3 analysis had cost half a second
        analyst.on_round(r)
    analyst.final()
    assert [r["rounds_done"] for r in sent] == list(range(10)) + [9]
    analysed = [r["analysis_round"] for r in sent if "analysis" in r]
    # 1, 3 (every 2), then 5 is skipped (0.5 s > 10 % of 2 s) until 5 s have passed: 8; the final 9
    assert analysed == [1, 3, 8, 9] and sent[-1]["final"] is True
    assert sent[-1]["analysis"]["variants"] == ["base", "bf16"] and sent[-1]["analysis"]["rounds"] == 9
    assert sent[0]["order"] == ["base", "bf16"] and sent[1]["order"] == ["bf16", "base"]


def _small_session(listeners=()):
    from llm_moments.engine.session.compare import CompareSession, check_compare_options
    from llm_moments.engine.session.models import load_model

    args = args_for("--rounds", "1", "--variant", "a:", "--variant", "b:")
    texts, variants = check_compare_options(args)
    loaded = load_model(args.model, args.device, args.dtype, args.trust_remote_code)
    session = CompareSession(args, variants, loaded, texts, listeners=list(listeners))
    session.warm_up()
    session.start()
    return session


def test_a_recording_asked_for_after_the_end_is_refused_and_leaves_no_file(tmp_path):
    """`r` between the session's end and the child's exit: one line, no header-only file left open."""
    from llm_moments.engine.session.compare_stream import _Commands

    session = _small_session()
    session.run()
    session.stop("completed")
    late = tmp_path / "late.jsonl"
    with pytest.raises(MomentsError, match="ended"):
        _Commands(session).start_recording(str(late))
    assert not late.exists()


def test_a_recording_lost_on_its_header_is_never_announced_as_on(tmp_path):
    """Disk full on the first write: the UI hears `recording_lost` and `path: None`, last."""
    from llm_moments.engine.core.recording import Recorder, RecordingLost

    told: list[dict] = []
    session = _small_session([lambda r: told.append(r) if r.get("type") in ("recording", "status") else None])
    try:
        rec = Recorder(tmp_path / "x.jsonl")

        def full(*a, **k):
            raise RecordingLost(OSError(28, "No space left on device"), 0, rec.path)

        rec.write = full
        session.switch_recording(rec)
        recs = [t for t in told if t["type"] == "recording"]
        assert recs and recs[-1]["path"] is None, told
        assert any(t.get("recording_lost") for t in told)
    finally:
        session.stop()
