"""Timers for moments: one interface, ``perf_counter_ns`` on CPU, CUDA events on GPU.

The hot path (``start``/``stop``, called from forward hooks) only records: a clock read on CPU, an
event record on the current stream on GPU. Nothing synchronizes there. ``end_step`` hands back a
pending step; ``resolve`` turns it into times, later and on another thread if the caller likes — on
GPU it waits for that step's last event, never for the device as a whole.

Several GPUs (a ``device_map`` over cuda:0, cuda:1, ...): ``MultiCudaTimer`` keeps one event pool and one
step anchor (begin / end events) per device and records each layer's events on its own device's
stream; see its docstring for how device timelines are put side by side (host-aligned).

A layer may run several times in a step (a module called twice, a shared module): every call is
timed on its own (one ``start``/``stop`` pair, one event pair on GPU) and a moment is the sum of its
calls, with the count beside it. ``nest`` counts a call that the hooks attributed to no entry (its
time is inside the enclosing layer's); it is host-side bookkeeping only.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class ResolvedStep:
    wall_ns: int            # the step's span on the timer's own timeline (GPU timeline under CUDA)
    layer_ns: list[float]   # summed span of each layer's calls in the step (0.0 where calls == 0)
    calls: list[int]        # how many times each layer ran in the step
    start_ns: list[float] | None = None  # first call's start, from the step's start (traces nest by it)
    nested: list[int] | None = None      # calls counted to no entry (time inside another layer); None: none


@runtime_checkable
class Timer(Protocol):
    """The one timer interface the hooks and the monitor use (CPU and CUDA alike)."""

    kind: str       # "cpu" | "cuda": recorded in the header as the timer
    n_layers: int

    def begin_step(self) -> None:
        """A step starts: clear the per-layer sums and counts."""
        ...

    def start(self, i: int) -> None:
        """Layer entry ``i``'s call begins (hot path: a clock read or an event record, nothing else)."""
        ...

    def stop(self, i: int) -> None:
        """Layer entry ``i``'s call ends (hot path)."""
        ...

    def nest(self, i: int) -> None:
        """A call of entry ``i``'s module ran inside another layer: count it, time nothing."""
        ...

    def end_step(self) -> Any:
        """The step ended: hand back a pending step (resolved later, maybe on another thread)."""
        ...

    def resolve(self, pending: Any) -> ResolvedStep:
        """Times of a pending step; on GPU waits for that step's last event only."""
        ...

    def discard(self, pending: Any) -> None:
        """Drop a pending step that will never be resolved (returns its events to the pool)."""
        ...


class CpuTimer:
    """Host timer: moments are ``perf_counter_ns`` differences (~50 ns a read here)."""

    kind = "cpu"

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        # Plain lists, not numpy: item assignment from Python is several times cheaper.
        self._start = [0] * n_layers
        self._acc = [0] * n_layers
        self._calls = [0] * n_layers
        self._first = [0] * n_layers
        self._nested: list[int] | None = None
        self._t0 = 0

    def begin_step(self) -> None:
        n = self.n_layers
        self._acc[:] = [0] * n
        self._calls[:] = [0] * n
        self._nested = None
        self._t0 = time.perf_counter_ns()

    def start(self, i: int) -> None:
        self._start[i] = time.perf_counter_ns()

    def stop(self, i: int) -> None:
        self._acc[i] += time.perf_counter_ns() - self._start[i]
        if not self._calls[i]:
            self._first[i] = self._start[i]
        self._calls[i] += 1

    def nest(self, i: int) -> None:
        if self._nested is None:
            self._nested = [0] * self.n_layers
        self._nested[i] += 1

    def end_step(self) -> ResolvedStep:
        t0 = self._t0
        wall = time.perf_counter_ns() - t0
        starts = [float(f - t0) if c else float("nan") for f, c in zip(self._first, self._calls)]
        return ResolvedStep(wall, [float(x) for x in self._acc], self._calls[:], starts, self._nested)

    def resolve(self, pending: ResolvedStep) -> ResolvedStep:
        return pending

    def discard(self, pending: ResolvedStep) -> None:
        pass


def cuda_event(device: torch.device) -> Any:
    """The default event factory: a timing event (created lazily on the device of its first record)."""
    return torch.cuda.Event(enable_timing=True)


def cuda_stream(device: torch.device) -> Any:
    """The default stream source: ``device``'s current stream."""
    return torch.cuda.current_stream(device)


