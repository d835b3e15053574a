"""Sharded sessions (design §10): one recording per rank, the layout in the header, what each layer
holds, the time inside collectives, pipeline stages and offloaded weights.

The multi-rank tests start two gloo ranks once (torch.multiprocessing spawn + FileStore, a tiny
random Llama saved to a temporary folder; tests/dist_worker.py holds the rank bodies): a tensor
parallel session (tp=2, a 20 ms straggler inside rank 1's ``layers.1.mlp``), then a pipeline session
(pp=2). Every test reads the recordings they left. transformers needs accelerate to load a sharded
model, so they skip without it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import dist_worker as W
import numpy as np
import pytest
import torch
from conftest import FakeClock
from torch import nn

from llm_moments import Monitor
from llm_moments.engine.core import dist as D
from llm_moments.engine.core import waits as WT
from llm_moments.engine.core.hooks import NESTED, OUTSIDE, ROOT, find_layers
from llm_moments.engine.core.recording import load, rank_record_path
from llm_moments.engine.core.work import header_coeffs, step_work

HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None
HAS_GLOO = torch.distributed.is_available() and torch.distributed.is_gloo_available()
needs_ranks = pytest.mark.skipif(not (HAS_ACCELERATE and HAS_GLOO),
                                 reason="sharded loading needs accelerate (transformers requires it for a "
                                        "tp / pp / device_map model) and torch.distributed with gloo")
needs_accelerate = pytest.mark.skipif(not HAS_ACCELERATE, reason="device_map offload needs accelerate")

def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _steps(recs: list[dict]) -> list[dict]:
    return [r for r in recs if r["type"] == "step"]


def _index(header: dict, name: str) -> int:
    return [l["name"] for l in header["layers"]].index(name)


def _ranks(sharded, sub: str, stem: str) -> tuple[list[dict], list[dict]]:
    d = sharded["dir"] / sub
    return _records(d / f"{stem}.rank0.jsonl"), _records(d / f"{stem}.rank1.jsonl")


# -- per-rank recordings -----------------------------------------------------------------------------


@needs_ranks
def test_each_rank_writes_its_own_file_with_one_shared_session(sharded):
    d = sharded["dir"] / "tp"
    assert not (d / "run.jsonl").exists()  # never two writers on one file
    r0, r1 = _ranks(sharded, "tp", "run")
    h0, h1 = r0[0], r1[0]
    assert (d / "path.rank0.txt").read_text().endswith("run.rank0.jsonl")
    assert h0["dist"]["rank"] == 0 and h1["dist"]["rank"] == 1
    assert h0["dist"]["session"] == h1["dist"]["session"] and len(h0["dist"]["session"]) >= 8
    for h, r in ((h0, 0), (h1, 1)):
        dist = h["dist"]
        assert dist["world_size"] == 2 and dist["backend"] == "gloo" and dist["local_rank"] == r
        assert dist["engine"] == "transformers-tp" and dist["host"]
        assert dist["layout"]["tp"] == 2 and dist["layout"]["pp"] == 1 and dist["layout"]["dp"] == 1
        assert dist["layout"]["tp_rank"] == r
        assert set(h["clock_origin"]) >= {"perf_counter_ns", "time_ns"}
        assert h["sharding"]["engine"] == "transformers-tp"
    # the two ranks started within seconds of each other on the same wall clock
    assert abs(h0["clock_origin"]["time_ns"] - h1["clock_origin"]["time_ns"]) < 30e9
    for recs in (r0, r1):
        assert recs[-1]["type"] == "footer" and recs[-1]["reason"] == "completed"
    load(d / "run.rank0.jsonl")  # the tolerant reader takes it


@needs_ranks
def test_tp_ranks_list_the_same_layers_and_steps(sharded):
    r0, r1 = _ranks(sharded, "tp", "run")
    assert [l["name"] for l in r0[0]["layers"]] == [l["name"] for l in r1[0]["layers"]]
    s0, s1 = _steps(r0), _steps(r1)
    assert [s["index"] for s in s0] == [s["index"] for s in s1] == list(range(len(s0)))
    assert [s["kind"] for s in s0] == [s["kind"] for s in s1] == ["prefill"] + ["decode"] * (len(s0) - 1)
    assert [s["past_len"] for s in s0] == [s["past_len"] for s in s1]


@needs_ranks
def test_tp_layers_hold_their_collectives(sharded):
    h = _ranks(sharded, "tp", "run")[0][0]
    by_name = {l["name"]: l for l in h["layers"]}
    for i in range(4):  # o_proj and down_proj are row-wise: an all-reduce each
        assert by_name[f"model.layers.{i}"]["comm"] == "all_reduce"
    assert by_name["lm_head"]["comm"] == "all_gather"          # colwise_gather_output
    assert by_name["model.embed_tokens"]["comm"] == "all_reduce"  # vocab-parallel embedding
    assert by_name["model.norm"]["comm"] is None
    assert all(l["present"] and l["device"] == "cpu" and l["offload"] is None for l in h["layers"])
    for s in _steps(_ranks(sharded, "tp", "run")[0]):
        assert len(s["comm_ms"]) == len(h["layers"])
        assert s["comm_ms"][_index(h, "model.norm")] is None
        assert all(v is not None and v > 0 for v, l in zip(s["comm_ms"], h["layers"]) if l["comm"])
        # the wait is inside the moment
        assert all(c <= m + 1e-6 for c, m in zip(s["comm_ms"], s["layer_ms"]) if c is not None)


@needs_ranks
def test_tp_work_is_this_ranks_shard(sharded):
    from transformers import AutoModelForCausalLM

    from llm_moments.engine.core.work_model import work_header

    whole = AutoModelForCausalLM.from_pretrained(sharded["model"]).eval()
    layers = find_layers(whole, "blocks")
    full = {"work": work_header(whole, layers, True), "layers": [{"name": l.name} for l in layers]}
    for recs in _ranks(sharded, "tp", "run"):
        h = recs[0]
        assert [l["name"] for l in h["layers"]] == [l["name"] for l in full["layers"]]
        for step in _steps(recs)[:2]:  # a prefill and a decode
            f_rank, b_rank = step_work(header_coeffs(h), step)
            f_full, b_full = step_work(header_coeffs(full), step)
            assert f_rank.sum() == pytest.approx(f_full.sum() / 2, rel=0.10)
            blocks = [i for i, l in enumerate(h["layers"]) if ".layers." in l["name"]]
            assert f_rank[blocks].sum() == pytest.approx(f_full[blocks].sum() / 2, rel=0.10)
            assert b_rank[blocks].sum() < 0.65 * b_full[blocks].sum()  # weights: half, activations: not


@needs_ranks
def test_tp_straggler_is_the_slow_rank_and_the_other_waits(sharded):
    r0, r1 = _ranks(sharded, "tp", "run")
    i, j = _index(r0[0], "model.layers.1"), _index(r0[0], "model.layers.3")
    slow = W.STRAGGLER_S * 1e3
    s0, s1 = _steps(r0), _steps(r1)
    wait0 = np.array([s["comm_ms"][i] for s in s0])
    wait1 = np.array([s["comm_ms"][i] for s in s1])
    compute0 = np.array([s["layer_ms"][i] for s in s0]) - wait0
    compute1 = np.array([s["layer_ms"][i] for s in s1]) - wait1
    # rank 0 waits ~20 ms inside the block's all-reduce; rank 1 computes 20 ms more. Medians over the
    # steps: two ranks share two cores with whatever else runs, so one step may be descheduled.
    assert 0.75 * slow < np.median(wait0) < 3 * slow, wait0
    assert np.all(compute1 > 0.9 * slow), compute1  # the sleep is compute, never wait
    assert np.median(compute0) < 0.5 * slow and np.median(wait1) < 0.5 * slow, (compute0, wait1)
    # culprit rule (design §10): the rank with the slowest compute, not the one that waited
    assert np.all(compute1 > compute0)
    # a block without the straggler waits little on either rank
    assert np.median([s["comm_ms"][j] for s in s0 + s1]) < 0.5 * slow


@needs_ranks
def test_tp_wrappers_come_off_the_shared_style_objects(sharded):
    for r in (0, 1):
        assert (sharded["dir"] / "tp" / f"left.rank{r}.txt").read_text() == ""


# -- pipeline stages ----------------------------------------------------------------------------------


@needs_ranks
def test_pp_stages_list_every_layer_and_mark_the_absent_ones(sharded):
    r0, r1 = _ranks(sharded, "pp", "sublayers")
    h0, h1 = r0[0], r1[0]
    names = [l["name"] for l in h0["layers"]]
    assert names == [l["name"] for l in h1["layers"]]
    assert [l["parent"] for l in h0["layers"]] == [l["parent"] for l in h1["layers"]]
    own0 = {"model.embed_tokens", "model.layers.0", "model.layers.1", "model.rotary_emb"}
    own1 = {"model.layers.2", "model.layers.3", "model.norm", "model.rotary_emb", "lm_head"}
    for h, own, recs in ((h0, own0, r0), (h1, own1, r1)):
        assert h["dist"]["engine"] == "transformers-pp" and h["dist"]["layout"]["pp"] == 2
        for k, l in enumerate(h["layers"]):
            top = l["name"] if l["parent"] is None else h["layers"][l["parent"]]["name"]
            expect = top in own or l.get("synthetic", False)
            assert l["present"] is expect, l
            if not expect:
                assert l["device"] is None
                # a placeholder is not timed: no moment, no calls
                assert all(s["layer_ms"][k] is None and s["layer_calls"][k] == 0 for s in _steps(recs))
        # an absent block gets the children an owned one has (same names on every stage)
        assert "model.layers.3.mlp" in names and "model.layers.0.self_attn" in names
    assert h0["dist"]["layout"]["pp_rank"] == 0 and h1["dist"]["layout"]["pp_rank"] == 1
    assert h0["dist"]["session"] == h1["dist"]["session"]


@needs_ranks
def test_pp_kind_and_past_right_on_every_stage(sharded):
    r0, r1 = _ranks(sharded, "pp", "sublayers")
    s0, s1 = _steps(r0), _steps(r1)
    assert [s["index"] for s in s0] == [s["index"] for s in s1]
    for a, b in zip(s0, s1):
        # stage 1 gets its hidden states as inputs_embeds and fills only its own layers' cache
        assert (a["kind"], a["past_len"], a["seq_len"], a.get("kv_len")) == \
               (b["kind"], b["past_len"], b["seq_len"], b.get("kv_len"))
    assert [s["kind"] for s in s1] == ["prefill"] + ["decode"] * (len(s1) - 1)
    assert [s["past_len"] for s in s1] == [0] + [len(W.IDS[0]) + k for k in range(len(s1) - 1)]


@needs_ranks
def test_pp_send_and_receive_waits_are_a_row_of_their_own(sharded):
    r0, r1 = _ranks(sharded, "pp", "sublayers")
    for recs, expect in ((r0, {"send", "broadcast"}), (r1, {"recv", "broadcast"})):
        h = recs[0]
        k = _index(h, WT.PIPELINE_ENTRY)
        entry = h["layers"][k]
        assert entry["parent"] is None and entry["synthetic"] and entry["comm"]
        assert h["work"]["layers"][k][:5] == [0, 0, 0, 0, 0]
        for s in _steps(recs):
            assert s["layer_calls"][k] >= 2
            assert s["comm_ms"][k] == s["layer_ms"][k] > 0  # all wait
            assert set(s["pipeline_ms"]) == expect
            assert sum(s["pipeline_ms"].values()) == pytest.approx(s["layer_ms"][k], rel=0.05, abs=0.05)
            # the wait is outside every layer: top-level moments still never overlap
            tops = sum(m for m, l in zip(s["layer_ms"], h["layers"]) if m is not None and l["parent"] is None)
            assert tops <= s["wall_ms"] + 0.05


# -- offload ------------------------------------------------------------------------------------------


@needs_accelerate
def test_offloaded_layers_are_marked_and_their_load_time_recorded(tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir = W.save_tiny_llama(tmp_path / "model")
    # a tiny CPU budget: the first blocks stay in memory, the rest go to disk
    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="auto", max_memory={"cpu": "600KB"},
                                                 offload_folder=str(tmp_path / "offload")).eval()
    path = tmp_path / "off.jsonl"
    with Monitor(model, record=path, clock_source=FakeClock(), roof=False) as mon, torch.no_grad():
        model.generate(torch.tensor(W.IDS), max_new_tokens=3, do_sample=False)
    assert mon.device.type == "cpu"
    recs = _records(path)
    rec = load(path)  # the checked reader keeps every step (load_ms[] included)
    assert rec.skipped == 0 and len(rec.steps) == len(_steps(recs))
    h = recs[0]
    assert "dist" not in h  # one process
    assert h["sharding"]["engine"] == "accelerate-device-map" and "disk" in h["sharding"]["offload"]
    dmap = model.hf_device_map
    for l in h["layers"]:
        if dmap.get(l["name"]) == "disk" and "rotary" not in l["name"]:
            assert l["offload"] == "disk", l
        if dmap.get(l["name"]) == "cpu":
            assert l["offload"] is None, l  # held in memory: nothing is loaded per call
    disk = [k for k, l in enumerate(h["layers"]) if l["offload"] == "disk"]
    kept = [k for k, l in enumerate(h["layers"]) if l["offload"] is None]
    assert disk and kept
    for s in _steps(recs):
        assert len(s["load_ms"]) == len(h["layers"])
        for k in disk:
            assert 0 < s["load_ms"][k] <= s["layer_ms"][k] + 1e-6  # inside the moment, and shown apart
        assert all(s["load_ms"][k] is None for k in kept)
    # the accelerate hooks are back to their own methods
    for _, hook, _ in D.offloaded_hooks(model):
        assert "pre_forward" not in vars(hook) and "post_forward" not in vars(hook)


# -- the pieces, without ranks ------------------------------------------------------------------------


def test_rank_record_path():
    assert rank_record_path("run.jsonl", 3).name == "run.rank3.jsonl"
    assert rank_record_path("/x/y/run", 0) == Path("/x/y/run.rank0")
    assert rank_record_path("a.b.jsonl", 1).name == "a.b.rank1.jsonl"
    assert rank_record_path("run.rank2.jsonl", 5).name == "run.rank2.jsonl"


def test_single_process_session_has_a_clock_origin_and_no_dist(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    path = tmp_path / "run.jsonl"
    before = time.time_ns()
    with Monitor(model, record=path, clock_source=FakeClock(), roof=False):
        model(torch.randn(1, 4))
    h = _records(path)[0]
    assert path.exists() and "dist" not in h and "sharding" not in h
    assert before - 1e9 < h["clock_origin"]["time_ns"] < time.time_ns()
    # an unsplit model: header layers as before (placement fields only when a model is split)
    assert all(set(l) == {"name", "parent", "module"} for l in h["layers"])
    step = _steps(_records(path))[0]
    assert "comm_ms" not in step and "load_ms" not in step


class PipelineIdentityLayer(nn.Identity):  # the class name is what marks a placeholder
    def forward(self, *args, **kwargs):
        return args[0]


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 8)

    def forward(self, x):
        return self.mlp(self.attn(x))


class _Stage(nn.Module):
    def __init__(self, own: set[int]):
        super().__init__()
        self.embed = nn.Linear(8, 8) if 0 in own else PipelineIdentityLayer()
        self.blocks = nn.ModuleList([_Block() if i in own else PipelineIdentityLayer() for i in range(4)])
        self.head = nn.Linear(8, 8) if 3 in own else PipelineIdentityLayer()

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def test_placeholder_blocks_are_found_and_not_timed():
    a, b = _Stage({0, 1}), _Stage({2, 3})
    la, lb = find_layers(a, "sublayers"), find_layers(b, "sublayers")
    assert [l.name for l in la] == [l.name for l in lb]
    assert [l.name for l in la][:4] == ["embed", "blocks.0", "blocks.0.attn", "blocks.0.mlp"]
    assert [l.present for l in la if l.name.startswith("blocks.3")] == [False, False, False]
    records = []
    with Monitor(b, depth="sublayers", listeners=[records.append], clock_source=FakeClock(), roof=False) as mon:
        b(torch.randn(2, 8))
    step = _steps(records)[0]
    for k, l in enumerate(mon.layers):
        assert (step["layer_calls"][k] == 1) is l.present, l.name
    h = records[0]  # a placeholder makes it a split model: placement fields in the header
    assert [l["present"] for l in h["layers"]] == [l.present for l in lb]


class _FakeEvent:
    """A CUDA event stand-in: ``record`` stamps a host time, elapsed_time in ms."""

    clock = [0.0]

    def __init__(self):
        self.t = None
        self.synced = 0

    def record(self, stream=None):
        self.t = _FakeEvent.clock[0]

    def elapsed_time(self, other):
        return other.t - self.t

    def synchronize(self):
        self.synced += 1


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_span_timer_counts_to_the_innermost_open_entry_and_its_ancestors(kind):
    stack = [OUTSIDE]
    made = []

    def factory():
        made.append(_FakeEvent())
        return made[-1]

    t = WT.SpanTimer(4, stack, kind=kind, event_factory=factory, stream_fn=lambda: None)

    def collective(ms):
        if kind == "cuda":
            _FakeEvent.clock[0] += ms
        else:
            time.sleep(ms / 1e3)

    wrapped = t.span(collective)
    wrapped(5.0)  # between steps: not counted
    for _ in range(2):  # the second step reuses the first one's events
        t.begin_step()
        stack[:] = [ROOT]
        wrapped(1.0)              # no layer open: outside
        stack.append(0)
        stack.append(1)
        wrapped(4.0)              # inside block 0's attn
        stack.pop()
        stack.append(NESTED)      # a module call with no entry, inside the block: counts to the block
        wrapped(2.0)
        stack.pop()
        stack.pop()
        stack[:] = [OUTSIDE]
        own, outside = t.resolve(t.end_step())
        total = WT.inclusive(own, [None, 0, 0, None])
        ms = [v / 1e6 for v in total]
        if kind == "cuda":  # fake events: exact
            assert ms[1] == pytest.approx(4.0, abs=0.01)
            assert ms[0] == pytest.approx(6.0, abs=0.02)  # the block holds its child's wait and its own
            assert outside / 1e6 == pytest.approx(1.0, abs=0.01)
        else:  # real sleeps: never shorter than asked, late by however busy the machine is
            assert 4.0 <= ms[1] < 4.0 + 50
            assert ms[0] - ms[1] >= 2.0 and ms[0] - ms[1] < 2.0 + 50  # its child's wait and its own
            assert 1.0 <= outside / 1e6 < 1.0 + 50
        assert ms[2] == 0 and ms[3] == 0
    if kind == "cuda":
        assert len(made) == 6 and t.frames_created == 1  # a pool: no new event after warm-up
        assert made[-1].synced >= 1  # resolve waited for the step's last event only


def test_instruments_restore_what_they_wrapped():
    class Hook:
        offload = True
        weights_map = None

        def pre_forward(self, module, *a, **k):
            return a, k

        def post_forward(self, module, out):
            return out

    lin = nn.Linear(2, 2)
    lin._hf_hook = Hook()
    model = nn.Sequential(lin, nn.Linear(2, 2))
    layers = find_layers(model)
    stack = [OUTSIDE]
    inst = WT.Instruments(model, layers, stack, timer=None, device=torch.device("cpu"))
    assert inst.load is not None and "pre_forward" in vars(lin._hf_hook)
    inst.close()
    assert "pre_forward" not in vars(lin._hf_hook) and "post_forward" not in vars(lin._hf_hook)


def test_parallel_layout_from_a_mesh_like_object():
    class Mesh:
        mesh_dim_names = ("pp", "fsdp", "tp")
        mesh = torch.zeros(2, 1, 2)

        def get_coordinate(self):
            return [1, 0, 1]

    model = nn.Linear(2, 2)
    model._device_mesh = Mesh()
    layout = D.parallel_layout(model, rank=3, world_size=4)
    assert (layout["tp"], layout["pp"], layout["dp"]) == (2, 2, 1)
    assert (layout["tp_rank"], layout["pp_rank"], layout["dp_rank"]) == (1, 1, 0)
    assert math.isclose(layout["mesh"]["tp"], 2)


@needs_ranks
def test_every_sharded_recording_reads_back_whole(sharded, tmp_path):
    """The checked reader keeps every step of the tp and pp files (comm_ms, pipeline_ms, ...): the
    offline analysis sees what the ranks wrote."""
    for sub, stem in (("tp", "run"), ("pp", "sublayers")):
        for rank in (0, 1):
            path = sharded["dir"] / sub / f"{stem}.rank{rank}.jsonl"
            rec = load(path)
            assert rec.skipped == 0 and rec.warnings == [], (path.name, rec.warnings)
            assert len(rec.steps) == len(_steps(_records(path))) > 0
