"""The Monitor end to end in one process: steps, kinds, tokens, cycles, coverage, endings."""

from __future__ import annotations

import pytest
import torch
from conftest import Bare, FakeClock, PlainNet, generate, ids, read_lines
from torch import nn

from llm_moments import MomentsError, Monitor
from llm_moments.engine.core.hooks import count_hooks
from llm_moments.engine.core.recording import SCHEMA, load
from llm_moments.engine.session.monitor import NO_LAYER_TIMING


def steps_of(records):
    return [r for r in records if r["type"] == "step"]


def run_plain(model, n_steps=3, **kw):
    records = []
    kw.setdefault("clock_source", FakeClock(1000.0))
    with Monitor(model, listeners=[records.append], **kw) as mon:
        for _ in range(n_steps):
            model(ids())
    return mon, records


# -- steps and layers ----------------------------------------------------------------------------


def test_every_layer_has_a_moment_in_every_step(plain_net, tmp_path):
    path = tmp_path / "run.jsonl"
    mon, records = run_plain(plain_net, 4, record=path)
    steps = steps_of(records)
    assert [s["index"] for s in steps] == [0, 1, 2, 3]
    n = len(mon.layers)
    for s in steps:
        assert s["hooks_fired"] is True
        assert len(s["layer_ms"]) == len(s["layer_cycles"]) == n
        assert all(isinstance(ms, float) and ms >= 0 for ms in s["layer_ms"])
        assert s["wall_ms"] > 0
        assert s["kind"] == "encode"  # a plain module has no generate(): every step encodes
        assert (s["tokens"], s["batch"], s["seq_len"]) == (10, 2, 5)
    assert [s["t_ns"] for s in steps] == sorted(s["t_ns"] for s in steps)
    assert count_hooks(plain_net) == 0
    assert read_lines(path)[-1] == {**mon.footer, "steps": 4}


def test_cycles_are_moment_times_clock(plain_net):
    _, records = run_plain(plain_net, 3, clock_source=FakeClock(1000.0))
    for s in steps_of(records):
        assert s["clock_mhz"] == 1000.0
        for ms, cycles in zip(s["layer_ms"], s["layer_cycles"]):
            assert isinstance(cycles, int)
            # 1000 MHz: one cycle per ns, so a moment of x ms is x × 1e6 cycles (rounded down)
            assert cycles == pytest.approx(ms * 1000 * 1e3, abs=1)
            assert cycles <= ms * 1000 * 1e3 + 1e-6
        assert s["cycles"] == pytest.approx(s["wall_ms"] * 1e6, abs=10)


def test_cycles_follow_the_clock(plain_net):
    _, records = run_plain(plain_net, 2, clock_source=FakeClock(2500.0))
    for s in steps_of(records):
        assert s["clock_mhz"] == 2500.0
        for ms, cycles in zip(s["layer_ms"], s["layer_cycles"]):
            assert cycles == pytest.approx(ms * 2500 * 1e3, abs=1)


def test_no_clock_gives_null_cycles(plain_net, tmp_path):
    path = tmp_path / "run.jsonl"
    _, records = run_plain(plain_net, 2, clock_source=FakeClock(None), record=path)
    for s in steps_of(records):
        assert s["clock_mhz"] is None
        assert s["cycles"] is None
        assert s["layer_cycles"] == [None] * len(s["layer_ms"])
        assert None not in s["layer_ms"]  # the moments themselves are still there
    rec = load(path)
    assert all(x is None for s in rec.steps for x in s["layer_cycles"])


def test_clock_source_is_named_in_the_header_and_samples(plain_net, tmp_path):
    path = tmp_path / "run.jsonl"
    run_plain(plain_net, 1, clock_source=FakeClock(1000.0, name="fakeclock"), record=path)
    rec = load(path)
    assert rec.header["clock"]["source"] == "fakeclock"
    assert rec.header["clock"]["name"] == "fake clock"
    assert rec.samples, "the sampler takes a first sample before the session starts"
    assert all(s["source"] == "fakeclock" and s["clock_mhz"] == 1000.0 for s in rec.samples)


def test_a_clock_source_status_is_recorded(plain_net, tmp_path):
    path = tmp_path / "run.jsonl"
    run_plain(plain_net, 1, clock_source=FakeClock(None, status="GPU lost: test"), record=path)
    messages = [o["message"] for o in load(path).others if o["type"] == "status"]
    assert "GPU lost: test" in messages


