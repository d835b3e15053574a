"""Layers on several GPUs (issue #9 item 5), on CPU: fake CUDA events and streams, fake NVML with two GPUs.

The fake device model: every stream has a clock (ns) that only the work queued on it moves; an event
takes the clock of the stream it is recorded on; ``elapsed_time`` refuses two events of different
devices (as CUDA does) and a stream refuses an event of another device (an event belongs to the
device of its first record). ``wait_event`` makes a stream's clock catch up with the event's.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_nvml import TwoGpuNvml
from torch import nn

from llm_moments import Monitor
from llm_moments.engine.core.nvml import open_device
from llm_moments.engine.core.recording import load
from llm_moments.engine.core.sampler import MultiClockSource, NvmlClockSource
from llm_moments.engine.core.timing import CpuTimer, CudaTimer, MultiCudaTimer, make_timer
from llm_moments.engine.session import monitor as monitor_mod

MS = 1_000_000


class FakeStream:
    def __init__(self, device: str):
        self.device = torch.device(device)
        self.now_ns = 0
        self.waits = 0

    def wait_event(self, ev: FakeEvent) -> None:
        assert ev.t_ns is not None, "waiting on an event never recorded"
        self.waits += 1
        self.now_ns = max(self.now_ns, ev.t_ns)


class FakeEvent:
    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.t_ns: int | None = None

    def record(self, stream: FakeStream) -> None:
        assert stream.device == self.device, f"an event of {self.device} recorded on a {stream.device} stream"
        self.t_ns = stream.now_ns

    def synchronize(self) -> None:
        assert self.t_ns is not None

    def elapsed_time(self, other: FakeEvent) -> float:
        assert other.device == self.device, f"events of {self.device} and {other.device} subtracted"
        return (other.t_ns - self.t_ns) / 1e6


class FakeGpus:
    """Streams and an event factory for ``n`` fake GPUs, and a way to queue work on one."""

    def __init__(self, n: int = 2):
        self.streams = {f"cuda:{k}": FakeStream(f"cuda:{k}") for k in range(n)}
        self.created: list[FakeEvent] = []

    def event(self, device: torch.device) -> FakeEvent:
        ev = FakeEvent(device)
        self.created.append(ev)
        return ev

    def stream(self, device: torch.device) -> FakeStream:
        return self.streams[str(device)]

    def work(self, device: str, ms: float) -> None:
        self.streams[device].now_ns += int(ms * MS)

    def copy(self, src: str, dst: str, ms: float) -> None:
        """A cross-device copy: runs after the source stream's queued work, the destination waits for it."""
        s, d = self.streams[src], self.streams[dst]
        s.now_ns += int(ms * MS)
        d.now_ns = max(d.now_ns, s.now_ns)


PLACES = ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
COST_MS = [2.0, 3.0, 4.0, 1.0]
COPY_MS = 0.5


def drive(timer, gpus: FakeGpus, places=PLACES, costs=COST_MS, copy_ms=COPY_MS, idle_ms=0.0):
    """One step through the timer's hot path as the hooks drive it; the layer on a new device copies
    its inputs from the previous one (accelerate's pre_forward) inside its moment."""
    timer.begin_step()
    for i, (dev, ms) in enumerate(zip(places, costs)):
        timer.start(i)
        if i and places[i - 1] != dev:
            gpus.copy(places[i - 1], dev, copy_ms)
        gpus.work(dev, ms)
        timer.stop(i)
    pending = timer.end_step()
    for s in gpus.streams.values():  # between steps: the host waits (generate() syncs every token)
        s.now_ns = max(x.now_ns for x in gpus.streams.values()) + int(idle_ms * MS)
    return timer.resolve(pending)


def multi_timer(gpus: FakeGpus, handoff=True, clock=None) -> MultiCudaTimer:
    hand = [None, None, "cuda:0", None] if handoff else None
    kw = {"clock": clock} if clock is not None else {}
    return MultiCudaTimer(4, PLACES, primary="cuda:0", handoff_from=hand, event_factory=gpus.event,
                          stream_fn=gpus.stream, **kw)


# -- the timer ----------------------------------------------------------------------------------------


