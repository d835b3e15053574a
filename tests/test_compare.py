"""``moments compare``: variants of one model run interleaved, per layer × variant statistics.

In-process runs of tiny presets (``--no-calibrate``, few steps per round, many rounds): an A/A compare
flags at most 1 layer in 20, a known effect (dropped blocks) is found, the JSON has its fields, the
recording keeps each step's variant and report / diff / export read it, bad specs are one line
before any model loads, and variants that do not change weights share the loaded model object.
"""

from __future__ import annotations

import json

import pytest

from llm_moments.engine import cli

COMMON = ["compare", "--headless", "--model", "tiny-gpt2", "--no-calibrate", "--max-new-tokens", "3",
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


def test_aa_compare_flags_at_most_one_layer_in_twenty(capsys):
    doc = run_json(capsys, "--rounds", "40", "--variant", "A:", "--variant", "B:")
    hits, total = flagged(doc, "B")
    assert total >= 20  # prefill and decode rows of 10 layers
    assert hits <= max(1, total // 20), (hits, total)
    assert doc["output"]["B"]["token_agreement"] == 1.0
    # the same options: one model object, nothing copied
    assert doc["variant_info"]["B"]["model_object"] == doc["variant_info"]["A"]["model_object"]
    assert doc["variant_info"]["B"]["own_param_bytes"] == 0


@pytest.fixture(scope="module")
def drop_run(tmp_path_factory):
    """base / drop (blocks 2-5 dropped) / t1 (threads: the same model object), recorded."""
    path = tmp_path_factory.mktemp("compare") / "run.jsonl"
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([*COMMON, "--format", "json", "--rounds", "24", "--record", str(path),
                         "--variant", "base:", "--variant", "drop: --drop-layers 2-5",
                         "--variant", "t1: --threads 1 --attn eager"])
    assert code == 0, err.getvalue()
    return path, json.loads(out.getvalue())


def test_known_effect_dropped_blocks_are_absent_and_the_step_is_faster(drop_run):
    _, doc = drop_run
    assert doc["kind"] == "decode"
    rows = {r["name"]: r for r in doc["layers"]}
    for i in range(2, 6):
        assert "drop" in rows[f"transformer.h.{i}"]["absent_in"]
        assert "drop" not in rows[f"transformer.h.{i}"]["variants"]
    assert "drop" in rows["transformer.h.0"]["variants"]
    step = doc["step"]["drop"]
    assert step["ratio"] < 0.9 and step["verdict"] == "faster", step
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


def test_cache_variant_on_an_encoder_is_refused(monkeypatch, capsys):
    code = cli.main(["compare", "--model", "minilm", "--variant", "a:", "--variant", "b: --cache static"])
    assert code == 2 and "does not generate" in capsys.readouterr().err


def test_memory_sharing_rule():
    import argparse

    from llm_moments.engine.session.compare import CompareSession, check_compare_options
    from llm_moments.engine.session.models import load_model

    p = argparse.ArgumentParser()
    cli._add_compare_parser(p.add_subparsers(dest="command"))
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