def test_top_level_moments_fit_in_the_step(plain_net):
    mon, records = run_plain(plain_net, 5, depth="sublayers")
    top = [i for i, l in enumerate(mon.layers) if l.parent is None]
    assert len(top) < len(mon.layers)  # children exist and must not be counted twice
    for s in steps_of(records):
        covered = sum(s["layer_ms"][i] for i in top)
        assert covered <= s["wall_ms"] + 1e-4
        assert s["unattributed_ms"] == pytest.approx(s["wall_ms"] - covered, abs=1e-4)
        assert s["unattributed_ms"] >= -1e-4
        # a child's moment is inside its parent's
        for i, layer in enumerate(mon.layers):
            if layer.parent is not None:
                assert s["layer_ms"][i] <= s["layer_ms"][layer.parent] + 1e-4


def test_bare_model_moment_fits_in_the_step():
    model = Bare()
    records = []
    with Monitor(model, clock_source=FakeClock(), listeners=[records.append]):
        model(torch.ones(4))
    (s,) = steps_of(records)
    assert s["hooks_fired"] is True
    assert 0 <= s["layer_ms"][0] <= s["wall_ms"]
    assert (s["tokens"], s["batch"], s["seq_len"]) == (4, 1, 4)


# -- prefill, decode, encode -----------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["tiny_gpt2", "tiny_llama"])
def test_generate_is_one_prefill_then_decodes(model_name, request, tmp_path):
    model = request.getfixturevalue(model_name)
    path = tmp_path / "gen.jsonl"
    with Monitor(model, clock_source=FakeClock(), record=path) as mon:
        generate(model, ids(2, 5, vocab=64), 3)
        generate(model, ids(2, 4, vocab=64), 2)
        generate(model, ids(2, 1, vocab=64), 2)  # a one-token prompt is still a prefill
    rec = load(path)
    assert [s["kind"] for s in rec.steps] == ["prefill", "decode", "decode", "prefill", "decode",
                                              "prefill", "decode"]
    assert [s["tokens"] for s in rec.steps] == [10, 2, 2, 8, 2, 2, 2]  # batch × prompt, then batch
    assert [s["seq_len"] for s in rec.steps] == [5, 1, 1, 4, 1, 1, 1]
    assert all(s["batch"] == 2 for s in rec.steps)
    assert all(s["hooks_fired"] and None not in s["layer_ms"] for s in rec.steps)
    assert rec.footer["reason"] == "completed" and rec.footer["steps"] == 7
    assert rec.header["model"]["generative"] is True
    assert rec.header["model"]["architecture"] == type(model).__name__
    assert count_hooks(model) == 0
    summary = mon.summary()
    assert [r.name for r in summary.layers] == rec.layer_names
    assert {r.kind: (r.count, r.tokens) for r in summary.steps} == {"prefill": (3, 20), "decode": (4, 8)}


def test_encoder_steps_are_encode(tiny_bert):
    records = []
    with Monitor(tiny_bert, clock_source=FakeClock(), listeners=[records.append]), torch.inference_mode():
        tiny_bert(input_ids=ids(3, 7, vocab=64))
        tiny_bert(input_ids=ids(1, 4, vocab=64))
    steps = steps_of(records)
    assert [s["kind"] for s in steps] == ["encode", "encode"]
    assert [s["tokens"] for s in steps] == [21, 4]
    assert all(None not in s["layer_ms"] for s in steps)


# -- steps without per-layer timing -------------------------------------------------------------------


