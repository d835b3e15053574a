"""Moments stay additive whatever the module graph (issue #7, item 1).

A call counts to the layer entry whose parent is the innermost entry open when it runs. So a module
shared by several blocks counts once to each block's own entry, a model-level module called from
inside the blocks is nested (its time stays in the block's moment), a module called twice sums both
calls, and on every step: Σ top-level moments ≤ step, Σ children ≤ parent, ``layer_calls`` is real.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import FakeClock, PlainNet, generate, ids
from torch import nn

from llm_moments.engine.analysis.stats import RollingStats
from llm_moments.engine.core.hooks import StepHooks, count_hooks, find_layers
from llm_moments.engine.core.recording import load
from llm_moments.engine.core.timing import CpuTimer
from llm_moments.engine.session.monitor import Monitor

SLEEP_S = 0.002
TOL_MS = 1e-3  # moments are rounded to 10 ns in the records; spans nest exactly on one clock


class Slow(nn.Module):
    """A leaf (a parameter, no children) that takes at least SLEEP_S per call."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        time.sleep(SLEEP_S)
        return x * self.scale


class SharedBlock(nn.Module):
    def __init__(self, shared: nn.Module, dim: int = 8):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.shared = shared  # the same instance is a registered child of every block

    def forward(self, x):
        return self.shared(self.fc(x))


class SharedChildNet(nn.Module):
    """One ``Slow`` instance registered as a child of 3 blocks and called once in each."""

    def __init__(self, n_blocks: int = 3, dim: int = 8, vocab: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        shared = Slow(dim)
        self.blocks = nn.ModuleList(SharedBlock(shared, dim) for _ in range(n_blocks))
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class RotaryBlock(nn.Module):
    def __init__(self, dim: int = 8):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x, rotary: nn.Module):
        return self.fc(rotary(self.norm(x)))  # a model-level module, called from inside the block


