"""Work as the model runs, against torch's FlopCounterMode, per top-level layer, through a real session.

Each model runs under the Monitor (the header's coefficients, the step's ``kv_len`` and
``head_tokens`` as recorded) while FlopCounterMode counts every call; ``step_work`` of the recorded
step must match the count within 3 % for each top-level layer. Eager attention, because on CPU
FlopCounterMode does not count the SDPA kernel (``_scaled_dot_product_flash_attention_for_cpu`` is
not in its registry). Cases: a prefill as generate() runs it (``logits_to_keep=1``), a decode, a
direct ``model(ids)`` (every position's logits), and where it matters a sliding-window decode past the
window, a static-cache decode (attention spans ``max_cache_len``), an encoder with a pooler (one
position per sequence).

Norms: FlopCounterMode counts matmuls only, so a layer that holds only norms (a final norm) counts 0
there. Rule for such layers: their work must be exactly the norm estimate, 5 · dim FLOPs per norm
and position, and nothing else. Blocks carry the same small estimate on top of their matmuls, well
inside the 3 %.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch
from conftest import FakeClock, _quiet_transformers
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from llm_moments import Monitor
from llm_moments.engine.core.recording import load
from llm_moments.engine.core.work import header_coeffs, step_work

V, B, S = 128, 2, 12      # vocab, batch, prompt
WINDOW, LONG = 8, 20      # Mistral's sliding window, and a past longer than it
STATIC = 32               # StaticCache(max_cache_len)
TOLERANCE = 0.03


def _configs():
    from transformers import BertConfig, GPT2Config, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

    ids = {"vocab_size": V, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    gqa = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, **ids)
    return {
        "gpt2": GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **ids),
        "bert-minilm": BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                                  max_position_embeddings=128, vocab_size=V, pad_token_id=0),
        "llama-gqa": LlamaConfig(**gqa),
        "qwen2": Qwen2Config(**gqa),
        "mistral-sw": MistralConfig(sliding_window=WINDOW, **gqa),
        "opt": OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                         word_embed_proj_dim=64, max_position_embeddings=128, **ids),
    }


class Entry(NamedTuple):
    case: str
    step: dict            # the recorded step
    counted: dict         # FlopCounterMode's FLOPs per layer name
    header: dict          # the recording's header
    norms: dict           # the norm estimate per position (5 · dim per norm) per layer name


def _run(name: str, cfg, tmp_path) -> list[Entry]:
    """One entry per counted call of one model's monitored session."""
    from transformers import AutoModel, AutoModelForCausalLM, DynamicCache, StaticCache

    _quiet_transformers()
    torch.manual_seed(0)
    generative = name != "bert-minilm"
    auto = AutoModelForCausalLM if generative else AutoModel
    model = auto.from_config(cfg, attn_implementation="eager").eval()
    x = torch.randint(3, V, (B, S))
    one = torch.randint(3, V, (B, 1))
    calls: list[tuple[str, dict]] = []
    counts: list[dict] = []

    def count(case: str, **kw):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(**kw)
        calls.append((case, kw))
        counts.append({k: float(sum(v.values())) for k, v in fc.get_flop_counts().items()})

    path = tmp_path / f"{name}.jsonl"
    with Monitor(model, record=path, clock_source=FakeClock(1000.0), roof=False,
                 model_info={"name": name, "generative": generative}):
        if not generative:
            count("encode", input_ids=x)
        else:
            cache = DynamicCache(config=model.config)
            count("prefill", input_ids=x, cache=cache, use_cache=True, logits_to_keep=1)
            count("decode", input_ids=one, cache=cache, use_cache=True, logits_to_keep=1)
            count("direct", input_ids=x)
            if name == "mistral-sw":
                long = DynamicCache(config=model.config)
                with torch.no_grad():
                    model(input_ids=torch.randint(3, V, (B, LONG)), cache=long, use_cache=True, logits_to_keep=1)
                count("decode-past-window", input_ids=one, cache=long, use_cache=True, logits_to_keep=1)
            if name == "llama-gqa":
                static = StaticCache(config=model.config, max_cache_len=STATIC)
                count("static-prefill", input_ids=x, cache=static, use_cache=True, logits_to_keep=1)
                count("static-decode", input_ids=one, cache=static, use_cache=True, logits_to_keep=1)
    rec = load(path)
    steps = rec.steps
    if name == "mistral-sw":  # the uncounted call that filled the long cache is a step too
        steps = steps[:3] + steps[4:]
    assert len(steps) == len(calls)
    root = type(model).__name__
    names = [l["name"] for l in rec.header["layers"]]
    norms = {n: sum(5 * m.weight.numel() for m in model.get_submodule(n).modules()
                    if "Norm" in type(m).__name__ and getattr(m, "weight", None) is not None) for n in names}
    return [Entry(case, step, {n: cnt.get(f"{root}.{n}", 0.0) for n in names}, rec.header, norms)
            for (case, _), step, cnt in zip(calls, steps, counts)]


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flops")
    return {name: _run(name, cfg, tmp) for name, cfg in _configs().items()}


CASES = [("gpt2", c) for c in ("prefill", "decode", "direct")] + [("bert-minilm", "encode")] + \
        [(m, c) for m in ("llama-gqa", "qwen2", "mistral-sw", "opt") for c in ("prefill", "decode", "direct")] + \
        [("mistral-sw", "decode-past-window"), ("llama-gqa", "static-prefill"), ("llama-gqa", "static-decode")]


