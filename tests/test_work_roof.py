"""Work per layer (FLOPs and bytes) and the roofline: hand-computed numbers, torch's FlopCounterMode,
fixed peaks, the datasheet table, the per-device calibration cache, and work from a real recording.

FLOPs of a matmul are 2 · in · out per token (FlopCounterMode's convention; the bias add is not
counted). FlopCounterMode on CPU does not see the SDPA attention core, so the projections (a · tokens)
are compared with it on SDPA models, and the core (b · tokens · context) with hand numbers and with
FlopCounterMode on the same model built with eager attention (plain matmuls it does count).
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import _IDS, FakeClock, _quiet_transformers, generate, ids
from torch import nn

from llm_moments import Monitor
from llm_moments.engine.analysis.roofline import place
from llm_moments.engine.core import roof as roof_mod
from llm_moments.engine.core.hooks import find_layers
from llm_moments.engine.core.recording import load
from llm_moments.engine.core.roof import datasheet, machine_roof
from llm_moments.engine.core.work import LayerWork, header_coeffs, step_work
from llm_moments.engine.core.work_model import flop_counter_total, layer_work, module_work

F32 = 4  # bytes


def coeffs_of(*works: LayerWork) -> np.ndarray:
    return np.array([w.as_list() for w in works], dtype=float)


def flops_bytes(work: LayerWork, kind: str, batch: int, seq: int, past: int) -> tuple[float, float]:
    f, b = step_work(coeffs_of(work), {"kind": kind, "batch": batch, "seq_len": seq, "past_len": past})
    return float(f[0]), float(b[0])


# -- tiny models, built here so attention can be SDPA or eager ------------------------------------


def _gpt2(attn: str):
    _quiet_transformers()
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, **_IDS)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg).eval()


def _llama(attn: str):
    _quiet_transformers()
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, **_IDS)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def gpt2_sdpa():
    return _gpt2("sdpa")


@pytest.fixture(scope="module")
def gpt2_eager():
    return _gpt2("eager")


@pytest.fixture(scope="module")
def llama_sdpa():
    return _llama("sdpa")


@pytest.fixture(scope="module")
def llama_eager():
    return _llama("eager")


def _cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


# -- Linear ---------------------------------------------------------------------------------------


def test_linear_by_hand_and_by_flop_counter():
    lin = nn.Linear(64, 128)
    work = module_work(lin)
    assert work.a == 2 * 64 * 128
    assert (work.b, work.d) == (0, 0)
    assert work.w == (64 * 128 + 128) * F32  # weight and bias: every parameter byte
    assert work.c == (64 + 128) * F32        # activations in and out, per token
    assert work.last_only is False
    x = torch.randn(3, 7, 64)                # 21 tokens
    flops, moved = flops_bytes(work, "encode", batch=3, seq=7, past=0)
    assert flops == 2 * 64 * 128 * 21 == flop_counter_total(lin, x)
    assert moved == (64 * 128 + 128) * F32 + 21 * (64 + 128) * F32


def test_linear_bytes_follow_the_dtype():
    lin = nn.Linear(64, 128).to(torch.bfloat16)
    model = nn.Sequential(lin)
    (work,) = layer_work(model, [SimpleNamespace(module=lin)], generative=False)
    assert work.w == (64 * 128 + 128) * 2
    assert work.c == (64 + 128) * 2
    assert work.a == 2 * 64 * 128  # FLOPs do not care


def test_norms_count_their_weights_and_a_small_flop_estimate():
    ln = module_work(nn.LayerNorm(32))
    assert ln.w == 2 * 32 * F32 and ln.c == 2 * 32 * F32 and ln.a == 5 * 32


# -- GPT-2 (Conv1D projections, fused qkv) -----------------------------------------------------------

GPT2_ATTN_A = 2 * (32 * 96 + 32 * 32)  # c_attn 32 → 3·32, c_proj 32 → 32
GPT2_MLP_A = 2 * (32 * 128 + 128 * 32)  # c_fc 32 → 4·32, c_proj 4·32 → 32


def test_gpt2_mlp_by_hand_and_by_flop_counter(gpt2_sdpa):
    mlp = gpt2_sdpa.transformer.h[0].mlp
    work = module_work(mlp, gpt2_sdpa.config)
    assert work.a == GPT2_MLP_A
    assert (work.b, work.d) == (0, 0)
    assert work.w == sum(p.numel() for p in mlp.parameters()) * F32 == (32 * 128 + 128 + 128 * 32 + 32) * F32
    assert work.c == (32 + 128 + 128 + 32) * F32
    for batch, seq in ((2, 5), (2, 1)):
        flops, _ = flops_bytes(work, "prefill", batch, seq, 0)
        assert flops == flop_counter_total(mlp, torch.randn(batch, seq, 32))


def test_gpt2_attention_coefficients_by_hand(gpt2_sdpa):
    attn = gpt2_sdpa.transformer.h[0].attn
    work = module_work(attn, gpt2_sdpa.config)
    assert work.a == GPT2_ATTN_A
    assert work.b == 4 * 32                      # QKᵀ and AV: 2 · hidden each per token and position
    assert work.d == 2 * 32 * F32                # K and V, kv width = hidden (no GQA in GPT-2)
    assert work.w == sum(p.numel() for p in attn.parameters()) * F32
    assert work.c == (32 + 96 + 32 + 32) * F32


@pytest.mark.parametrize("batch, n, k", [(2, 5, 0), (2, 1, 5), (1, 1, 12)])
def test_gpt2_attention_prefill_and_decode_against_flop_counter(gpt2_sdpa, gpt2_eager, batch, n, k):
    """Prefill: seq n, past 0; decode: seq 1, past k (the cache filled by a first call)."""
    work = module_work(gpt2_sdpa.transformer.h[0].attn, gpt2_sdpa.config)
    flops, moved = flops_bytes(work, "prefill" if k == 0 else "decode", batch, n, k)
    tokens, context = batch * n, k + n
    projections, core = GPT2_ATTN_A * tokens, 4 * 32 * tokens * context
    assert flops == projections + core
    assert moved == work.w + work.c * tokens + 2 * 32 * F32 * batch * context
    measured = {}
    for name, model in (("sdpa", gpt2_sdpa), ("eager", gpt2_eager)):
        attn = model.transformer.h[0].attn
        cache = _cache(model)
        with torch.no_grad():
            if k:
                attn(torch.randn(batch, k, 32), cache=cache)
        assert cache.get_seq_length() == k
        measured[name] = flop_counter_total(attn, torch.randn(batch, n, 32), cache=cache)
        assert cache.get_seq_length() == k + n
    assert measured["sdpa"] == projections  # FlopCounterMode on CPU does not count the SDPA core
    assert measured["eager"] == projections + core


def test_gpt2_block_and_whole_model_prefill_and_decode(gpt2_eager):
    """Summed over the timed layers, the formulas give FlopCounterMode's count plus the norms'
    estimate (FlopCounterMode counts no norm); the head sees the last position of a prefill."""
    model = gpt2_eager
    layers = find_layers(model, "blocks")
    coeffs = coeffs_of(*layer_work(model, layers, generative=True))
    names = [l.name for l in layers]
    assert coeffs[names.index("lm_head"), 5] == 1 and coeffs[:, 5].sum() == 1
    n_norms = sum(1 for m in model.modules() if isinstance(m, nn.LayerNorm))
    assert n_norms == 5  # ln_1 and ln_2 in each of 2 blocks, ln_f
    batch, n = 2, 5
    cache = _cache(model)
    x = ids(batch, n, 64)
    counted = flop_counter_total(model, x, cache=cache, logits_to_keep=1)
    flops, _ = step_work(coeffs, {"kind": "prefill", "batch": batch, "seq_len": n, "past_len": 0})
    assert flops.sum() == counted + n_norms * 5 * 32 * batch * n
    assert flops[names.index("lm_head")] == 2 * 32 * 64 * batch  # last position only
    counted = flop_counter_total(model, ids(batch, 1, 64), cache=cache, logits_to_keep=1)
    flops, _ = step_work(coeffs, {"kind": "decode", "batch": batch, "seq_len": 1, "past_len": n})
    assert flops.sum() == counted + n_norms * 5 * 32 * batch


# -- Llama (gate/up/down MLP, GQA attention) ---------------------------------------------------------


def test_llama_mlp_by_hand_and_by_flop_counter(llama_sdpa):
    mlp = llama_sdpa.model.layers[0].mlp
    work = module_work(mlp, llama_sdpa.config)
    assert work.a == 2 * 3 * 32 * 64       # gate, up: 32 → 64; down: 64 → 32
    assert work.w == 3 * 32 * 64 * F32     # no biases
    assert work.c == 3 * (32 + 64) * F32
    assert (work.b, work.d) == (0, 0)
    x = torch.randn(2, 5, 32)
    assert flops_bytes(work, "prefill", 2, 5, 0)[0] == flop_counter_total(mlp, x)


def test_llama_gqa_attention_by_hand_and_by_flop_counter(llama_sdpa, llama_eager):
    cfg = llama_sdpa.config
    head_dim = cfg.head_dim
    kv_width = cfg.num_key_value_heads * head_dim
    assert (head_dim, kv_width) == (16, 16)
    work = module_work(llama_sdpa.model.layers[0].self_attn, cfg)
    assert work.a == 2 * (32 * 32 + 32 * kv_width + 32 * kv_width + 32 * 32)  # q, k, v, o
    assert work.b == 4 * 32
    assert work.d == 2 * kv_width * F32 == 128  # the KV cache holds kv heads only
    assert work.w == (2 * 32 * 32 + 2 * 32 * kv_width) * F32
    for batch, n, k in ((2, 5, 0), (2, 1, 7)):
        tokens, context = batch * n, n + k
        flops, moved = flops_bytes(work, "prefill" if k == 0 else "decode", batch, n, k)
        assert flops == work.a * tokens + 4 * 32 * tokens * context
        assert moved == work.w + work.c * tokens + 2 * kv_width * F32 * batch * context
        measured = {}
        for name, model in (("sdpa", llama_sdpa), ("eager", llama_eager)):
            attn = model.model.layers[0].self_attn
            cache = _cache(model)

            # called at once in this iteration; the defaults bind this iteration's values all the same
            def call(seq: int, start: int, counter: bool, *, batch=batch, model=model, attn=attn, cache=cache):
                x = torch.randn(batch, seq, 32)
                pos = torch.arange(start, start + seq).expand(batch, seq)
                rope = model.model.rotary_emb(x, pos)
                if counter:
                    return flop_counter_total(attn, x, position_embeddings=rope, cache=cache)
                with torch.no_grad():
                    attn(x, position_embeddings=rope, cache=cache)

            if k:
                call(k, 0, False)
            measured[name] = call(n, k, True)
            assert cache.get_seq_length() == context
        assert measured["sdpa"] == work.a * tokens
        assert measured["eager"] == flops  # repeat_kv expands K/V: the core is 4 · hidden dense


def test_llama_block_sums_its_parts(llama_sdpa):
    cfg = llama_sdpa.config
    layer = llama_sdpa.model.layers[0]
    block = module_work(layer, cfg)
    parts = [module_work(m, cfg) for m in (layer.self_attn, layer.mlp, layer.input_layernorm,
                                           layer.post_attention_layernorm)]
    for field in ("a", "b", "w", "c", "d"):
        assert getattr(block, field) == sum(getattr(p, field) for p in parts)
    rms = module_work(layer.input_layernorm, cfg)
    assert rms.w == 32 * F32 and rms.a == 5 * 32


# -- heads and encoders -------------------------------------------------------------------------------


def test_head_counts_the_last_position_in_prefill_only(tiny_gpt2):
    layers = find_layers(tiny_gpt2, "blocks")
    names = [l.name for l in layers]
    coeffs = coeffs_of(*layer_work(tiny_gpt2, layers, generative=True))
    h = names.index("lm_head")
    head_a = 2 * 32 * 64
    assert coeffs[h, 0] == head_a and coeffs[h, 5] == 1
    shape = {"batch": 3, "seq_len": 7, "past_len": 0}
    assert step_work(coeffs, {**shape, "kind": "prefill"})[0][h] == head_a * 3
    assert step_work(coeffs, {**shape, "kind": "decode", "seq_len": 1, "past_len": 7})[0][h] == head_a * 3
    # an encoder's head (and anything not flagged) sees every token
    assert step_work(coeffs, {**shape, "kind": "encode"})[0][h] == head_a * 21
    blocks = names.index("transformer.h.0")
    assert step_work(coeffs, {**shape, "kind": "prefill"})[0][blocks] > 0
    # not generative: nothing is last-only, every token counts in a prefill too
    plain = coeffs_of(*layer_work(tiny_gpt2, layers, generative=False))
    assert plain[:, 5].sum() == 0
    assert step_work(plain, {**shape, "kind": "prefill"})[0][h] == head_a * 21


def test_encoder_attention_counted_once_per_layer(tiny_bert):
    """BertAttention holds BertSelfAttention: the core is counted once, not twice."""
    layers = find_layers(tiny_bert, "blocks")
    works = dict(zip([l.name for l in layers], layer_work(tiny_bert, layers, generative=False)))
    block = works["encoder.layer.0"]
    assert block.b == 4 * 32 and block.d == 2 * 32 * F32
    assert block.a == 2 * (4 * 32 * 32 + 2 * 32 * 64) + 2 * 5 * 32  # q k v o, up, down, 2 LayerNorms
    assert not any(w.last_only for w in works.values())
    x = torch.randn(2, 6, 32)
    assert flop_counter_total(tiny_bert.encoder.layer[0].intermediate, x) == 2 * 32 * 64 * 12


def test_step_work_reads_old_records_without_seq_len():
    work = LayerWork(a=10.0, b=1.0)
    f_new = step_work(coeffs_of(work), {"kind": "encode", "batch": 2, "seq_len": 4, "tokens": 8})[0]
    f_old = step_work(coeffs_of(work), {"kind": "encode", "batch": 2, "tokens": 8})[0]
    assert f_old[0] == f_new[0] == 10 * 8 + 8 * 4


# -- roofline arithmetic ---------------------------------------------------------------------------------

PEAK, BW = 1e11, 1e10  # ridge at 10 FLOP per byte


def test_place_on_the_roofline_with_fixed_peaks():
    flops = np.array([1e9, 1e6, 7e7, 0.0])
    moved = np.array([1e7, 1e7, 1e7, 1e6])  # intensities 100, 0.1, 7, 0
    ms = np.array([20.0, 2.0, 10.0, 1.0])
    out = place(flops, moved, ms, PEAK, BW)
    np.testing.assert_allclose(out["intensity"], [100, 0.1, 7, 0])
    np.testing.assert_allclose(out["flops_per_s"], [5e10, 5e8, 7e9, 0])
    np.testing.assert_allclose(out["bytes_per_s"], [5e8, 5e9, 1e9, 1e9])
    attainable = np.minimum(PEAK, out["intensity"] * BW)
    np.testing.assert_allclose(attainable[:3], [1e11, 1e9, 7e10])
    np.testing.assert_allclose(out["roof_pct"][:3], [50.0, 50.0, 10.0])
    np.testing.assert_allclose(out["floor_ms"], [10.0, 1.0, 1.0, 0.1])  # max(flops/peak, bytes/bw)
    assert out["memory_bound"].tolist() == [False, True, True, True]


def test_clock_scale_moves_the_compute_roof_only():
    flops = np.array([1e9, 7e7])
    moved = np.array([1e7, 1e7])
    ms = np.array([20.0, 10.0])
    out = place(flops, moved, ms, PEAK, BW, clock_scale=0.5)  # compute roof 5e10, ridge 5
    np.testing.assert_allclose(out["roof_pct"], [100.0, 7e9 / 5e10 * 100])
    np.testing.assert_allclose(out["floor_ms"], [20.0, 1.4])
    assert out["memory_bound"].tolist() == [False, False]  # intensity 7 is above the lower ridge
    assert place(flops, moved, ms, PEAK, BW)["memory_bound"].tolist() == [False, True]


def test_place_without_peaks_gives_no_roof():
    out = place(np.array([1e9]), np.array([1e7]), np.array([1.0]), None, None)
    assert math.isnan(out["roof_pct"][0]) and math.isnan(out["floor_ms"][0])
    assert out["memory_bound"].tolist() == [False]
    assert out["flops_per_s"][0] == pytest.approx(1e12)


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H200", (989e12, 4.8e12)),
    ("NVIDIA H100 80GB HBM3", (989e12, 3.35e12)),
    ("NVIDIA H100 PCIe", (756e12, 2.0e12)),
    ("NVIDIA A100-SXM4-80GB", (312e12, 2.039e12)),
    ("NVIDIA A10G", (70e12, 0.6e12)),
    ("NVIDIA L40S", (362e12, 0.864e12)),
    ("Tesla T4", (65e12, 0.32e12)),
])
def test_datasheet_matches_device_names(name, expected):
    sheet = datasheet(name)
    assert (sheet["peak_flops"], sheet["peak_bytes_per_s"]) == expected
    assert sheet["source"].startswith("datasheet")


@pytest.mark.parametrize("name", ["Some Future Accelerator", "", None])
def test_datasheet_unknown_is_none(name):
    assert datasheet(name) is None


# -- the calibration cache ---------------------------------------------------------------------------------


@pytest.fixture
def counted_calibrate(monkeypatch):
    calls = []

    def fake(device, dtype, budget_s=1.5):
        calls.append((device, dtype))
        return {"peak_flops": 2e10, "peak_bytes_per_s": 5e9, "source": "calibrated"}

    monkeypatch.setattr(roof_mod, "calibrate", fake)
    return calls


CPU = torch.device("cpu")


def test_machine_roof_calibrates_once_then_reads_the_cache(tmp_path, monkeypatch, counted_calibrate):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = machine_roof(CPU, torch.float32)
    assert len(counted_calibrate) == 1
    assert (first["peak_flops"], first["peak_bytes_per_s"], first["source"]) == (2e10, 5e9, "calibrated")
    assert first["datasheet"] is None  # a CPU has no datasheet entry
    files = list((tmp_path / "llm-moments").glob("roof-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == {"peak_flops": 2e10, "peak_bytes_per_s": 5e9}
    second = machine_roof(CPU, torch.float32)
    assert len(counted_calibrate) == 1
    assert (second["peak_flops"], second["peak_bytes_per_s"]) == (2e10, 5e9)
    assert second["source"] == "calibrated (cached)"
    again = machine_roof(CPU, torch.float32, refresh=True)
    assert len(counted_calibrate) == 2 and again["source"] == "calibrated"
    # another dtype is another cache entry
    machine_roof(CPU, torch.bfloat16)
    assert len(counted_calibrate) == 3
    assert len(list((tmp_path / "llm-moments").glob("roof-*.json"))) == 2


def test_machine_roof_without_calibration_or_cache(tmp_path, monkeypatch, counted_calibrate):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    out = machine_roof(CPU, torch.float32, calibrate_now=False)
    assert counted_calibrate == []
    assert out["peak_flops"] is None and out["source"] == "unknown"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"peak_flops": 1e9}',
                                     '{"peak_flops": 0, "peak_bytes_per_s": 1}',
                                     '{"peak_flops": "x", "peak_bytes_per_s": 1}'])
def test_a_bad_cache_file_means_calibrating_again(tmp_path, monkeypatch, counted_calibrate, content):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = roof_mod._cache_path(roof_mod.device_key(CPU, torch.float32))
    path.parent.mkdir(parents=True)
    path.write_text(content)
    out = machine_roof(CPU, torch.float32)
    assert len(counted_calibrate) == 1 and out["peak_flops"] == 2e10
    assert machine_roof(CPU, torch.float32)["source"] == "calibrated (cached)"  # and the file is mended


def test_a_read_only_cache_dir_does_not_fail(tmp_path, monkeypatch, counted_calibrate):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(ro))
    if os.geteuid() == 0:  # root writes through permissions: make the folder refuse writes itself
        real_mkdir, real_write = Path.mkdir, Path.write_text

        def refuse(real):
            def inner(self, *a, **kw):
                if str(self).startswith(str(ro)):
                    raise PermissionError(errno.EACCES, "Permission denied", str(self))
                return real(self, *a, **kw)
            return inner

        monkeypatch.setattr(Path, "mkdir", refuse(real_mkdir))
        monkeypatch.setattr(Path, "write_text", refuse(real_write))
    try:
        out = machine_roof(CPU, torch.float32)
        assert out["peak_flops"] == 2e10 and len(counted_calibrate) == 1
        assert not (ro / "llm-moments").exists()
        machine_roof(CPU, torch.float32)  # nothing cached: a calibration again, still no error
        assert len(counted_calibrate) == 2
    finally:
        ro.chmod(0o755)


def test_empty_xdg_cache_home_falls_back_to_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert roof_mod._cache_path("k") == tmp_path / ".cache" / "llm-moments" / "roof-k.json"


def test_real_calibration_is_short_and_positive():
    out = roof_mod.calibrate(CPU, torch.float32, budget_s=0.05)
    assert out["source"] == "calibrated"
    assert 1e6 < out["peak_flops"] < 1e14 and 1e6 < out["peak_bytes_per_s"] < 1e13


# -- work of a real recording ------------------------------------------------------------------------------


def test_steps_of_a_generate_run_carry_past_len_and_growing_attention_work(tiny_gpt2, tmp_path):
    path = tmp_path / "gen.jsonl"
    roof = {"peak_flops": PEAK, "peak_bytes_per_s": BW, "source": "test"}
    with Monitor(tiny_gpt2, depth="sublayers", record=path, clock_source=FakeClock(1000.0), roof=roof,
                 model_info={"name": "tiny-gpt2", "generative": True}) as mon:
        generate(tiny_gpt2, ids(2, 5, 64), 4)
    rec = load(path)
    assert rec.header["roof"] == roof
    assert rec.header["work"]["columns"] == ["a", "b", "w", "c", "d", "last_only", "head", "cache_layer"]
    coeffs = header_coeffs(rec.header)
    assert coeffs.shape == (len(rec.header["layers"]), 8)
    np.testing.assert_array_equal(coeffs, coeffs_of(*layer_work(tiny_gpt2, mon.layers, generative=True)))
    steps = rec.steps
    assert [s["kind"] for s in steps] == ["prefill", "decode", "decode", "decode"]
    assert [s["past_len"] for s in steps] == [0, 5, 6, 7]
    assert [(s["batch"], s["seq_len"]) for s in steps] == [(2, 5), (2, 1), (2, 1), (2, 1)]
    assert [s["kv_len"] for s in steps] == [5, 6, 7, 8]         # keys attention spans: past + new
    assert [s["head_tokens"] for s in steps] == [[2]] * 4      # generate() asks the last logits only
    names = rec.layer_names
    attn = [names.index(f"transformer.h.{i}.attn") for i in range(2)]
    mlp = names.index("transformer.h.0.mlp")
    work = [step_work(coeffs, s) for s in steps]
    decode_attn = [w[0][attn[0]] for w in work[1:]]
    assert decode_attn == sorted(decode_attn) and len(set(decode_attn)) == 3  # grows with past_len
    for s, (flops, moved) in zip(steps[1:], work[1:]):
        context = s["past_len"] + 1
        for i in attn:
            assert flops[i] == GPT2_ATTN_A * 2 + 4 * 32 * 2 * context
            assert moved[i] == coeffs[i, 2] + coeffs[i, 3] * 2 + 2 * 32 * F32 * 2 * context
        assert flops[mlp] == GPT2_MLP_A * 2  # the MLP does not see the context
    prefill_flops = work[0][0]
    assert prefill_flops[attn[0]] == GPT2_ATTN_A * 10 + 4 * 32 * 10 * 5
    assert prefill_flops[names.index("lm_head")] == 2 * 32 * 64 * 2  # generate() keeps the last logits only


# -- the recorded inputs: head positions and attended keys ---------------------------------------------


def test_header_coeffs_pads_six_column_recordings():
    old = {"work": {"columns": ["a", "b", "w", "c", "d", "last_only"],
                    "layers": [[1, 2, 3, 4, 5, 0], [6, 0, 0, 0, 0, 1]]}}
    coeffs = header_coeffs(old)
    assert coeffs.shape == (2, 8) and (coeffs[:, 6:] == -1).all()
    assert header_coeffs({"work": {"layers": [[1, 2]]}}) is None and header_coeffs({}) is None
    # an old recording's prefill keeps the old rule: the last_only head computes one position per sequence
    f, _ = step_work(coeffs, {"kind": "prefill", "batch": 2, "seq_len": 5, "past_len": 0, "kv_len": 99})
    assert f[1] == 6 * 2 and f[0] == 1 * 10 + 2 * 10 * 5  # kv_len needs a cache_layer column: ignored


def test_step_work_from_head_tokens_and_kv_len():
    block0 = LayerWork(a=10.0, b=1.0, d=2.0, cache_layer=0)
    block1 = LayerWork(a=10.0, b=1.0, d=2.0, cache_layer=1)
    norm = LayerWork(a=5.0)
    head = LayerWork(a=100.0, last_only=True, head=0)
    pooler = LayerWork(a=7.0, head=1)
    coeffs = coeffs_of(block0, block1, norm, head, pooler)
    step = {"kind": "decode", "batch": 2, "seq_len": 1, "past_len": 30}
    # a hybrid step: layer 0 spans a window of 8 keys, layer 1 all 31
    f, b = step_work(coeffs, {**step, "kv_len": [8, 31], "head_tokens": [2, None]})
    assert f.tolist() == [10 * 2 + 2 * 8, 10 * 2 + 2 * 31, 5 * 2, 100 * 2, 7 * 2]
    assert b[:2].tolist() == [2 * 2 * 8, 2 * 2 * 31]
    # one int: every attention layer; a short list or None entries fall back to past + seq
    f, _ = step_work(coeffs, {**step, "kv_len": 64})
    assert f[:2].tolist() == [20 + 2 * 64] * 2
    f, _ = step_work(coeffs, {**step, "kv_len": [None]})
    assert f[:2].tolist() == [20 + 2 * 31] * 2
    # head positions as measured, in any kind of step; a head that did not run: the old rule
    f, _ = step_work(coeffs, {"kind": "prefill", "batch": 2, "seq_len": 9, "head_tokens": [18, 2]})
    assert (f[3], f[4]) == (100 * 18, 7 * 2)
    f, _ = step_work(coeffs, {"kind": "prefill", "batch": 2, "seq_len": 9, "head_tokens": [None, None]})
    assert (f[3], f[4]) == (100 * 2, 7 * 18)