class _EventFrame:
    """The events of one step: reused from step to step, grown only while the pool warms up.

    ``new_event()`` makes one event; every event of a frame is recorded on one device's streams only
    (an event cannot move between devices once recorded)."""

    def __init__(self, n_layers: int, new_event: Callable[[], Any] | None = None):
        self._new_event = new_event or (lambda: torch.cuda.Event(enable_timing=True))
        self.step_start = self._new_event()
        self.step_end = self._new_event()
        self.events: list[torch.cuda.Event] = []
        self.cursor = 0
        self.open: list[torch.cuda.Event | None] = [None] * n_layers
        self.spans: list[tuple[int, torch.cuda.Event, torch.cuda.Event]] = []
        self.nested: list[int] | None = None

    def take(self) -> torch.cuda.Event:
        if self.cursor == len(self.events):
            # Creating an event costs ~2.4 µs (pytorch/pytorch#78279): only until the pool has grown.
            self.events.append(self._new_event())
        ev = self.events[self.cursor]
        self.cursor += 1
        return ev

    def reset(self) -> None:
        self.cursor = 0
        self.spans = []
        self.nested = None


class CudaTimer:
    """Device timer: a pair of CUDA events per layer call, recorded on the current stream.

    A layer called several times in a step leaves several spans; ``resolve`` sums them and counts
    them (the hooks never open an entry twice at once, so ``open[i]`` holds at most one event).

    Frames of events cycle through a free list: a step's frame returns to the list once resolved,
    so a resolver that lags a few steps behind costs a few more frames, never a sync in a hook.
    """

    kind = "cuda"

    def __init__(self, n_layers: int, device: torch.device | str | None = None, *,
                 event_factory: Callable[[torch.device], Any] | None = None,
                 stream_fn: Callable[[torch.device], Any] | None = None):
        self.n_layers = n_layers
        self.device = torch.device(device) if device is not None else torch.device("cuda")
        self.devices = [str(self.device)]
        # Injectable (tests use fake events / streams on CPU); the defaults are torch.cuda's.
        self._event_factory = event_factory or cuda_event
        self._stream_fn = stream_fn or cuda_stream
        self._free: collections.deque[_EventFrame] = collections.deque()
        self._frame: _EventFrame | None = None
        self._stream: torch.cuda.Stream | None = None
        self.frames_created = 0

    def _new_frame(self) -> _EventFrame:
        self.frames_created += 1
        factory, device = self._event_factory, self.device
        return _EventFrame(self.n_layers, lambda: factory(device))

    def _next_frame(self) -> Any:
        """A frame from the pool (a new one only while the pool is empty), reset for this step."""
        try:
            frame = self._free.popleft()
        except IndexError:
            frame = self._new_frame()
        frame.reset()
        self._frame = frame
        return frame

    def begin_step(self) -> None:
        frame = self._next_frame()
        # The model's device may not be the current one (cuda:1): record on its stream explicitly.
        self._stream = self._stream_fn(self.device)
        frame.step_start.record(self._stream)

    def start(self, i: int) -> None:
        frame = self._frame
        ev = frame.take()
        ev.record(self._stream)
        frame.open[i] = ev

    def stop(self, i: int) -> None:
        frame = self._frame
        ev = frame.take()
        ev.record(self._stream)
        begin = frame.open[i]
        if begin is not None:
            frame.spans.append((i, begin, ev))
            frame.open[i] = None

    def nest(self, i: int) -> None:
        frame = self._frame
        if frame.nested is None:
            frame.nested = [0] * self.n_layers
        frame.nested[i] += 1

    def end_step(self) -> _EventFrame:
        frame = self._frame
        frame.step_end.record(self._stream)
        self._frame = None
        return frame

    def resolve(self, frame: _EventFrame) -> ResolvedStep:
        # Waits for this step's last event only (not the whole device); called off the hot path.
        frame.step_end.synchronize()
        acc = [0.0] * self.n_layers
        calls = [0] * self.n_layers
        starts = [float("nan")] * self.n_layers
        for i, a, b in frame.spans:
            acc[i] += a.elapsed_time(b) * 1e6  # elapsed_time is in ms
            if not calls[i]:
                starts[i] = frame.step_start.elapsed_time(a) * 1e6
            calls[i] += 1
        wall_ns = int(frame.step_start.elapsed_time(frame.step_end) * 1e6)
        nested = frame.nested
        frame.reset()
        self._free.append(frame)
        return ResolvedStep(wall_ns, acc, calls, starts, nested)

    def discard(self, frame: _EventFrame) -> None:
        frame.reset()
        self._free.append(frame)