def deviations(entry: Entry) -> dict[str, float]:
    """Per top-level layer: relative deviation from FlopCounterMode (norm-only layers: from the norm rule)."""
    step, counted, header, norm_flops = entry.step, entry.counted, entry.header, entry.norms
    coeffs = header_coeffs(header)
    flops, _ = step_work(coeffs, step)
    out = {}
    for i, layer in enumerate(header["layers"]):
        if layer["parent"] is not None:
            continue
        name = layer["name"]
        ours, ref = float(flops[i]), counted[name]
        if ref == 0:
            positions = step["batch"] * step["seq_len"]
            norms = norm_flops[name] * positions  # FlopCounterMode counts no norm: the rule's estimate only
            out[name] = 0.0 if ours == norms else float("inf")
        else:
            out[name] = (ours - ref) / ref
    return out


@pytest.mark.parametrize("model, case", CASES)
def test_step_work_matches_flop_counter_per_top_level_layer(sessions, model, case):
    entry = next(e for e in sessions[model] if e.case == case)
    dev = deviations(entry)
    bad = {k: v for k, v in dev.items() if not abs(v) <= TOLERANCE}
    assert not bad, f"{model} {case}: {bad}"
    counted = entry.counted
    assert sum(v > 0 for v in counted.values()) >= 3  # blocks and the head were counted, not only skipped


def test_what_the_steps_recorded(sessions):
    """The inputs behind the numbers: head positions as asked, attended keys as the caches span them."""
    by = {(m, e.case): e.step for m, entries in sessions.items() for e in entries}
    assert by["gpt2", "prefill"]["head_tokens"] == [B]           # logits_to_keep=1
    assert by["gpt2", "direct"]["head_tokens"] == [B * S]        # every position's logits
    assert by["gpt2", "direct"]["kind"] == "prefill" and "kv_len" not in by["gpt2", "direct"]
    assert by["bert-minilm", "encode"]["head_tokens"] == [B]     # the pooler: one position per sequence
    assert by["llama-gqa", "decode"]["kv_len"] == S + 1
    assert by["mistral-sw", "decode-past-window"]["past_len"] == LONG
    assert by["mistral-sw", "decode-past-window"]["kv_len"] == WINDOW  # window - 1 + 1
    assert by["llama-gqa", "static-prefill"]["kv_len"] == STATIC
    static = by["llama-gqa", "static-decode"]
    assert (static["kind"], static["past_len"], static["kv_len"]) == ("decode", S, STATIC)


def test_old_rule_would_miss_these(sessions):
    """Without the new step fields (older recordings) the same steps fall back to the old rule, and the
    cases this change fixes are off by more than 3 % (the head and pooler by far more): the new fields
    carry the result."""
    for model, case, layer in (("gpt2", "direct", "lm_head"), ("bert-minilm", "encode", "pooler"),
                               ("mistral-sw", "decode-past-window", "model.layers.0")):
        entry = next(e for e in sessions[model] if e.case == case)
        old_step = {k: v for k, v in entry.step.items() if k not in ("kv_len", "head_tokens")}
        dev = deviations(entry._replace(step=old_step))
        assert abs(dev[layer]) > TOLERANCE, (model, case, dev[layer])


def test_norm_only_layers_follow_the_rule(sessions):
    """The final norms count 0 in FlopCounterMode and exactly 5 · dim per position in ours."""
    for model, layer in (("gpt2", "transformer.ln_f"), ("llama-gqa", "model.norm"),
                         ("opt", "model.decoder.final_layer_norm")):
        for e in sessions[model]:
            assert e.counted[layer] == 0
            i = [l["name"] for l in e.header["layers"]].index(layer)
            flops, _ = step_work(header_coeffs(e.header), e.step)
            assert flops[i] == e.norms[layer] * e.step["batch"] * e.step["seq_len"] > 0


def test_direct_linear_heads_count_each_position_asked(sessions):
    """logits_to_keep as a tensor of indices: the head computes exactly those positions."""
    _quiet_transformers()
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_configs()["gpt2"], attn_implementation="eager").eval()
    from llm_moments.engine.core.hooks import find_layers
    from llm_moments.engine.core.steps import HeadProbe

    probe = HeadProbe(model, find_layers(model, "blocks")).attach()
    try:
        seen = probe.open()
        with torch.no_grad():
            model(torch.randint(3, V, (B, S)), logits_to_keep=torch.tensor([0, 4, 7]))
        probe.close()
    finally:
        probe.detach()
    assert seen == [B * 3]
    assert isinstance(model.lm_head, nn.Linear)


def test_beyond_the_norm_estimate_the_count_is_exact(sessions):
    """Every layer, every case: our FLOPs minus the norm estimate are FlopCounterMode's count exactly."""
    from llm_moments.engine.core.work import work_inputs

    for model, entries in sessions.items():
        for e in entries:
            coeffs = header_coeffs(e.header)
            _, positions, _ = work_inputs(coeffs, [e.step])
            flops, _ = step_work(coeffs, e.step)
            for i, layer in enumerate(e.header["layers"]):
                name = layer["name"]
                assert flops[i] - e.norms[name] * positions[0, i] == e.counted[name], (model, e.case, name)


def test_the_step_table_applies_the_same_work(sessions):
    """Analysis (engine/analysis/steptable.py) reads the recorded fields the same way as step_work."""
    from llm_moments.engine.analysis.steptable import StepTable

    for entries in sessions.values():
        header = entries[0].header
        steps = [e.step for e in entries]
        flops, moved = StepTable.from_steps(header, steps).work()
        for row, step in enumerate(steps):
            f, b = step_work(header_coeffs(header), step)
            np.testing.assert_array_equal(flops[row], f)
            np.testing.assert_array_equal(moved[row], b)