def test_each_layer_is_timed_on_its_own_device():
    gpus = FakeGpus()
    timer = multi_timer(gpus, clock=lambda: 0)
    assert timer.devices == ["cuda:0", "cuda:1"] and timer.entry_devices == PLACES
    done = drive(timer, gpus)
    # moments from each device's own events (FakeEvent refuses anything else); the first layer on
    # cuda:1 carries the copy of its inputs and nothing of cuda:0's queue
    assert [ns / MS for ns in done.layer_ns] == [2.0, 3.0, 4.0 + COPY_MS, 1.0]
    assert done.calls == [1, 1, 1, 1]
    # cuda:0 begins at 0; cuda:1's timeline joins it at the host time of its begin (0 here)
    assert [ns / MS for ns in done.start_ns] == [0.0, 2.0, 5.0, 5.0 + 4.0 + COPY_MS]
    # wall: the first device's begin to the last device's end
    assert done.wall_ns / MS == pytest.approx(sum(COST_MS) + COPY_MS)
    assert sum(done.layer_ns) <= done.wall_ns
    # the pools: each device's events only ever recorded on that device's streams
    by_dev = {str(e.device) for e in gpus.created}
    assert by_dev == {"cuda:0", "cuda:1"}
    assert gpus.streams["cuda:1"].waits == 1


def test_without_the_handoff_the_first_layer_holds_the_previous_device_backlog():
    # Why the hand-off exists: an idle device's start event runs at once, while cuda:0 still works.
    gpus = FakeGpus()
    done = drive(multi_timer(gpus, handoff=False, clock=lambda: 0), gpus)
    assert done.layer_ns[2] / MS == 2.0 + 3.0 + COPY_MS + 4.0
    assert sum(done.layer_ns) > done.wall_ns  # moments of two devices overlap: what the hand-off prevents


def test_device_timelines_are_host_aligned():
    gpus = FakeGpus()
    ticks = iter(range(0, 10**9, 7_000))   # the host clock moves 7 µs between the two begin records
    timer = multi_timer(gpus, clock=lambda: next(ticks))
    done = drive(timer, gpus)
    assert [ns / MS for ns in done.layer_ns] == [2.0, 3.0, 4.5, 1.0]   # moments: no host time in them
    assert done.start_ns[2] == 7_000 + 5 * MS                          # cuda:1's offsets: + its host offset
    assert done.wall_ns == 7_000 + int(10.5 * MS)


def test_pools_are_reused_and_calls_sum():
    gpus = FakeGpus()
    timer = multi_timer(gpus, clock=lambda: 0)
    for _ in range(3):
        drive(timer, gpus)
    n = len(gpus.created)
    for _ in range(5):
        done = drive(timer, gpus)
    assert len(gpus.created) == n and timer.frames_created == 1   # no event made after warm-up
    # a layer on cuda:1 called twice in a step: two spans, summed, counted
    timer.begin_step()
    for _ in range(2):
        timer.start(3)
        gpus.work("cuda:1", 1.5)
        timer.stop(3)
    timer.nest(1)
    done = timer.resolve(timer.end_step())
    assert done.calls == [0, 0, 0, 2] and done.layer_ns[3] == 3 * MS and done.nested == [0, 1, 0, 0]
    timer.begin_step()
    timer.discard(timer.end_step())
    assert len(timer._free) == 1


def test_single_device_cuda_timer_with_injected_events():
    gpus = FakeGpus(1)
    timer = CudaTimer(3, "cuda:0", event_factory=gpus.event, stream_fn=gpus.stream)
    timer.begin_step()
    for i, ms in enumerate((1.0, 2.0, 3.0)):
        timer.start(i)
        gpus.work("cuda:0", ms)
        timer.stop(i)
    done = timer.resolve(timer.end_step())
    assert [ns / MS for ns in done.layer_ns] == [1.0, 2.0, 3.0]
    assert [ns / MS for ns in done.start_ns] == [0.0, 1.0, 3.0]
    assert done.wall_ns == 6 * MS


def test_make_timer_picks_by_devices():
    assert isinstance(make_timer(4, "cpu", PLACES), CpuTimer)
    one = make_timer(4, "cuda:0", ["cuda:0"] * 4)
    assert type(one) is CudaTimer and one.devices == ["cuda:0"]
    assert type(make_timer(4, "cuda:0")) is CudaTimer
    assert type(make_timer(4, "cuda:0", ["cuda:0", "cpu", None, "cuda:0"])) is CudaTimer
    multi = make_timer(4, "cuda:0", PLACES, [None, None, "cuda:0", None])
    assert isinstance(multi, MultiCudaTimer) and multi.devices == ["cuda:0", "cuda:1"]
    # a layer without a device (or on CPU) is timed on the primary device
    odd = MultiCudaTimer(3, ["cuda:1", None, "cpu"], primary="cuda:0")
    assert odd.devices == ["cuda:0", "cuda:1"] and odd.entry_devices == ["cuda:1", "cuda:0", "cuda:0"]