class Bypass(nn.Module):
    """Calls its layers' forward directly, as a CUDA-graph replay does: the layer hooks never run."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    def forward(self, x):
        for block in self.blocks:
            x = block.forward(x)
        return x


def test_steps_whose_hooks_did_not_fire_have_no_moments(tmp_path):
    model = Bypass()
    path = tmp_path / "run.jsonl"
    with Monitor(model, clock_source=FakeClock(), record=path) as mon:
        model(torch.zeros(2, 4))
        model(torch.zeros(2, 4))
        summary = mon.summary()
    rec = load(path)
    assert len(rec.steps) == 2
    for s in rec.steps:
        assert s["hooks_fired"] is False
        assert s["layer_ms"] == [None, None, None]
        assert s["layer_cycles"] == [None, None, None]
        assert s["unattributed_ms"] is None
        assert s["wall_ms"] > 0  # the step itself was still timed
    statuses = [o["message"] for o in rec.others if o["type"] == "status"]
    assert sum(m.startswith("no per-layer timing") for m in statuses) == 1  # said once, not per step
    assert NO_LAYER_TIMING in statuses
    assert [r.count for r in summary.layers] == [0, 0, 0]


def test_hooks_that_fire_again_give_moments_again():
    model = Bypass()
    records = []
    with Monitor(model, clock_source=FakeClock(), listeners=[records.append]) as mon:
        model(torch.zeros(1, 4))
        model.forward = lambda x: mon.model.blocks[1](x)  # now one layer is called properly
        model(torch.zeros(1, 4))
    first, second = steps_of(records)
    assert first["hooks_fired"] is False
    assert second["hooks_fired"] is True
    assert second["layer_ms"][0] is None and second["layer_ms"][2] is None
    assert isinstance(second["layer_ms"][1], float)


# -- endings --------------------------------------------------------------------------------------


class Failing(PlainNet):
    def __init__(self, exc: BaseException):
        super().__init__()
        self.exc = exc
        self.armed = False

    def forward(self, x):
        if self.armed:
            self.blocks[0](self.embed(x))
            raise self.exc
        return super().forward(x)


def test_an_error_in_the_with_block_ends_with_reason_error(plain_net, tmp_path):
    path = tmp_path / "run.jsonl"
    with pytest.raises(ValueError, match="user code"), Monitor(plain_net, clock_source=FakeClock(), record=path):
        plain_net(ids())
        raise ValueError("user code failed")
    rec = load(path)
    assert rec.footer["reason"] == "error"
    assert "ValueError: user code failed" in rec.footer["error"]
    assert rec.footer["steps"] == len(rec.steps) == 1
    assert count_hooks(plain_net) == 0


def test_a_forward_that_raises_drops_its_step_and_ends_with_error(tmp_path):
    model = Failing(RuntimeError("out of memory"))
    path = tmp_path / "run.jsonl"
    with pytest.raises(RuntimeError), Monitor(model, clock_source=FakeClock(), record=path):
        model(ids())
        model.armed = True
        model(ids())
    rec = load(path)
    assert len(rec.steps) == 1 and rec.steps[0]["index"] == 0  # no half-timed step
    assert rec.footer["reason"] == "error"
    assert count_hooks(model) == 0


def test_ctrl_c_in_the_forward_ends_with_reason_interrupted(tmp_path):
    model = Failing(KeyboardInterrupt())
    path = tmp_path / "run.jsonl"
    with pytest.raises(KeyboardInterrupt), Monitor(model, clock_source=FakeClock(), record=path):
        model(ids())
        model(ids())
        model.armed = True
        model(ids())
    rec = load(path)
    assert rec.footer["reason"] == "interrupted"
    assert len(rec.steps) == 2 and rec.warnings == []
    assert count_hooks(model) == 0


def test_stop_twice_returns_the_same_footer(plain_net, tmp_path):
    path = tmp_path / "run.jsonl"
    mon = Monitor(plain_net, clock_source=FakeClock(), record=path).start()
    plain_net(ids())
    first = mon.stop()
    assert mon.stop("error") is first
    assert [r["type"] for r in read_lines(path)].count("footer") == 1
    assert first["reason"] == "completed" and first["steps"] == 1


def test_a_monitor_never_started_leaves_no_file(plain_net, tmp_path):
    path = tmp_path / "run.jsonl"
    mon = Monitor(plain_net, record=path)
    assert path.exists()  # opened at once, so a bad path fails before any work
    mon.stop()
    assert not path.exists()
    assert count_hooks(plain_net) == 0


def test_a_bad_record_path_fails_at_construction(plain_net, tmp_path):
    with pytest.raises(MomentsError, match="does not exist"):
        Monitor(plain_net, record=tmp_path / "missing" / "run.jsonl")
    with pytest.raises(MomentsError, match="is a directory"):
        Monitor(plain_net, record=tmp_path)
    assert count_hooks(plain_net) == 0


def test_sampling_rates_are_bounded(plain_net):
    with pytest.raises(MomentsError, match="sample-hz"):
        Monitor(plain_net, sample_hz=50)
    with pytest.raises(MomentsError, match="util-hz"):
        Monitor(plain_net, util_hz=0)


# -- the Python API ---------------------------------------------------------------------------------


def test_python_api_on_a_plain_module(plain_net, tmp_path):
    path = tmp_path / "api.jsonl"
    with Monitor(plain_net, record=path, clock_source=FakeClock()) as mon:
        for _ in range(3):
            plain_net(ids())
        inside = mon.summary()  # drains pending steps first
    assert inside.steps_total == 3
    summary = mon.summary()
    assert [r.name for r in summary.layers] == ["embed", "blocks.0", "blocks.1", "blocks.2", "head"]
    assert [r.count for r in summary.layers] == [3] * 5
    assert [(r.kind, r.count, r.tokens) for r in summary.steps] == [("encode", 3, 30)]
    assert 0 < summary.coverage <= 1
    text = str(summary)
    assert "blocks.1" in text and "encode" in text

    rec = load(path)
    h = rec.header
    assert h["schema"] == SCHEMA == "moments/1"
    assert h["model"]["architecture"] == "PlainNet"
    assert h["model"]["parameters"] == sum(p.numel() for p in plain_net.parameters())
    assert h["model"]["random_weights"] is None and h["model"]["generative"] is False
    assert h["device"]["kind"] == "cpu" and h["device"]["torch"] == torch.__version__
    assert h["depth"] == "blocks" and h["timer"] == "perf_counter"
    assert h["layers"] == [{"name": r.name, "parent": None, "module": m}
                           for r, m in zip(summary.layers, ["Embedding", "Block", "Block", "Block", "Linear"])]


def test_snapshot_arrays_follow_the_steps(plain_net):
    with Monitor(plain_net, clock_source=FakeClock()) as mon:
        for _ in range(4):
            plain_net(ids())
        mon.flush()
        snap = mon.snapshot()
        last2 = mon.snapshot(last=2)
    assert snap["layer_ms"].shape == (4, len(mon.layers))
    assert list(snap["kind"]) == ["encode"] * 4
    assert last2["layer_ms"].shape == (2, len(mon.layers))
    assert (last2["layer_ms"] == snap["layer_ms"][2:]).all()


def test_text_is_recorded_only_when_asked(plain_net, tmp_path):
    for record_text, expected in ((True, 1), (False, 0)):
        path = tmp_path / f"text-{record_text}.jsonl"
        with Monitor(plain_net, record=path, clock_source=FakeClock(), record_text=record_text) as mon:
            plain_net(ids())
            mon.note_text(["a prompt"], ["an output"])
        texts = [o for o in load(path).others if o["type"] == "text"]
        assert len(texts) == expected
        assert load(path).header["record_text"] is record_text
        if texts:
            assert texts[0]["prompts"] == ["a prompt"] and texts[0]["outputs"] == ["an output"]
            assert texts[0]["after_step"] == 0


def test_a_failing_listener_is_removed_and_the_others_still_get_everything(plain_net):
    got = []

    def bad(record):
        if record["type"] == "step":
            raise RuntimeError("listener bug")

    with Monitor(plain_net, clock_source=FakeClock(), listeners=[bad, got.append]):
        plain_net(ids())
        plain_net(ids())
    assert len(steps_of(got)) == 2  # including the step the bad listener failed on
    messages = [r["message"] for r in got if r["type"] == "status"]
    assert any("listener failed" in m and "listener bug" in m for m in messages)
    assert got[-1]["type"] == "footer"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_session_times_layers_with_events(plain_net, tmp_path):
    model = plain_net.cuda()
    path = tmp_path / "gpu.jsonl"
    with Monitor(model, record=path, clock_source=FakeClock(1000.0)):
        for _ in range(3):
            model(ids().cuda())
    rec = load(path)
    assert rec.header["timer"] == "cuda-events" and rec.header["device"]["kind"] == "cuda"
    assert rec.header["device"]["name"]
    assert len(rec.steps) == 3 and rec.footer["reason"] == "completed"
    for s in rec.steps:
        assert s["hooks_fired"] is True and None not in s["layer_ms"]
        assert sum(s["layer_ms"]) <= s["wall_ms"] + 1e-3  # all layers are top level here
        for ms, cycles in zip(s["layer_ms"], s["layer_cycles"]):
            assert cycles == pytest.approx(ms * 1e6, abs=1)
    assert count_hooks(model) == 0
