"""Step kind, past length and attended keys for every cache transformers has, read without a tensor.

Each case runs the rule (engine/core/steps.py) in a root pre-hook, as the Monitor does, beside the
ground truth read from the cache afterwards (``int(cache.get_seq_length())``: a tensor read the rule
itself never makes). The rule runs in its GPU mode (``read_host_scalars=False``): a full static cache
is followed by its counter, never by its 0-d length tensor, and a dispatch mode proves that no tensor
op at all runs inside it. Prompts: one token (a static cache's prefill used to be called a decode)
and a long one; generate() and hand-driven loops.

Not run here: the offloaded cache's generate() (its ``Cache.update`` needs CUDA streams; skipped on a
CPU-only torch, the rule on its layers is checked below without CUDA) and quantized caches with the
quanto / hqq backends (packages not installed); the fp8 backend is plain torch and is tested.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import _IDS, FakeClock, _quiet_transformers
from torch.utils._python_dispatch import TorchDispatchMode

from llm_moments import Monitor
from llm_moments.engine.core.recording import load
from llm_moments.engine.core.steps import StepRule, cache_of, expand_kv
from llm_moments.engine.core.work import header_coeffs, step_work

WINDOW = 4


class _Ops(TorchDispatchMode):
    """Counts every aten op dispatched while active (``int(tensor)`` is ``aten._local_scalar_dense``)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class Watch:
    """The rule in a root pre-hook, with the truth read from the cache after the rule ran."""

    def __init__(self, model, read_host_scalars: bool = False):
        self.rule = StepRule(True, read_host_scalars=read_host_scalars)
        self.rows: list[dict] = []
        self.handle = model.register_forward_pre_hook(self._pre, with_kwargs=True, prepend=True)

    def _pre(self, module, args, kwargs):
        with _Ops() as ops:
            kind, _, seq, past, kv = self.rule.begin(args, kwargs)
        cache = cache_of(kwargs)
        truth = 0 if cache is None else int(cache.get_seq_length())  # the test may read tensors
        layers = getattr(cache, "layers", ()) or ()
        self.rows.append({"kind": kind, "seq": seq, "past": past, "kv": expand_kv(kv), "truth": truth,
                          "ops": ops.ops, "cache": cache,
                          "max_cache_len": [getattr(l, "max_cache_len", None) for l in layers]})

    def close(self):
        self.handle.remove()
        self.rule.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def check(self):
        """Every step: no tensor op, the past known and right, the kind from it."""
        assert self.rows
        for r in self.rows:
            assert r["ops"] == [], r["ops"]
            assert r["past"] == r["truth"], (r["past"], r["truth"])
            assert r["kind"] == ("decode" if r["truth"] > 0 else "prefill")
        return self.rows


# -- tiny models ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    _quiet_transformers()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                        **_IDS)).eval()


@pytest.fixture(scope="module")
def mistral():
    _quiet_transformers()
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    return MistralForCausalLM(MistralConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                            num_attention_heads=2, num_key_value_heads=1, sliding_window=WINDOW,
                                            max_position_embeddings=64, **_IDS)).eval()


@pytest.fixture(scope="module")
def gemma2():
    """Hybrid: layer 0 slides over WINDOW positions, layer 1 attends to everything."""
    _quiet_transformers()
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    return Gemma2ForCausalLM(Gemma2Config(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                          num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                          sliding_window=WINDOW, max_position_embeddings=64, **_IDS)).eval()


def gen(model, prompt: int, new: int = 4, **kw):
    torch.manual_seed(1)
    x = torch.randint(3, 64, (2, prompt))
    with torch.inference_mode():
        return model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, pad_token_id=0, **kw)


def hand_loop(model, cache, prompt: int, new: int = 3, mask: bool = False):
    """Prefill and decodes driven by hand, passing the cache as ``cache=``."""
    x = torch.randint(3, 64, (2, prompt))
    seen = prompt
    with torch.no_grad():  # not inference_mode: a StaticCache's reset() writes to its tensors later
        out = model(input_ids=x, cache=cache, use_cache=True,
                    attention_mask=torch.ones(2, seen, dtype=torch.long) if mask else None)
        for _ in range(new):
            nxt = out.logits[:, -1:].argmax(-1)
            seen += 1
            out = model(input_ids=nxt, cache=cache, use_cache=True,
                        attention_mask=torch.ones(2, seen, dtype=torch.long) if mask else None)
    return cache


