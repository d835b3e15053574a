"""Input streams and summary rendering: small pure functions, checked by value."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from llm_moments.engine.analysis.stats import summarize
from llm_moments.engine.errors import MomentsError
from llm_moments.engine.output.text import render_json, render_text
from llm_moments.engine.output.units import fmt_cycles, fmt_ms, share_bar
from llm_moments.engine.session.inputs import SAMPLE_TEXTS, batches, read_texts

# -- inputs --------------------------------------------------------------------------------------------


def test_builtin_samples_by_default():
    assert read_texts(None) == SAMPLE_TEXTS
    assert read_texts(None) is not SAMPLE_TEXTS  # a copy: callers may change it


def test_plain_lines_and_json_lines(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text('first text\n\n   \n{"text": "from json", "id": 3}\nsecond text  \n', encoding="utf-8")
    assert read_texts(str(path)) == ["first text", "from json", "second text"]


def test_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\n"))
    assert read_texts("-") == ["one", "two"]


@pytest.mark.parametrize("content, message", [
    ('ok\n{"id": 1}\n', ':2: a JSON line needs a string "text" field'),
    ('{"text": 5}\n', ':1: a JSON line needs a string "text" field'),
    ('{"text": "x"\n', ":1: looks like JSON but does not parse"),
    ("", "are empty"),
    ("\n  \n", "are empty"),
])
def test_bad_inputs_files(tmp_path, content, message):
    path = tmp_path / "in.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MomentsError) as info:
        read_texts(str(path))
    assert message in str(info.value) and str(path) in str(info.value)


def test_missing_directory_and_binary_inputs(tmp_path):
    with pytest.raises(MomentsError, match="does not exist"):
        read_texts(str(tmp_path / "missing.txt"))
    with pytest.raises(MomentsError, match="is a directory"):
        read_texts(str(tmp_path))
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(MomentsError, match="not UTF-8"):
        read_texts(str(binary))


def test_batches_wrap_round_when_looping():
    got = batches(["a", "b", "c"], 2, loop=True)
    assert [next(got) for _ in range(4)] == [["a", "b"], ["c", "a"], ["b", "c"], ["a", "b"]]


def test_batches_without_loop_end_with_the_remainder():
    assert list(batches(["a", "b", "c"], 2, loop=False)) == [["a", "b"], ["c"]]
    with pytest.raises(MomentsError):
        next(batches(["a"], 0, loop=False))


# -- rendering -----------------------------------------------------------------------------------------


def _summary():
    ms = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, np.nan]])
    return summarize(["model.embed", "model.layers.0", "model.layers.0.mlp"], [None, None, 1], ms, ms * 2e6,
                     np.array([4.0, 8.0]), np.array(["prefill", "decode"]), np.array([7, 1]))


HEADER = {"model": {"name": "tiny", "architecture": "ToyLM", "parameters": 2_500_000, "dtype": "float32",
                    "random_weights": True},
          "device": {"kind": "cpu", "name": None}, "clock": {"source": "cpu-nominal"},
          "timer": "perf_counter", "depth": "sublayers"}


def test_render_text_has_every_layer_and_every_step_kind():
    text = render_text(_summary(), HEADER)
    for name in ("model.embed", "model.layers.0", "  model.layers.0.mlp", "prefill", "decode"):
        assert name in text
    assert "Moments per layer" in text and "Step time by kind" in text
    assert "ToyLM" in text and "2.5 M params" in text and "[RANDOM WEIGHTS]" in text
    assert "clock cpu-nominal" in text and "depth sublayers" in text
    assert "coverage 83.3%" in text  # (1+2+3+4) / (4+8)
    assert "—" in text  # the child that never fired shows a dash, not 0 or nan
    assert "nan" not in text.lower()


def test_render_text_without_steps():
    empty = summarize(["a"], [None], np.zeros((0, 1)), np.zeros((0, 1)), np.zeros(0), np.array([]), np.zeros(0))
    assert "no steps recorded" in render_text(empty)


def test_render_json_is_json_with_nulls_for_missing_values():
    doc = json.loads(render_json(_summary(), HEADER))
    assert doc["model"]["architecture"] == "ToyLM"
    assert [l["name"] for l in doc["layers"]] == ["model.embed", "model.layers.0", "model.layers.0.mlp"]
    assert doc["layers"][2]["mean_ms"] is None and doc["layers"][2]["count"] == 0
    assert doc["layers"][0]["mean_ms"] == 2.0
    assert [s["kind"] for s in doc["steps"]] == ["prefill", "decode"]
    assert doc["coverage"] == pytest.approx(10 / 12)


def test_number_formats():
    assert fmt_ms(float("nan")) == "—" and fmt_ms(None) == "—"
    assert (fmt_ms(123.456), fmt_ms(1.23456), fmt_ms(0.012345)) == ("123.5", "1.235", "0.0123")
    assert fmt_cycles(math.nan) == "n/a"
    assert (fmt_cycles(1_234_567), fmt_cycles(45_600), fmt_cycles(999), fmt_cycles(2.5e9)) == \
        ("1.23 M", "45.60 k", "999", "2.50 G")
    assert share_bar(1.0) == "█" * 10 and share_bar(0.0) == " " * 10 and share_bar(float("nan")) == ""
    assert share_bar(0.25).startswith("██") and len(share_bar(0.25)) == 10