class ModelLevelRotaryNet(nn.Module):
    """``rotary`` is a sibling of the block list (a top-level layer) but runs inside every block."""

    def __init__(self, n_blocks: int = 3, dim: int = 8, vocab: int = 16, also_at_model_level: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(RotaryBlock(dim) for _ in range(n_blocks))
        self.rotary = Slow(dim)
        self.head = nn.Linear(dim, vocab)
        self.also_at_model_level = also_at_model_level

    def forward(self, ids):
        x = self.embed(ids)
        if self.also_at_model_level:
            x = self.rotary(x)
        for block in self.blocks:
            x = block(x, self.rotary)
        return self.head(x)


class TwiceBlock(nn.Module):
    def __init__(self, dim: int = 8):
        super().__init__()
        self.slow = Slow(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return self.fc(self.slow(self.slow(x)))


class TwiceNet(PlainNet):
    def __init__(self, n_blocks: int = 2, dim: int = 8, vocab: int = 16):
        super().__init__(n_blocks, dim, vocab, block=TwiceBlock)


def monitored(model, depth, run, steps=3):
    records = []
    with Monitor(model, depth=depth, clock_source=FakeClock(), listeners=[records.append]) as mon:
        for _ in range(steps):
            run(model)
    assert count_hooks(model) == 0
    header = records[0]
    return mon, header, [r for r in records if r["type"] == "step"], records


def assert_additive(header, steps):
    """Every step: Σ top-level ≤ wall, unattributed ≥ 0, Σ children ≤ parent, calls ↔ moments."""
    layers = header["layers"]
    assert header["attribution"] == "enclosing"
    assert steps
    for s in steps:
        ms, calls = s["layer_ms"], s["layer_calls"]
        assert len(calls) == len(layers)
        for m, c in zip(ms, calls):
            assert (m is None) == (c == 0) and c >= 0
        top = sum(m for m, l in zip(ms, layers) if m is not None and l["parent"] is None)
        assert top <= s["wall_ms"] + TOL_MS, (top, s["wall_ms"])
        assert s["unattributed_ms"] >= -TOL_MS
        children: dict[int, float] = {}
        for m, l in zip(ms, layers):
            if m is not None and l["parent"] is not None:
                children[l["parent"]] = children.get(l["parent"], 0.0) + m
        for parent, total in children.items():
            assert ms[parent] is not None
            assert total <= ms[parent] + TOL_MS, (layers[parent]["name"], total, ms[parent])


def index_of(header, name):
    return [l["name"] for l in header["layers"]].index(name)


def run_ids(model):
    with torch.inference_mode():
        model(ids())


# -- (a) one module instance, a registered child of three blocks ----------------------------------


@pytest.mark.parametrize("depth", ["sublayers", "leaves"])
def test_a_child_shared_by_blocks_counts_once_to_each_block(depth):
    model = SharedChildNet().eval()
    _, header, steps, _ = monitored(model, depth, run_ids)
    assert_additive(header, steps)
    for k in range(3):
        block, shared = index_of(header, f"blocks.{k}"), index_of(header, f"blocks.{k}.shared")
        assert header["layers"][shared]["parent"] == block
        for s in steps:
            assert s["layer_calls"][shared] == 1
            assert s["layer_calls"][block] == 1
            assert SLEEP_S * 1e3 <= s["layer_ms"][shared] <= s["layer_ms"][block] + TOL_MS
    # every call was some block's own: nothing ran nested
    assert all("layer_nested_calls" not in s for s in steps)


def test_a_shared_child_is_hooked_once():
    model = SharedChildNet()
    layers = find_layers(model, "sublayers")
    hooks = StepHooks(model, layers, CpuTimer(len(layers)), lambda a, k: None, lambda aborted: None)
    with hooks:
        modules = {id(l.module) for l in layers}
        assert count_hooks(model) == 2 * len(modules) + 2 < 2 * len(layers) + 2
    assert count_hooks(model) == 0


# -- (b) a model-level module called from inside each block ---------------------------------------


@pytest.mark.parametrize("depth", ["blocks", "sublayers", "leaves"])
def test_a_model_level_module_run_inside_blocks_is_nested(depth):
    model = ModelLevelRotaryNet().eval()
    _mon, header, steps, records = monitored(model, depth, run_ids)
    assert_additive(header, steps)
    rotary = index_of(header, "rotary")
    assert header["layers"][rotary]["parent"] is None
    for s in steps:
        # its three calls ran inside the blocks: their time is in the blocks' moments, not a 2nd time
        assert s["layer_calls"][rotary] == 0 and s["layer_ms"][rotary] is None
        assert s["layer_nested_calls"][rotary] == 3
        assert sum(s["layer_nested_calls"]) == 3
        for k in range(3):
            assert s["layer_ms"][index_of(header, f"blocks.{k}")] >= SLEEP_S * 1e3
    said = [r["message"] for r in records if r["type"] == "status" and "inside other layers" in r["message"]]
    assert len(said) == 1 and "rotary (3×)" in said[0]


def test_a_module_run_at_model_level_and_inside_blocks_counts_only_its_own_call():
    model = ModelLevelRotaryNet(also_at_model_level=True).eval()
    _, header, steps, _ = monitored(model, "blocks", run_ids)
    assert_additive(header, steps)
    rotary = index_of(header, "rotary")
    for s in steps:
        assert s["layer_calls"][rotary] == 1
        assert s["layer_nested_calls"][rotary] == 3
        assert SLEEP_S * 1e3 <= s["layer_ms"][rotary] < 2 * SLEEP_S * 1e3 + 5  # one call, not four


# -- (c) a module called twice in one block --------------------------------------------------------


@pytest.mark.parametrize("depth", ["sublayers", "leaves"])
def test_a_module_called_twice_sums_both_calls(depth):
    model = TwiceNet().eval()
    _, header, steps, _ = monitored(model, depth, run_ids)
    assert_additive(header, steps)
    for k in range(2):
        slow = index_of(header, f"blocks.{k}.slow")
        for s in steps:
            assert s["layer_calls"][slow] == 2
            assert s["layer_ms"][slow] >= 2 * SLEEP_S * 1e3
            assert s["layer_calls"][index_of(header, f"blocks.{k}.fc")] == 1
    assert all("layer_nested_calls" not in s for s in steps)


def test_a_top_level_layer_called_twice_sums_both_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = Slow(4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            return self.b(self.a(self.a(x)))

    _, header, steps, _ = monitored(Twice(), "blocks", lambda m: m(torch.zeros(1, 4)), steps=2)
    assert_additive(header, steps)
    for s in steps:
        assert s["layer_calls"] == [2, 1]
        assert s["layer_ms"][0] >= 2 * SLEEP_S * 1e3


# -- (d) a real transformers model ----------------------------------------------------------------


@pytest.mark.parametrize("depth", ["blocks", "sublayers", "leaves"])
def test_tiny_llama_is_additive_on_every_step(tiny_llama, depth):
    prompt = torch.tensor([[5, 6, 7, 8]])
    _, header, steps, _ = monitored(tiny_llama, depth, lambda m: generate(m, prompt, 4), steps=1)
    assert len(steps) == 4
    assert_additive(header, steps)
    names = [l["name"] for l in header["layers"]]
    for s in steps:
        # every entry of this model runs exactly once per step, rotary_emb included
        assert s["layer_calls"] == [1] * len(names), [n for n, c in zip(names, s["layer_calls"]) if c != 1]


# -- the CUDA timer: event pairs per call, summed on resolve ----------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("depth", ["blocks", "sublayers", "leaves"])
def test_cuda_moments_are_additive_and_count_calls(depth):
    def run(model):
        with torch.inference_mode():
            model(ids().cuda())

    for make in (SharedChildNet, ModelLevelRotaryNet, TwiceNet):
        _mon, header, steps, _ = monitored(make().eval().cuda(), depth, run)
        assert header["timer"] == "cuda-events"
        for s in steps:  # events on one stream nest exactly, up to their ~0.5 µs resolution each
            top = sum(m for m, l in zip(s["layer_ms"], header["layers"]) if m is not None and l["parent"] is None)
            assert top <= s["wall_ms"] + 0.01
            for i, l in enumerate(header["layers"]):
                if l["parent"] is not None and s["layer_ms"][i] is not None:
                    kids = sum(m for m, k in zip(s["layer_ms"], header["layers"])
                               if m is not None and k["parent"] == l["parent"])
                    assert kids <= s["layer_ms"][l["parent"]] + 0.01
        if make is TwiceNet and depth != "blocks":
            assert all(s["layer_calls"][index_of(header, "blocks.0.slow")] == 2 for s in steps)
        if make is ModelLevelRotaryNet:
            assert all(s["layer_nested_calls"][index_of(header, "rotary")] == 3 for s in steps)


# -- calls outside a step, old recordings ---------------------------------------------------------


def test_a_layer_called_outside_a_step_is_not_timed():
    model = SharedChildNet().eval()
    layers = find_layers(model, "sublayers")
    timer = CpuTimer(len(layers))
    done = []
    hooks = StepHooks(model, layers, timer, lambda a, k: timer.begin_step(),
                      lambda aborted: done.append(timer.end_step()))
    with hooks, torch.inference_mode():
        model.blocks[0](torch.zeros(1, 8))  # a block run on its own: no step, nothing counted
        model(ids())
    (step,) = done
    assert step.calls == [1] * len(layers) and step.nested is None


def test_an_old_recording_without_layer_calls_still_loads(tmp_path):
    header = {"type": "header", "schema": "moments/1", "model": {}, "device": {}, "clock": {},
              "depth": "blocks", "layers": [{"name": "a", "parent": None}, {"name": "b", "parent": None}]}
    step = {"type": "step", "index": 0, "kind": "encode", "t_ns": 0, "wall_ms": 2.0, "tokens": 1,
            "layer_ms": [0.5, None], "layer_cycles": [None, None], "clock_mhz": None}
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (header, step, {"type": "footer", "steps": 1,
                                                                           "reason": "completed"})))
    rec = load(path)
    assert rec.steps[0].get("layer_calls") is None and not rec.warnings
    stats = RollingStats(rec.layer_names, [l["parent"] for l in rec.header["layers"]], 16)
    stats.extend(rec.steps)
    assert stats.n_steps == 1
