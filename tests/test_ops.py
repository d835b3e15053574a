"""Ops mode (engine/core/ops.py): the operators inside one layer, timed for N steps."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from llm_moments.engine.core import ops as O
from llm_moments.engine.core.hooks import count_hooks
from llm_moments.engine.core.recording import check_record
from llm_moments.engine.errors import MomentsError
from llm_moments.engine.session.monitor import Monitor


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Sequential(nn.Linear(32, 32), nn.LayerNorm(32)),
                         nn.Linear(32, 4))


def _run(model: nn.Module, layer, steps: int, total: int) -> list[dict]:
    recs: list[dict] = []
    mon = Monitor(model, listeners=[recs.append], sample_hz=1, util_hz=1)
    base = count_hooks(model)
    with mon:
        assert mon.start_ops(layer, steps) == 2
        with torch.inference_mode():
            for _ in range(total):
                model(torch.randn(3, 16))
    assert count_hooks(model) == base  # every hook went, the probe's pair included
    return recs


def test_ops_records_for_n_steps_and_sum_within_moment():
    recs = _run(_model(), 2, steps=3, total=5)
    ops = [r for r in recs if r["type"] == "ops"]
    steps = {r["index"]: r for r in recs if r["type"] == "step"}
    assert [r["step"] for r in ops] == [0, 1, 2]
    for r in ops:
        assert r["layer"] == 2 and r["ops"]
        names = {o["name"] for o in r["ops"]}
        assert any("linear" in n or "addmm" in n or "mm" in n for n in names)
        assert any("layer_norm" in n for n in names)
        assert all(o["calls"] >= 1 and o["ms"] >= 0 for o in r["ops"])
        total = sum(o["ms"] for o in r["ops"])
        assert total <= steps[r["step"]]["layer_ms"][2] + 1e-9   # Σ ops ≤ the layer's moment
        assert total <= r["layer_ms"] + 1e-9
        assert check_record(r, 4) is None   # the reader takes them
    messages = [r["message"] for r in recs if r["type"] == "status"]
    assert any("ops mode on for layer 2" in m and "slower" in m for m in messages)
    assert any("ops mode off for layer 2" in m for m in messages)


def test_ops_by_name_and_errors():
    model = _model()
    recs = _run(model, "2", steps=1, total=2)
    assert [r["step"] for r in recs if r["type"] == "ops"] == [0]
    mon = Monitor(_model(), sample_hz=1, util_hz=1)
    with mon:
        assert mon.start_ops("2", 1) == 2
        with pytest.raises(MomentsError, match="no layer 9"):
            mon.start_ops(9)
        with pytest.raises(MomentsError, match="no layer named"):
            mon.start_ops("nope")
        with pytest.raises(MomentsError, match="ops steps"):
            mon.start_ops(1, 0)


def test_find_layer_suffix():
    class L:
        def __init__(self, name):
            self.name = name

    layers = [L("model.embed"), L("model.layers.0"), L("model.layers.1"), L("lm_head")]
    assert O.find_layer(layers, "lm_head") == 3
    assert O.find_layer(layers, 1) == 1
    assert O.find_layer(layers, "layers.1") == 2
    with pytest.raises(ValueError):
        O.find_layer(layers, True)


def test_mode_popped_when_forward_raises():
    class Boom(nn.Module):
        def forward(self, x):
            x = x * 2
            raise RuntimeError("boom")

    boom = Boom()
    probe = O.OpsProbe(boom, 0, 1).attach()
    with pytest.raises(RuntimeError):
        boom(torch.ones(2))
    assert probe._depth == 0
    probe.detach()
    # no mode left on: ops outside the layer are not timed
    before = len(probe._ops)
    torch.ones(2) + 1
    assert len(probe._ops) == before


class _FakeClock:
    now_ms = 0.0


class _FakeEvent:
    """A CUDA event stand-in: ``record`` stamps the fake clock, ``elapsed_time`` gives ms."""
    made = 0

    def __init__(self):
        _FakeEvent.made += 1
        self.t = None
        self.synced = False

    def record(self):
        self.t = _FakeClock.now_ms

    def synchronize(self):
        self.synced = True

    def elapsed_time(self, other):
        return other.t - self.t


def test_gpu_path_with_fake_events_from_a_pool():
    """The GPU path (event pairs from a pool, resolved by the worker) on fake events and a fake
    dispatch: each op 'runs' 0.5 ms, the layer span holds them all."""
    _FakeEvent.made = 0
    pool = O.EventPool(_FakeEvent, size=4)
    assert _FakeEvent.made == 4

    class Layer(nn.Module):
        def forward(self, x):
            return x

    layer = Layer()
    probe = O.OpsProbe(layer, 5, 2, pool=pool)
    made_after_warmup = _FakeEvent.made

    def fake_op(name):
        mode = probe.mode

        class F:
            overloadpacket = name

            def __call__(self, *a, **k):
                _FakeClock.now_ms += 0.5
                return None

            def __hash__(self):
                return hash(name)

            def __eq__(self, other):
                return getattr(other, "overloadpacket", None) == name

        mode.__torch_dispatch__(F(), (), ())

    probe.attach()
    probe._pre(layer, ())
    _FakeClock.now_ms += 0.25
    fake_op("aten.mm")
    fake_op("aten.add")
    fake_op("aten.mm")
    probe._post(layer, (), None)
    pending = probe.end_step(7)
    rec = probe.resolve(pending)
    assert rec["step"] == 7 and rec["layer"] == 5
    assert rec["ops"] == [{"name": "aten.mm", "calls": 2, "ms": 1.0}, {"name": "aten.add", "calls": 1, "ms": 0.5}]
    assert rec["layer_ms"] == 1.75
    assert sum(o["ms"] for o in rec["ops"]) <= rec["layer_ms"]
    # every event went back to the pool: the next step takes them again, none created
    n_free = len(pool._free)
    assert n_free >= 8
    probe._pre(layer, ())
    fake_op("aten.mm")
    probe._post(layer, (), None)
    probe.discard(probe.end_step(8))
    assert len(pool._free) == n_free and probe.done
    assert _FakeEvent.made == made_after_warmup + 4  # 4 made ahead, 5 pairs' worth taken: the pool grew once
    probe.detach()


def test_ops_run_options_carried():
    from llm_moments.engine.session.setup import add_run_options, run_options_argv

    p = argparse.ArgumentParser()
    add_run_options(p)
    args = p.parse_args(["--ops", "model.layers.3", "--ops-steps", "4"])
    assert args.ops == "model.layers.3" and args.ops_steps == 4
    argv = run_options_argv(args)
    assert "--ops=model.layers.3" in argv and "--ops-steps=4" in argv
    assert p.parse_args([]).ops is None


def test_slowdown():
    assert O.slowdown({"layer_ms": 3.0}, 1.0) == 3.0
    assert O.slowdown({"layer_ms": 3.0}, float("nan")) is None


class _Attention(nn.Module):
    """A QKV Linear with bias on 3-D input (aten.addmm), eager attention (4-D matmuls: aten.bmm), an
    output Linear without bias (aten.mm), softmax and a residual (no FLOP formula)."""

    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        att = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return x + self.out(y)


def test_ops_flops_equal_flop_counter_mode_and_only_where_a_formula_exists():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = nn.Sequential(_Attention(), nn.LayerNorm(32), nn.Linear(32, 8))
    x = torch.randn(2, 5, 32)
    recs: list[dict] = []
    mon = Monitor(model, listeners=[recs.append], sample_hz=1, util_hz=1)
    with mon:
        mon.start_ops(0, 2)
        with torch.inference_mode():
            for _ in range(3):
                model(x)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model[0](x)
    expected = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert set(expected) == {"aten.addmm", "aten.mm", "aten.bmm"}   # the layer does all three
    # b·t rows × 32 in × 96 out (QKV), × 32 out (output), and 2 · b·heads · 5×8×5 for QK^T and att·V
    assert expected["aten.addmm"] == 2 * 10 * 32 * 96 and expected["aten.mm"] == 2 * 10 * 32 * 32
    ops = [r for r in recs if r["type"] == "ops"]
    assert len(ops) == 2
    for r in ops:
        rows = {o["name"]: o for o in r["ops"]}
        assert {n: rows[n]["flops"] for n in expected} == expected
        assert rows["aten.bmm"]["calls"] == 2
        without = [o for o in r["ops"] if o["name"] not in expected]
        assert without and all("flops" not in o for o in without)   # unknown is absent, never 0
        assert any(o["name"] == "aten._softmax" for o in without)
        assert check_record(r, 3) is None


def test_ops_flops_unknown_when_the_formula_cannot_count():
    """A formula that cannot count one call (here: the second) leaves the op without ``flops`` for
    that step: a partial sum is never written."""
    from torch.utils.flop_counter import flop_registry

    probe = O.OpsProbe(nn.Identity(), 0, 1)
    seen: list = []

    def flaky(*a, **k):
        seen.append(1)
        if len(seen) == 2:
            raise ValueError("symbolic size")
        return flop_registry[torch.ops.aten.mm](*a, **k)

    probe._names[torch.ops.aten.mm.default] = ("aten.mm", flaky, False)
    a, b = torch.ones(2, 3), torch.ones(3, 4)
    with probe.mode:
        torch.mm(a, b)
        a + 1
    probe._spans.append(1000)
    rows = {o["name"]: o for o in probe.resolve(probe.end_step(0))["ops"]}
    assert rows["aten.mm"]["flops"] == 2 * 2 * 3 * 4 and "flops" not in rows["aten.add"]
    with probe.mode:
        torch.mm(a, b)
        torch.mm(a, b)
    probe._spans.append(1000)
    rows = {o["name"]: o for o in probe.resolve(probe.end_step(1))["ops"]}
    assert rows["aten.mm"]["calls"] == 2 and "flops" not in rows["aten.mm"]


@pytest.mark.parametrize("row, words", [
    ({"name": "aten.mm", "calls": 1, "ms": 0.1, "flops": -1}, "negative"),
    ({"name": "aten.mm", "calls": 1, "ms": 0.1, "flops": "many"}, "not a number"),
    ({"name": "aten.mm", "calls": 1, "ms": 0.1, "flops": True}, "not a number"),
    ({"name": "aten.mm", "calls": 1, "ms": 0.1, "flops": 1e30}, "out of range"),
    ({"name": "aten.mm", "calls": 1.5, "ms": 0.1}, "not an integer"),
    ({"name": "aten.mm", "calls": 1}, "ms is missing"),
    ({"calls": 1, "ms": 0.1}, "no name"),
])
def test_ops_record_validation(row, words):
    good = {"type": "ops", "step": 3, "layer": 1, "layer_ms": 0.5,
            "ops": [{"name": "aten.add", "calls": 2, "ms": 0.1}, {"name": "aten.mm", "calls": 1, "ms": 0.2,
                                                                  "flops": 4096}]}
    assert check_record(good, 2) is None
    assert "layer 1" in check_record(good, 1)
    bad = {**good, "ops": [row]}
    problem = check_record(bad, 2)
    assert problem is not None and words in problem, problem
    assert check_record({**good, "ops": "x"}, 2) == "ops is str, not a list"
    assert check_record({**good, "ops": [{"name": "aten.mm", "calls": 1, "ms": 0.1,
                                          "flops": float("nan")}]}, 2) is not None


def test_detail_ops_box_shows_flops_where_known():
    from llm_moments.tui.screens.detail import LayerDetailScreen

    rec = {"type": "ops", "step": 4, "layer": 1, "layer_ms": 2.0,
           "ops": [{"name": "aten.mm", "calls": 2, "ms": 1.0, "flops": 3_000_000_000},
                   {"name": "aten.add", "calls": 1, "ms": 0.5}]}
    text = str(LayerDetailScreen._ops(rec, 1.0))
    lines = text.splitlines()
    assert "FLOPs" in lines[0] and "GFLOP/s" in lines[0]
    mm = next(l for l in lines if "aten.mm" in l)
    add = next(l for l in lines if "aten.add" in l)
    assert mm.split()[-3:] == ["3.00", "G", "3000"]      # 3e9 FLOPs in 1 ms: 3000 GFLOP/s
    assert add.split()[-2:] == ["—", "—"]                 # unknown, not 0
