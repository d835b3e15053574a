"""``moments compare``: variants of one model run interleaved, per layer × variant statistics.

In-process runs of tiny presets (``--no-calibrate``, a prefill and one decode step per side, many
rounds): an A/A compare flags at most 1 layer in 20, a known effect (4 of 6 blocks dropped) is found
every time, the JSON has its fields and its rule, the recording keeps each step's variant and report /
diff / export read it, bad specs are one line before any model loads, and variants that do not change
weights share the loaded model object. Synthetic recordings (no model) test the estimator itself: a
planted 1.3× among 20 layers under ± 30 % round drift is flagged, A/A under the same drift flags no
more than one row in any of 50 seeds, the sign-test interval is the binomial's order statistics.

These machines are shared and loaded (2 cores, load ~6): the estimator and the rule
(engine/analysis/compare.py) are what keep these tests honest there, not loose assertions.
"""

from __future__ import annotations

import json

import pytest

from llm_moments.engine import cli

COMMON = ["compare", "--headless", "--model", "tiny-gpt2", "--no-calibrate", "--max-new-tokens", "2",
          "--warmup", "1", "--threads", "1", "--sample-hz", "5", "--util-hz", "2"]


def run_json(capsys, *args: str) -> dict:
    code = cli.main([*COMMON, "--format", "json", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def flagged(doc: dict, label: str) -> tuple[int, int]:
    hits = total = 0
    for k in doc["by_kind"].values():
        for row in k["layers"]:
            e = row["variants"].get(label)
            if e and e["verdict"] in ("faster", "slower", "within-noise"):
                total += 1
                hits += e["verdict"] != "within-noise"
    return hits, total


def test_aa_compare_flags_at_most_one_layer_in_twenty(capsys, tmp_path):
    texts = tmp_path / "short.txt"   # short prompts: a cheap prefill, so 24 rounds take a few seconds
    texts.write_text("The cat sat\nA short prompt\nHello there\nOne two three\n")
    doc = run_json(capsys, "--rounds", "24", "--inputs", str(texts), "--variant", "A:", "--variant", "B:")
    hits, total = flagged(doc, "B")
    assert total >= 20  # prefill and decode rows of 10 layers, each with an interval (24 rounds >= min_rounds)
    assert hits <= max(1, total // 20), (hits, total)
    rule = doc["rule"]
    assert rule["rows"]["B"] == 22 and rule["min_rounds"]["B"] <= 24 and rule["margin"] == 0.02
    assert rule["row_confidence"]["B"] == pytest.approx(1 - 0.05 / 22)
    assert doc["output"]["B"]["token_agreement"] == 1.0
    # the same options: one model object, nothing copied
    assert doc["variant_info"]["B"]["model_object"] == doc["variant_info"]["A"]["model_object"]
    assert doc["variant_info"]["B"]["own_param_bytes"] == 0


def _run(args: list[str], path=None, stderr: list | None = None) -> dict:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    record = ["--record", str(path)] if path is not None else []
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([*COMMON, "--format", "json", *record, *args])
    assert code == 0, err.getvalue()
    if stderr is not None:
        stderr.append(err.getvalue())
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def drop_run(tmp_path_factory):
    """base / drop (blocks 2-5 dropped) / t1 (threads: the same model object), recorded; 12 rounds:
    enough for an interval on every row (min_rounds 10 for t1's 22 rows), not for the known effect."""
    path = tmp_path_factory.mktemp("compare") / "run.jsonl"
    err: list[str] = []
    doc = _run(["--rounds", "12", "--variant", "base:", "--variant", "drop: --drop-layers 2-5",
                "--variant", "t1: --threads 1 --attn eager"], path, stderr=err)
    steps = sum(1 for line in path.read_text().splitlines() if '"type":"step"' in line.replace(" ", ""))
    assert f"recorded {steps} steps to {path}" in err[0], err[0]   # the user is told where it went
    return path, doc


def test_known_effect_dropped_blocks_are_absent_and_the_step_is_faster():
    """4 of 6 blocks dropped: the prefill step takes about half the time (measured 0.49-0.61 here under
    load), the decode step, where the 50k-word head dominates, about 0.6-0.7. The prefill step must be
    called faster (the family-wise interval wholly below 0.98) every time; the decode step must be
    clearly faster by its estimate and never called slower."""
    doc = _run(["--rounds", "30", "--variant", "base:", "--variant", "drop: --drop-layers 2-5"])
    assert doc["kind"] == "decode"
    rows = {r["name"]: r for r in doc["layers"]}
    for i in range(2, 6):
        assert "drop" in rows[f"transformer.h.{i}"]["absent_in"]
        assert "drop" not in rows[f"transformer.h.{i}"]["variants"]
    assert "drop" in rows["transformer.h.0"]["variants"]
    prefill = doc["by_kind"]["prefill"]["step"]["drop"]
    assert prefill["verdict"] == "faster" and prefill["ratio"] < 0.8 and prefill["rounds"] == 30, prefill
    decode = doc["step"]["drop"]
    assert decode["ratio"] < 0.9 and decode["verdict"] in ("faster", "within-noise"), decode
    assert doc["variant_info"]["drop"]["own_param_bytes"] == 0  # its own module tree, the loaded weights


def test_json_fields(drop_run):
    _, doc = drop_run
    assert doc["variants"] == ["base", "drop", "t1"] and doc["baseline"] == "base"
    for row in doc["layers"]:
        assert set(row["variants"]) <= {"base", "drop", "t1"}
        base = row["variants"]["base"]
        assert {"p50_ms", "p99_ms", "cycles_p50"} <= set(base)
        e = row["variants"]["t1"]
        for key in ("p50_ms", "p99_ms", "cycles_p50", "ratio", "ci_low", "ci_high", "verdict",
                    "ratio_clock_normalized"):
            assert key in e, key
        assert e["ci_low"] <= e["ratio"] <= e["ci_high"]
        assert e["verdict"] in ("faster", "slower", "within-noise")
    assert set(doc["by_kind"]) == {"prefill", "decode"}
    assert 0.0 <= doc["output"]["drop"]["token_agreement"] <= 1.0
    assert doc["output"]["t1"]["token_agreement"] == 1.0
    info = doc["variant_info"]
    assert info["t1"]["shares_model_with"] == "base" and info["t1"]["settings"] == {"threads": 1, "attn": "eager"}


def test_recording_keeps_the_variant_and_report_diff_export_read_it(drop_run, capsys, tmp_path):
    path, doc = drop_run
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    header = lines[0]
    assert header["schema"] == "moments/1" and [v["label"] for v in header["variants"]] == ["base", "drop", "t1"]
    steps = [r for r in lines if r["type"] == "step"]
    assert {s["variant"] for s in steps} == {"base", "drop", "t1"}
    assert all(len(s["layer_ms"]) == len(header["layers"]) for s in steps)
    drop = [s for s in steps if s["variant"] == "drop"]
    names = [l["name"] for l in header["layers"]]
    assert all(s["layer_ms"][names.index("transformer.h.2")] is None for s in drop)
    assert lines[-1]["type"] == "footer"

    assert cli.main(["report", str(path), "--format", "json"]) == 0
    back = json.loads(capsys.readouterr().out)
    assert back["variants"] == doc["variants"]
    assert back["output"] == doc["output"]
    assert {r["name"] for r in back["layers"]} == {r["name"] for r in doc["layers"]}

    assert cli.main(["report", str(path)]) == 0
    text = capsys.readouterr().out
    assert "drop / base" in text and "absent" in text

    assert cli.main(["report", str(path), "--variant", "drop"]) == 0
    assert "transformer.h.5" in capsys.readouterr().out

    assert cli.main(["diff", f"{path}#base", f"{path}#drop", "--format", "json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert "transformer.h.2" in diff["only_in_a"] or diff["b_steps"] > 0

    assert cli.main(["diff", str(path), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "#LABEL" in err

    assert cli.main(["report", str(path), "--variant", "nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1

    csv_path = tmp_path / "run.csv"
    assert cli.main(["export", str(path), "--format", "csv", "-o", str(csv_path)]) == 0
    capsys.readouterr()
    rows = csv_path.read_text().splitlines()
    assert rows[0].endswith(",variant") and rows[1].split(",")[-1] in ("base", "drop", "t1")


@pytest.mark.parametrize("variants, words", [
    (["base"], "LABEL: OPTIONS"),
    (["base:", "x: --model minilm"], "--model is common"),
    (["base:", "x: --record r.jsonl"], "--record is common"),
    (["base:", "x: --steps 3"], "--steps is common"),
    (["base:", "x: --attn flash"], "invalid choice"),
    (["base:", "x: --drop-layers 9"], "blocks 0 to 5"),
    (["base:", "x: --drop-layers 0-5"], "every block"),
    (["base:", "x: --drop-layers 3-a"], "--drop-layers"),
    (["base:", "base: --threads 1"], "labels must differ"),
    (["base:"], "at least two"),
    (["base:", "x: --quantize int8-dynamic --dtype bfloat16"], "float32"),
    (["base:", "x: --bogus"], "unrecognized"),
    (["base:", ": --threads 1"], "label"),
])
def test_bad_variant_specs_are_one_line_before_any_model_loads(monkeypatch, capsys, variants, words):
    from llm_moments.engine.session import models

    def no_load(*a, **k):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(models, "load_model", no_load)
    args = [w for v in variants for w in ("--variant", v)]
    assert cli.main([*COMMON, "--rounds", "2", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


@pytest.mark.parametrize("margin", ["0.6", "-0.01", "nan"])
def test_bad_margin_is_one_line_before_any_model_loads(monkeypatch, capsys, margin):
    from llm_moments.engine.session import models

    def no_load(*a, **k):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(models, "load_model", no_load)
    assert cli.main([*COMMON, "--rounds", "2", "--margin", margin, "--variant", "a:", "--variant", "b:"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--margin" in err, err


def test_cache_variant_on_an_encoder_is_refused(monkeypatch, capsys):
    code = cli.main(["compare", "--model", "minilm", "--variant", "a:", "--variant", "b: --cache static"])
    assert code == 2 and "does not generate" in capsys.readouterr().err


def test_memory_sharing_rule():
    import argparse

    from llm_moments.engine.session.compare import CompareSession, check_compare_options
    from llm_moments.engine.session.models import load_model

    p = argparse.ArgumentParser()
    from llm_moments.engine.cli.parser import _add_compare_parser

    _add_compare_parser(p.add_subparsers(dest="command"))
    args = p.parse_args([*COMMON, "--variant", "base:", "--variant", "t: --threads 2 --batch-size 2",
                         "--variant", "attn: --attn eager --cache static", "--variant", "bf16: --dtype bfloat16",
                         "--variant", "int8: --quantize int8-dynamic", "--variant", "drop: --drop-layers 5"])
    texts, variants = check_compare_options(args)
    loaded = load_model("tiny-gpt2", "cpu")
    s = CompareSession(args, variants, loaded, texts)
    model = {label: s.object_of[label].model for label in ("base", "t", "attn", "bf16", "int8", "drop")}
    assert model["base"] is loaded.model and model["t"] is loaded.model and model["attn"] is loaded.model
    for label in ("bf16", "int8", "drop"):
        assert model[label] is not loaded.model
    info = {v.label: s.variant_info(v) for v in variants}
    assert info["t"]["own_param_bytes"] == 0 and info["t"]["shares_model_with"] == "base"
    params = sum(p.numel() for p in loaded.model.parameters())
    assert info["bf16"]["own_param_bytes"] == pytest.approx(params * 2, rel=0.01)
    assert 0 < info["int8"]["own_param_bytes"] < params * 4
    assert info["drop"]["own_param_bytes"] == 0   # the kept blocks' weights are the loaded ones
    drop_params = {id(p) for p in model["drop"].parameters()}
    assert drop_params <= {id(p) for p in loaded.model.parameters()}
    assert model["drop"].config.num_hidden_layers == 5 and loaded.model.config.num_hidden_layers == 6


def test_encoder_dtype_variant_reports_the_output_difference(capsys):
    code = cli.main(["compare", "--headless", "--model", "minilm", "--no-calibrate", "--rounds", "2", "--warmup", "0",
                     "--threads", "1", "--format", "json", "--variant", "fp32:", "--variant", "bf16: --dtype bfloat16"])
    out = capsys.readouterr()
    assert code == 0, out.err
    doc = json.loads(out.out)
    assert doc["kind"] == "encode"
    assert doc["output"]["fp32"]["max_abs_diff_last_hidden"] == 0.0
    assert doc["output"]["bf16"]["max_abs_diff_last_hidden"] > 1e-4


# -- the estimator on synthetic data (no model) ---------------------------------------------------

def synthetic(seed: int, layers: int = 20, rounds: int = 40, planted: dict[int, float] | None = None,
              drift: float = 0.3, side: float = 0.03, noise: float = 0.1, spikes: float = 0.05
              ) -> tuple[dict, list[dict]]:
    """A compare recording's header and steps: ``layers`` flat layers of 0.5-3 ms, variants A (the
    baseline) and B; every round the machine's speed drifts by up to ± ``drift`` (both sides alike),
    each side by ± ``side`` more, each moment by a log-normal ``noise`` and, with probability ``spikes``, a
    3-10× hiccup (a preemption); B's layer i is ``planted[i]`` × slower. Two decode steps per side,
    ABAB / BABA, the clock recorded (the clock-normalized view is computed too)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.uniform(0.5, 3.0, layers)
    effect = np.ones(layers)
    for i, f in (planted or {}).items():
        effect[i] = f
    header = {"layers": [{"name": f"layer.{i}", "parent": None} for i in range(layers)],
              "variants": [{"label": "A"}, {"label": "B"}], "compare": {"baseline": "A"},
              "clock": {"source": "synthetic", "nominal_mhz": 3000.0}}
    steps = []
    for r in range(rounds):
        speed = rng.uniform(1 - drift, 1 + drift)
        for label in ("A", "B") if r % 2 == 0 else ("B", "A"):
            f = speed * rng.uniform(1 - side, 1 + side)
            for _ in range(2):
                ms = base * f * np.exp(rng.normal(0, noise, layers))
                ms *= np.where(rng.random(layers) < spikes, rng.uniform(3, 10, layers), 1.0)
                if label == "B":
                    ms *= effect
                steps.append({"type": "step", "kind": "decode", "variant": label, "round": r,
                              "wall_ms": float(ms.sum() * 1.05), "layer_ms": [float(x) for x in ms],
                              "clock_mhz": 3000.0 * rng.uniform(0.9, 1.0)})
    return header, steps


def verdicts(result, key: str = "verdict") -> dict[str, str]:
    rows = result.kinds["decode"]["layers"]
    return {row["name"]: row["variants"]["B"][key] for row in rows}


def test_sign_interval_is_the_order_statistics_of_the_binomial():
    import math

    from llm_moments.engine.analysis.compare import median_interval, min_rounds, sign_rank

    # n = 40 at 95 %: the 14th and 27th values (P(Bin(40, 1/2) <= 13) = 0.019 <= 0.025 < P(<= 14) = 0.040)
    assert sign_rank(40, 0.05) == 14
    for n in (5, 10, 24, 40, 101, 1000):
        for alpha in (0.05, 0.01, 0.05 / 22):
            k = sign_rank(n, alpha)
            def cdf(j: int, n: int = n) -> float:
                return sum(math.comb(n, i) for i in range(j + 1)) / 2 ** n

            if k:
                assert cdf(k - 1) <= alpha / 2 < cdf(k), (n, alpha, k)
            else:
                assert cdf(0) > alpha / 2
    for alpha in (0.05, 0.05 / 22, 0.05 / 200):
        need = min_rounds(alpha)
        assert sign_rank(need, alpha) >= 1 and sign_rank(need - 1, alpha) == 0
    import numpy as np

    d = np.arange(40, dtype=float)
    med, lo, hi = median_interval(d[::-1].copy(), 0.05)
    assert (med, lo, hi) == (19.5, 13.0, 26.0)


def test_synthetic_planted_slowdown_is_flagged_among_twenty_drifting_layers():
    from llm_moments.engine.analysis.compare import analyze_compare

    for seed in range(10):
        res = analyze_compare(*synthetic(seed, planted={7: 1.3}))
        v = verdicts(res)
        assert v["layer.7"] == "slower", (seed, res.kinds["decode"]["layers"][7]["variants"]["B"])
        assert sum(x != "within-noise" for x in v.values()) <= 2, (seed, v)
        assert verdicts(res, "verdict_clock_normalized")["layer.7"] == "slower"
        e = res.kinds["decode"]["layers"][7]["variants"]["B"]
        assert 1.02 < e["ci_low"] <= e["ratio"] <= e["ci_high"] and abs(e["ratio"] - 1.3) < 0.15
        assert res.rule["rows"]["B"] == 21 and res.rule["margin"] == 0.02


def test_synthetic_aa_with_drift_flags_at_most_one_row_over_many_seeds():
    from llm_moments.engine.analysis.compare import analyze_compare, flagged

    counts = []
    for seed in range(50):
        res = analyze_compare(*synthetic(1000 + seed))
        hits, total = flagged(res, "B")
        assert total == 20
        step = res.kinds["decode"]["step"]["B"]["verdict"]
        counts.append(hits + (step != "within-noise"))
        assert counts[-1] <= 1, (seed, verdicts(res))
    assert sum(counts) / len(counts) <= 0.5, counts


def test_synthetic_unpaired_drift_would_hide_the_effect_pairing_finds_it():
    """The same planted 1.3× under ± 30 % drift: the per-round pairing removes the drift, so the
    interval is narrow; the spread of the drift alone (unpaired medians) is wider than the effect."""
    import numpy as np

    from llm_moments.engine.analysis.compare import analyze_compare

    header, steps = synthetic(3, planted={7: 1.3})
    e = analyze_compare(header, steps).kinds["decode"]["layers"][7]["variants"]["B"]
    a = np.array([s["layer_ms"][7] for s in steps if s["variant"] == "A"])
    assert e["ci_high"] / e["ci_low"] < 1.3 < np.percentile(a, 90) / np.percentile(a, 10)


def test_margin_and_too_few_rounds():
    from llm_moments.engine.analysis.compare import TOO_FEW, analyze_compare

    # a real 1 % slowdown, measured precisely: within the 2 % margin, slower with --margin 0
    header, steps = synthetic(5, planted={3: 1.01}, side=0.0, noise=0.002, spikes=0.0)
    assert verdicts(analyze_compare(header, steps))["layer.3"] == "within-noise"
    assert verdicts(analyze_compare(header, steps, margin=0.0))["layer.3"] == "slower"
    header["compare"]["margin"] = 0.0   # a session's --margin is in its header, for report
    assert verdicts(analyze_compare(header, steps))["layer.3"] == "slower"
    # 6 rounds cannot bound 21 rows at 1 - 0.05 / 21: no interval, no verdict
    res = analyze_compare(*synthetic(5, planted={3: 2.0}, rounds=6))
    e = res.kinds["decode"]["layers"][3]["variants"]["B"]
    assert e["verdict"] == TOO_FEW and e["ci_low"] is None and e["ratio"] > 1.5
    assert res.rule["min_rounds"]["B"] == 10


# -- --compile: a real torch.compile (inductor) variant ---------------------------------------------

@pytest.fixture(scope="module")
def inductor():
    """Skips the test when torch.compile (inductor) cannot compile and run a tiny function here."""
    import torch

    try:
        x = torch.randn(8)
        ok = bool(torch.allclose(torch.compile(lambda x: torch.sin(x) * 2 + 1, dynamic=True)(x), torch.sin(x) * 2 + 1))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        pytest.skip(f"torch.compile (inductor) cannot compile here: {type(exc).__name__}: {first}")
    if not ok:
        pytest.skip("torch.compile (inductor) gives a wrong result here")


def _said_in_warm_up(monkeypatch) -> list[str]:
    """What warm_up tells its on_status (the CLI shows it on its status line)."""
    from llm_moments.engine.session.compare import CompareSession

    said: list[str] = []
    warm_up = CompareSession.warm_up
    monkeypatch.setattr(CompareSession, "warm_up", lambda self, on_status=None: warm_up(
        self, on_status=lambda m: (said.append(m), on_status and on_status(m))))
    return said


def test_compiled_variant_end_to_end(inductor, monkeypatch, capsys):
    """tiny-gpt2, the compiled variant with two blocks (a small graph: inductor compiles it in seconds),
    3 new tokens: the prefill, the first and a later decode step are the graphs a decoder needs, all
    compiled in warm-up. Step rows compare; its layers say "no per-layer timing", never numbers."""
    import math

    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()   # graphs of this model class from an earlier test would be reused
    said = _said_in_warm_up(monkeypatch)
    graphs = counters["stats"]["unique_graphs"]
    code = cli.main([*COMMON, "--max-new-tokens", "3", "--rounds", "3", "--format", "json",
                     "--variant", "base:", "--variant", "c: --compile --drop-layers 2-5"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert counters["stats"]["unique_graphs"] > graphs           # it really compiled
    assert said and said[0].startswith("compiling c (torch.compile")
    assert "Traceback" not in out.err and "compiled again" not in out.err   # no compile in a measured step
    assert "no layer hook fired" not in out.err                  # expected here, said in the notes instead
    doc = json.loads(out.out)
    assert doc["variants"] == ["base", "c"]
    info = doc["variant_info"]["c"]
    assert info["per_layer_timing"] is False and info["settings"]["compile"] is True
    assert any("torch.compile" in n and "no per-layer timing" in n for n in info["notes"])
    assert set(doc["by_kind"]) == {"prefill", "decode"}
    for kind in doc["by_kind"].values():
        step = kind["step"]
        assert step["c"]["steps"] == step["base"]["steps"] > 0
        assert math.isfinite(step["c"]["ratio"]) and step["c"]["ratio"] > 0 and step["c"]["p50_ms"] > 0
        for row in kind["layers"]:
            c = row["variants"]["c"]
            assert c["verdict"] == "no per-layer timing" and c["p50_ms"] is None and c["ratio"] is None
        assert any((r["variants"].get("base") or {}).get("p50_ms") for r in kind["layers"])  # base's are timed
    assert doc["output"]["c"]["measure"] == "token_agreement"


def test_compile_failure_is_one_line_and_the_variant_runs_uncompiled(monkeypatch, capsys):
    """No working C++ compiler (inductor's own error, pages long): the variant says so in one line
    (stderr, status, notes) and runs its eager forward, per-layer timing included. Needs no working
    inductor: where it cannot compile at all, it fails the same way."""
    import torch
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()                                           # no graph to reuse: it must compile
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/cc",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)   # nor a compiled graph from disk
    said = _said_in_warm_up(monkeypatch)
    code = cli.main([*COMMON, "--rounds", "2", "--format", "json",
                     "--variant", "base:", "--variant", "c: --compile --drop-layers 2-5"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "Traceback" not in out.err
    lines = [l for l in out.err.splitlines() if "torch.compile failed" in l]
    assert len(lines) == 1 and lines[0].startswith("moments: c: torch.compile failed here, running uncompiled: ")
    assert "compiler" in lines[0] and len(lines[0]) < 300, lines
    assert said[0].startswith("compiling c") and said[1] == lines[0].removeprefix("moments: ")
    doc = json.loads(out.out)
    info = doc["variant_info"]["c"]
    assert info["per_layer_timing"] is True
    assert [n for n in info["notes"] if "torch.compile" in n] == [
        n for n in info["notes"] if n.startswith("torch.compile failed here (") and "per-layer timing kept" in n]
    rows = {r["name"]: r for r in doc["layers"]}
    assert rows["transformer.h.0"]["variants"]["c"]["p50_ms"] > 0       # eager: the layers are timed
    assert "c" in rows["transformer.h.3"]["absent_in"]


def test_a_compile_during_measured_steps_is_said_once(inductor):
    """The warm-up compiles; a shape it did not run (size 1 is specialized: a new graph) compiles
    inside a measured step: one status says that step's time includes compiling."""
    import torch
    from torch import nn

    from llm_moments.engine.session.variants import ModelObject, compile_forward

    class Monitor:   # a started one: what it is told
        started, stopped, said = True, False, []
        note_status = said.append

    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    obj = ModelObject(model, ["c"])
    compile_forward(obj)
    want = model[1](model[0](torch.ones(3, 8)))
    assert torch.allclose(model(torch.ones(3, 8)), want)   # warm-up: compiles, no monitor yet
    obj.monitor = mon = Monitor()
    model(torch.randn(5, 8))                               # dynamic sizes: the same graph
    assert mon.said == [] and obj.late_compiles == 0
    model(torch.randn(1, 8))
    model(torch.randn(1, 8))
    assert obj.late_compiles == 1 and len(mon.said) == 1
    assert mon.said[0].startswith("c: torch.compile compiled again during a measured step")