class _MultiFrame:
    """One step's events on several devices: a sub-frame (pool + begin / end anchor) per device."""

    __slots__ = ("host_ns", "nested", "open", "spans", "subs")

    def __init__(self, n_layers: int, subs: list[_EventFrame]):
        self.subs = subs
        self.host_ns = [0] * len(subs)   # host clock read right after each device's begin was recorded
        self.open: list[Any] = [None] * n_layers
        self.spans: list[tuple[int, int, Any, Any]] = []   # (entry, device slot, start event, stop event)
        self.nested: list[int] | None = None

    def reset(self) -> None:
        for sub in self.subs:
            sub.reset()
        self.spans = []
        self.nested = None


class MultiCudaTimer:
    """CUDA events when the layers sit on several GPUs (accelerate's ``device_map``, a hand-split model).

    Each device in use has its own event pool and its own step anchor: a begin event recorded on its
    current stream at step begin, an end event at step end. A layer's events are recorded on *its*
    device's current stream (the device comes from the layer's placement, decided once here, never
    per call), so its moment is the span of two events of one device. Events of two devices are never
    subtracted (CUDA cannot: ``elapsed_time`` needs both on one device).

    **Hand-off.** An entry whose previous entry (``handoff_from``: the previous sibling, or its parent)
    ran on another GPU first records a hand-off event on that device's stream and makes its own
    device's stream wait for it, then records its start. Without it the start event of an idle device
    runs as soon as it is recorded — while the previous device may still be working through its queue
    — and the moment would hold that backlog. The wait adds no ordering that the model does not
    already have: the inputs it is about to receive are copied from that device's stream (PyTorch
    orders a cross-device copy after the source stream's work). So the first layer on each device
    carries the transfer of its inputs (header ``transfer_in``) and nothing of the previous device.

    **One timeline, approximately.** Device clocks cannot be compared through events, so each device's
    timeline is mapped to the host: the host clock is read right after each device's begin event is
    recorded, and the begin event is taken to have run then. A layer's start offset is its device's
    host offset plus its events' span from that device's begin event; the step's wall time runs from
    the first device's begin to the latest device's end, on that mapping. Exact for moments (one device
    each); for start offsets and the wall time exact only when every device's stream is idle when the
    step begins (as in ``generate()``, which synchronizes every token); a device still busy with the
    previous step's work at that moment runs its begin event late and its offsets and end come out
    late by that backlog.
    """

    kind = "cuda"

    def __init__(self, n_layers: int, layer_devices: Sequence[str | None], *,
                 primary: torch.device | str | None = None,
                 handoff_from: Sequence[str | None] | None = None,
                 event_factory: Callable[[torch.device], Any] | None = None,
                 stream_fn: Callable[[torch.device], Any] | None = None,
                 clock: Callable[[], int] = time.perf_counter_ns):
        self.n_layers = n_layers
        first = next((d for d in layer_devices if d is not None and torch.device(d).type == "cuda"), "cuda:0")
        self.device = torch.device(primary if primary is not None else first)
        self.devices = cuda_devices_in_use(layer_devices, self.device)
        if not self.devices:
            self.devices = [str(self.device)]
        self._torch_devices = [torch.device(d) for d in self.devices]
        slot = {d: k for k, d in enumerate(self.devices)}

        def slot_of(d: str | None) -> int | None:
            if d is None:
                return None
            dev = torch.device(d)
            if dev.type != "cuda":
                return None
            return slot.get(str(dev if dev.index is not None else torch.device("cuda", 0)))

        # Per entry: its device slot (a layer on CPU or without a device records on the primary's).
        self.layer_slots = [slot_of(layer_devices[i]) if i < len(layer_devices) else None for i in range(n_layers)]
        self._dev_of = [0 if k is None else k for k in self.layer_slots]
        self.entry_devices = [self.devices[k] for k in self._dev_of]   # the device each entry is timed on
        # Per entry: the slot to hand off from (another GPU), else None.
        hand = []
        for i in range(n_layers):
            src = slot_of(handoff_from[i]) if handoff_from is not None and i < len(handoff_from) else None
            hand.append(src if src is not None and src != self._dev_of[i] else None)
        self._handoff = hand
        self._event_factory = event_factory or cuda_event
        self._stream_fn = stream_fn or cuda_stream
        self._clock = clock
        self._free: collections.deque[_MultiFrame] = collections.deque()
        self._frame: _MultiFrame | None = None
        self._streams: list[Any] = [None] * len(self.devices)
        self.frames_created = 0

    def _new_frame(self) -> _MultiFrame:
        self.frames_created += 1
        factory = self._event_factory
        subs = [_EventFrame(self.n_layers, (lambda dev=dev: factory(dev))) for dev in self._torch_devices]
        return _MultiFrame(self.n_layers, subs)

    _next_frame = CudaTimer._next_frame

    def begin_step(self) -> None:
        frame = self._next_frame()
        streams, clock, host = self._streams, self._clock, frame.host_ns
        for k, dev in enumerate(self._torch_devices):
            stream = streams[k] = self._stream_fn(dev)
            frame.subs[k].step_start.record(stream)
            host[k] = clock()

    def start(self, i: int) -> None:
        frame = self._frame
        d = self._dev_of[i]
        sub = frame.subs[d]
        src = self._handoff[i]
        if src is not None:  # order this device after the previous device's queued work (see docstring)
            mark = frame.subs[src].take()
            mark.record(self._streams[src])
            self._streams[d].wait_event(mark)
        ev = sub.take()
        ev.record(self._streams[d])
        frame.open[i] = ev

    def stop(self, i: int) -> None:
        frame = self._frame
        d = self._dev_of[i]
        ev = frame.subs[d].take()
        ev.record(self._streams[d])
        begin = frame.open[i]
        if begin is not None:
            frame.spans.append((i, d, begin, ev))
            frame.open[i] = None

    nest = CudaTimer.nest  # host-side count in the step's frame, as on one device

    def end_step(self) -> _MultiFrame:
        frame = self._frame
        for k, sub in enumerate(frame.subs):
            sub.step_end.record(self._streams[k])
        self._frame = None
        return frame

    def resolve(self, frame: _MultiFrame) -> ResolvedStep:
        # Waits for each device's end event only; off the hot path.
        for sub in frame.subs:
            sub.step_end.synchronize()
        h0 = frame.host_ns[0]
        offset = [float(h - h0) for h in frame.host_ns]   # each device's begin on the host timeline
        acc = [0.0] * self.n_layers
        calls = [0] * self.n_layers
        starts = [float("nan")] * self.n_layers
        subs = frame.subs
        for i, d, a, b in frame.spans:
            acc[i] += a.elapsed_time(b) * 1e6   # both events on device d
            if not calls[i]:
                starts[i] = offset[d] + subs[d].step_start.elapsed_time(a) * 1e6
            calls[i] += 1
        wall = max(offset[k] + sub.step_start.elapsed_time(sub.step_end) * 1e6 for k, sub in enumerate(subs))
        nested = frame.nested
        frame.reset()
        self._free.append(frame)
        return ResolvedStep(int(wall), acc, calls, starts, nested)

    def discard(self, frame: _MultiFrame) -> None:
        frame.reset()
        self._free.append(frame)


def cuda_devices_in_use(layer_devices: Sequence[str | None] | None, primary: torch.device | str) -> list[str]:
    """The CUDA devices the layers run on, the primary (the model's first parameter's) first."""
    primary = torch.device(primary)
    if primary.type == "cuda" and primary.index is None:
        primary = torch.device("cuda", 0)
    out: list[str] = [str(primary)] if primary.type == "cuda" else []
    for d in layer_devices or ():
        if d is None:
            continue
        dev = torch.device(d)
        if dev.type == "cuda":
            if dev.index is None:
                dev = torch.device("cuda", 0)
            if str(dev) not in out:
                out.append(str(dev))
    return out


def make_timer(n_layers: int, device: torch.device | str,
               layer_devices: Sequence[str | None] | None = None,
               handoff_from: Sequence[str | None] | None = None) -> Timer:
    """CPU timer, a one-device CUDA timer, or (layers on several GPUs) a per-device CUDA timer."""
    device = torch.device(device)
    if device.type == "cuda":
        if len(cuda_devices_in_use(layer_devices, device)) > 1:
            return MultiCudaTimer(n_layers, layer_devices or [], primary=device, handoff_from=handoff_from)
        return CudaTimer(n_layers, device)
    return CpuTimer(n_layers)
