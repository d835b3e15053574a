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