# -- the monitor: placement, per-device clocks, header, records -------------------------------------------


class Work(nn.Module):
    """A layer that queues ``ms`` of work on its fake device (and copies its inputs when it is the
    first on a device: accelerate's pre_forward, inside the moment)."""

    def __init__(self, gpus: FakeGpus, device: str, ms: float, copy_from: str | None = None):
        super().__init__()
        self.gpus, self.dev, self.ms, self.copy_from = gpus, device, ms, copy_from
        self._hf_hook = SimpleNamespace(execution_device=device)   # where accelerate computes it

    def forward(self, x):
        if self.copy_from is not None:
            self.gpus.copy(self.copy_from, self.dev, COPY_MS)
        self.gpus.work(self.dev, self.ms)
        return x


class SplitNet(nn.Module):
    def __init__(self, gpus: FakeGpus, places=PLACES):
        super().__init__()
        self.blocks = nn.ModuleList(
            Work(gpus, d, ms, places[i - 1] if i and places[i - 1] != d else None)
            for i, (d, ms) in enumerate(zip(places, COST_MS)))
        self.hf_device_map = {f"blocks.{i}": int(d.split(":")[1]) for i, d in enumerate(places)}

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


@pytest.fixture
def two_gpus(monkeypatch):
    """Fake GPUs wired into the monitor: its make_timer builds the per-device timer on fake events,
    its clock is fake NVML with cuda:0 at 1980 MHz and cuda:1 at 1410 MHz."""
    gpus = FakeGpus()

    def fake_make_timer(n, device, layer_devices=None, handoff_from=None):
        return MultiCudaTimer(n, layer_devices, primary="cuda:0", handoff_from=handoff_from,
                              event_factory=gpus.event, stream_fn=gpus.stream)

    monkeypatch.setattr(monitor_mod, "make_timer", fake_make_timer)
    nvml = TwoGpuNvml(sm=(1980, 1410))
    source = MultiClockSource({"cuda:0": NvmlClockSource(open_device(0, binding=nvml)),
                               "cuda:1": NvmlClockSource(open_device(1, binding=nvml))})
    yield gpus, source
    source.close()


def _run(model, gpus, source, path, steps=3):
    records = []
    with Monitor(model, clock_source=source, record=path, listeners=[records.append]) as mon:
        for _ in range(steps):
            model(torch.zeros(1, 4))
            for s in gpus.streams.values():  # the host waits for the GPUs between steps
                s.now_ns = max(x.now_ns for x in gpus.streams.values())
    return mon, records


def test_monitor_times_each_layer_on_its_device_and_counts_its_cycles_at_its_clock(two_gpus, tmp_path):
    gpus, source = two_gpus
    path = tmp_path / "split.jsonl"
    _, records = _run(SplitNet(gpus), gpus, source, path)
    header = records[0]
    layers = header["layers"]
    assert [l["device"] for l in layers] == PLACES
    assert [l.get("transfer_in", False) for l in layers] == [False, False, True, False]
    assert set(header["clock"]["devices"]) == {"cuda:0", "cuda:1"}
    assert header["timer"] == "cuda-events"
    steps = [r for r in records if r["type"] == "step"]
    assert len(steps) == 3
    for s in steps:
        assert s["layer_ms"] == [2.0, 3.0, 4.0 + COPY_MS, 1.0]
        assert s["layer_clock_mhz"] == [1980.0, 1980.0, 1410.0, 1410.0]
        assert s["layer_cycles"] == [int(ms * mhz * 1e3) for ms, mhz in zip(s["layer_ms"], s["layer_clock_mhz"])]
        # host-aligned: cuda:1's timeline starts at the host time of its begin record (µs after cuda:0's)
        assert s["wall_ms"] == pytest.approx(10.5, abs=0.05)
        assert s["unattributed_ms"] == pytest.approx(0.0, abs=0.05)
        dev = s["devices"]
        assert dev["cuda:0"]["clock_mhz"] == 1980.0 and dev["cuda:1"]["clock_mhz"] == 1410.0
        assert dev["cuda:0"]["busy_ms"] == 5.0 and dev["cuda:1"]["busy_ms"] == 5.5
        # the step's clock: the devices' clocks weighted by their busy time
        assert s["clock_mhz"] == pytest.approx((5.0 * 1980 + 5.5 * 1410) / 10.5, abs=0.05)
        assert s["cycles"] == pytest.approx(s["wall_ms"] * s["clock_mhz"] * 1e3, rel=1e-4)
    samples = [r for r in records if r["type"] == "sample"]
    assert samples and samples[0]["clock_mhz"] == 1980 and samples[0]["devices"]["cuda:1"]["sm_clock_mhz"] == 1410
    rec = load(path)   # the reader takes every new field
    assert len(rec.steps) == 3 and rec.skipped == 0 and not rec.warnings
    assert rec.header["layers"][2]["transfer_in"] is True