PROMPTS = [1, 9]


def expected_pasts(prompt: int, new: int) -> list[int]:
    return [0] + [prompt + k for k in range(new - 1)]


# -- generate() with every cache implementation -------------------------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS)
def test_dynamic_cache_generate(llama, prompt):
    with Watch(llama) as w:
        gen(llama, prompt)
    rows = w.check()
    assert [r["past"] for r in rows] == expected_pasts(prompt, 4)
    assert [r["kv"] for r in rows] == [prompt] + [p + 1 for p in expected_pasts(prompt, 4)[1:]]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_static_cache_generate(llama, prompt):
    """A one-token prompt's prefill is a prefill; decodes carry the true past; attention spans the
    whole static buffer (max_cache_len) in every step."""
    with Watch(llama) as w:
        gen(llama, prompt, cache_implementation="static")
    rows = w.check()
    assert type(rows[0]["cache"]).__name__ == "StaticCache"
    assert [r["kind"] for r in rows] == ["prefill", "decode", "decode", "decode"]
    assert [r["past"] for r in rows] == expected_pasts(prompt, 4)
    for r in rows:
        assert r["kv"] == r["max_cache_len"][0] >= prompt + 3


@pytest.mark.parametrize("prompt", PROMPTS)
def test_quantized_fp8_cache_generate(llama, prompt):
    with Watch(llama) as w:
        gen(llama, prompt, cache_implementation="quantized", cache_config={"backend": "fp8"})
    rows = w.check()
    assert type(rows[0]["cache"]).__name__ == "QuantizedCache"
    assert [r["past"] for r in rows] == expected_pasts(prompt, 4)
    assert [r["kv"] for r in rows[1:]] == [p + 1 for p in expected_pasts(prompt, 4)[1:]]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_no_cache_generate_recomputes_everything(llama, prompt):
    """use_cache=False: every step runs the whole sequence again; prefill, past 0, no cache context."""
    with Watch(llama) as w:
        gen(llama, prompt, use_cache=False)
    rows = w.check()
    assert [r["kind"] for r in rows] == ["prefill"] * 4
    assert [r["seq"] for r in rows] == [prompt + k for k in range(4)]
    assert all(r["past"] == 0 and r["kv"] is None for r in rows)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_sliding_window_dynamic_and_static(mistral, prompt):
    for impl in (None, "static"):
        with Watch(mistral) as w:
            gen(mistral, prompt, new=6, cache_implementation=impl)
        rows = w.check()
        assert [r["past"] for r in rows] == expected_pasts(prompt, 6)
        # prefill: every prompt position (a static layer's buffer holds at least the window)
        assert rows[0]["kv"] == (prompt if impl is None else max(prompt, WINDOW))
        for r in rows[1:]:  # decode: up to the window (dynamic), the window buffer (static)
            assert r["kv"] == (min(r["past"], WINDOW - 1) + 1 if impl is None else WINDOW)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_hybrid_cache_kv_per_layer(gemma2, prompt):
    """Gemma2: the sliding layer spans the window, the full layer past + 1 (dynamic) or max_cache_len (static)."""
    with Watch(gemma2) as w:
        gen(gemma2, prompt, new=6)
    rows = w.check()
    for r in rows[1:]:
        sliding, full = min(r["past"], WINDOW - 1) + 1, r["past"] + 1
        assert r["kv"] == ([sliding, full] if sliding != full else full)  # one int when all layers agree
    with Watch(gemma2) as w:
        gen(gemma2, prompt, new=6, cache_implementation="static")
    rows = w.check()
    assert [r["kind"] for r in rows] == ["prefill"] + ["decode"] * 5
    for r in rows[1:]:
        assert r["kv"] == [WINDOW, r["max_cache_len"][1]]


def test_hybrid_with_a_full_layer_first(gemma2):
    """The past comes from whichever layer keeps it in python (here the second, sliding one)."""
    from transformers import Gemma2ForCausalLM, StaticCache

    cfg = gemma2.config.__class__(**{**gemma2.config.to_dict(), "layer_types": ["full_attention", "sliding_attention"]})
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(cfg).eval()
    cache = StaticCache(config=cfg, max_cache_len=16)
    assert [type(l).__name__ for l in cache.layers] == ["StaticLayer", "StaticSlidingWindowLayer"]
    with Watch(model) as w:
        hand_loop(model, cache, 1, new=5)
        assert "reset" not in vars(cache)  # a python count exists: no counter, no wrapper
    rows = w.check()
    assert [r["past"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert all(r["kv"] == [16, WINDOW] for r in rows[1:])


def test_offloaded_cache_layers_without_cuda(llama):
    """The offloaded cache keeps DynamicLayers; after offload() the keys' shape still gives the past."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=llama.config, offloading=True)
    except (AssertionError, RuntimeError) as exc:  # a torch without any stream support
        pytest.skip(f"offloaded cache cannot be built here: {exc}")
    kv = torch.zeros(2, 1, 7, 16)
    for layer in cache.layers:
        layer.update(kv, kv)
        layer.offload()
    rule = StepRule(True, read_host_scalars=False)
    call = {"input_ids": torch.zeros(2, 1, dtype=torch.long), "cache": cache}
    with _Ops() as ops:
        kind, _, seq, past, kv_len = rule.begin((), call)
    assert ops.ops == []
    assert (kind, seq, past, expand_kv(kv_len)) == ("decode", 1, 7, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the offloaded cache's update uses CUDA streams")
def test_offloaded_cache_generate_on_cuda(llama):
    model = llama.to("cuda")
    try:
        x = torch.randint(3, 64, (2, 9), device="cuda")
        with Watch(model) as w, torch.inference_mode():
            model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=4, min_new_tokens=4,
                           do_sample=False, pad_token_id=0, cache_implementation="offloaded")
        assert [r["past"] for r in w.check()] == expected_pasts(9, 4)
    finally:
        llama.to("cpu")


# -- hand-driven loops ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("kind", ["dynamic", "dynamic-lazy", "static", "fp8"])
def test_hand_loop(llama, kind, prompt):
    from transformers import DynamicCache, QuantizedCache, StaticCache

    cache = {"dynamic": lambda: DynamicCache(config=llama.config),
             "dynamic-lazy": lambda: DynamicCache(),
             "static": lambda: StaticCache(config=llama.config, max_cache_len=32),
             "fp8": lambda: QuantizedCache(backend="fp8", config=llama.config)}[kind]()
    with Watch(llama) as w:
        hand_loop(llama, cache, prompt)
    rows = w.check()
    assert [r["kind"] for r in rows] == ["prefill", "decode", "decode", "decode"]
    assert [r["past"] for r in rows] == [0, prompt, prompt + 1, prompt + 2]
    if kind == "static":
        assert all(r["kv"] == 32 for r in rows)
    else:
        assert [r["kv"] for r in rows] == [prompt, prompt + 1, prompt + 2, prompt + 3]


def test_static_cache_reset_and_crop_keep_the_counter_right(llama):
    """StaticCache.reset() leaves is_initialized True and crop() only moves a device scalar: the rule
    wraps both on the instance, and close() takes the wrappers off."""
    from transformers import StaticCache

    cache = StaticCache(config=llama.config, max_cache_len=32)
    with Watch(llama) as w:
        hand_loop(llama, cache, 1)          # a one-token prompt: prefill past 0, then 1, 2, 3
        cache.reset()
        hand_loop(llama, cache, 1)          # after reset: a prefill again, not a decode
        cache.crop(-2)                      # assisted decoding's rollback: past 4 - 2
        with torch.no_grad():
            llama(input_ids=torch.tensor([[5], [6]]), cache=cache, use_cache=True)
        assert "reset" in vars(cache) and "crop" in vars(cache)
    rows = w.check()
    assert [r["past"] for r in rows] == [0, 1, 2, 3, 0, 1, 2, 3, 2]
    assert [r["kind"] for r in rows][4] == "prefill"
    assert "reset" not in vars(cache) and "crop" not in vars(cache)  # the class's methods again


def test_static_cache_first_seen_filled(llama):
    """A static cache filled before the rule first saw it: on a GPU its past is unknown (a decode if one
    position per sequence, or the length of a 2-D attention mask); on a CPU the host scalar is read."""
    from transformers import StaticCache

    def filled():
        cache = StaticCache(config=llama.config, max_cache_len=32)
        with torch.inference_mode():
            llama(input_ids=torch.randint(3, 64, (2, 6)), cache=cache, use_cache=True)
        return cache

    one = {"input_ids": torch.zeros(2, 1, dtype=torch.long)}
    gpu = StepRule(True, read_host_scalars=False)
    assert gpu.begin((), {**one, "cache": filled()})[:4] == ("decode", 2, 1, None)
    masked = {**one, "cache": filled(), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    assert gpu.begin((), masked)[:4] == ("decode", 2, 1, 6)
    cpu = StepRule(True, read_host_scalars=True)
    cache = filled()
    assert cpu.begin((), {**one, "cache": cache})[:4] == ("decode", 2, 1, 6)
    assert cpu.begin((), {**one, "cache": cache})[:4] == ("decode", 2, 1, 7)  # the counter took over
    gpu.close()
    cpu.close()


def test_deprecated_past_key_values_name_and_an_unknown_cache(llama):
    from transformers import DynamicCache

    cache = hand_loop(llama, DynamicCache(config=llama.config), 5, new=0)
    rule = StepRule(True)
    one = torch.zeros(2, 1, dtype=torch.long)
    assert rule.begin((one,), {"past_key_values": cache})[:4] == ("decode", 2, 1, 5)

    class Odd:  # a cache-like object the rule does not know
        pass

    assert rule.begin((one,), {"cache": Odd()})[:4] == ("decode", 2, 1, None)
    assert rule.begin((one,), {"cache": Odd(), "attention_mask": torch.ones(2, 9)})[:4] == ("decode", 2, 1, 8)
    assert StepRule(False).begin((torch.zeros(3, 7),), {}) == ("encode", 3, 7, 0, None)


# -- through the Monitor: the recording carries it -------------------------------------------------------------


def test_monitor_records_static_one_token_prompt(llama, tmp_path):
    path = tmp_path / "static.jsonl"
    with Monitor(llama, record=path, clock_source=FakeClock(1000.0), roof=False,
                 model_info={"name": "tiny-llama", "generative": True}):
        gen(llama, 1, new=4, cache_implementation="static")
    rec = load(path)
    steps = rec.steps
    assert [s["kind"] for s in steps] == ["prefill", "decode", "decode", "decode"]
    assert [s["past_len"] for s in steps] == [0, 1, 2, 3]
    max_len = steps[0]["kv_len"]
    assert all(s["kv_len"] == max_len for s in steps) and max_len >= 4
    assert [s["head_tokens"] for s in steps] == [[2]] * 4
    coeffs = header_coeffs(rec.header)
    block = rec.layer_names.index("model.layers.0")
    flops = [step_work(coeffs, s)[0][block] for s in steps[1:]]
    a, b = coeffs[block, 0], coeffs[block, 1]
    assert flops == [a * 2 + b * 2 * max_len] * 3  # decode attention spans the static buffer


def test_monitor_records_hybrid_kv_per_cache_layer(gemma2, tmp_path):
    path = tmp_path / "hybrid.jsonl"
    with Monitor(gemma2, record=path, clock_source=FakeClock(1000.0), roof=False,
                 model_info={"name": "tiny-gemma2", "generative": True}):
        gen(gemma2, 9, new=3)
    rec = load(path)
    steps = rec.steps
    assert [s["kv_len"] for s in steps] == [9, [WINDOW, 10], [WINDOW, 11]]
    coeffs = header_coeffs(rec.header)
    names = rec.layer_names
    b0, b1 = names.index("model.layers.0"), names.index("model.layers.1")
    assert (coeffs[b0, 7], coeffs[b1, 7]) == (0, 1)
    flops, moved = step_work(coeffs, steps[2])
    for i, ctx in ((b0, WINDOW), (b1, 11)):
        assert flops[i] == coeffs[i, 0] * 2 + coeffs[i, 1] * 2 * ctx
        assert moved[i] == coeffs[i, 2] + coeffs[i, 3] * 2 + coeffs[i, 4] * 2 * ctx
    assert np.isfinite(flops).all()