def test_first_layer_on_each_device_after_another_is_marked(two_gpus, tmp_path):
    gpus, source = two_gpus
    places = ["cuda:0", "cuda:1", "cuda:1", "cuda:0"]   # back to cuda:0 for the last layer (a tied head)
    _, records = _run(SplitNet(gpus, places), gpus, source, tmp_path / "back.jsonl", steps=1)
    layers = records[0]["layers"]
    assert [l.get("transfer_in", False) for l in layers] == [False, True, False, True]
    step = next(r for r in records if r["type"] == "step")
    assert step["layer_ms"] == [2.0, 3.0 + COPY_MS, 4.0, 1.0 + COPY_MS]
    assert step["layer_clock_mhz"] == [1980.0, 1410.0, 1410.0, 1980.0]


STEP_KEYS_ONE_DEVICE = {
    "type", "index", "kind", "t_ns", "wall_ms", "host_ms", "tokens", "batch", "seq_len", "past_len",
    "layer_ms", "layer_cycles", "layer_calls", "layer_start_ms", "clock_mhz", "clock_samples", "cycles",
    "unattributed_ms", "throttle_reasons", "hooks_fired",
}


def test_single_device_records_are_unchanged(plain_net):
    from conftest import FakeClock, ids

    records = []
    with Monitor(plain_net, clock_source=FakeClock(1000.0), listeners=[records.append]) as mon:
        plain_net(ids())
    assert type(mon.timer) is CpuTimer
    header = records[0]
    assert all(set(l) == {"name", "parent", "module"} for l in header["layers"])
    assert "devices" not in header["clock"]
    step = next(r for r in records if r["type"] == "step")
    assert set(step) - {"kv_len", "head_tokens"} == STEP_KEYS_ONE_DEVICE   # work inputs: engine/core/steps.py
    sample = next(r for r in records if r["type"] == "sample")
    assert "devices" not in sample


# -- scripts/gpu_check.py's multi-GPU part: the pure pieces, on CPU ------------------------------------


def _gpu_check():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_device_map_split_keeps_tied_weights_together(tiny_gpt2):
    gc = _gpu_check()
    dmap = gc.split_device_map(tiny_gpt2, 2)
    assert set(dmap.values()) == {0, 1}
    blocks = [v for k, v in dmap.items() if k.startswith("transformer.h.")]
    assert blocks == sorted(blocks) and blocks[0] == 0 and blocks[-1] == 1   # contiguous chunks, in order
    assert dmap["lm_head"] == dmap["transformer.wte"]                        # tied to the embeddings
    covered = [k for k in tiny_gpt2.state_dict()
               if any(k == m or k.startswith(m + ".") for m in dmap)]
    assert len(covered) == len(tiny_gpt2.state_dict())


def test_gpu_check_multi_figures_and_skip_line(two_gpus, tmp_path, capsys):
    gc = _gpu_check()
    gpus, source = two_gpus
    _, records = _run(SplitNet(gpus), gpus, source, tmp_path / "f.jsonl")
    steps = [r for r in records if r["type"] == "step"]
    fig = gc.multi_gpu_figures(steps, records[0])
    assert fig["devices"]["cuda:1"]["transfer_in"] == ["blocks.2"]
    assert fig["devices"]["cuda:0"]["busy_ms_p50"] == 5.0 and fig["devices"]["cuda:1"]["clock_mhz_p50"] == 1410.0
    assert fig["steps_sum_over_wall"] == 0 and fig["coverage_p50"] == pytest.approx(1.0, abs=0.01)
    rows = []
    gc.render_multi({"gpus": 2, "timer": "MultiCudaTimer", "timer_devices": ["cuda:0", "cuda:1"],
                     "clock_source": "nvml", **fig}, lambda k, v: rows.append((k, v)))
    assert any("transfer_in: blocks.2" in v for _, v in rows)
    rows.clear()
    gc.render_multi({"skipped": "skipped: one GPU (1 visible)"}, lambda k, v: rows.append((k, v)))
    assert rows == [("multi-GPU (device_map)", "skipped: one GPU (1 visible)")]
