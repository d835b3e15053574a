"""Timers for moments: one interface, ``perf_counter_ns`` on CPU, CUDA events on GPU.

The hot path (``start``/``stop``, called from forward hooks) only records: a clock read on CPU, an
event record on the current stream on GPU. Nothing synchronizes there. ``end_step`` hands back a
pending step; ``resolve`` turns it into times, later and on another thread if the caller likes — on
GPU it waits for that step's last event, never for the device as a whole.

A layer may run several times in a step (a module called twice, a shared module): every call is
timed on its own (one ``start``/``stop`` pair, one event pair on GPU) and a moment is the sum of its
calls, with the count beside it. ``nest`` counts a call that the hooks attributed to no entry (its
time is inside the enclosing layer's); it is host-side bookkeeping only.
"""

from __future__ import annotations

import collections
import time
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


class _EventFrame:
    """The events of one step: reused from step to step, grown only while the pool warms up."""

    def __init__(self, n_layers: int):
        self.step_start = torch.cuda.Event(enable_timing=True)
        self.step_end = torch.cuda.Event(enable_timing=True)
        self.events: list[torch.cuda.Event] = []
        self.cursor = 0
        self.open: list[torch.cuda.Event | None] = [None] * n_layers
        self.spans: list[tuple[int, torch.cuda.Event, torch.cuda.Event]] = []
        self.nested: list[int] | None = None

    def take(self) -> torch.cuda.Event:
        if self.cursor == len(self.events):
            # Creating an event costs ~2.4 µs (pytorch/pytorch#78279): only until the pool has grown.
            self.events.append(torch.cuda.Event(enable_timing=True))
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

    def __init__(self, n_layers: int, device: torch.device | str | None = None):
        self.n_layers = n_layers
        self.device = torch.device(device) if device is not None else torch.device("cuda")
        self._free: collections.deque[_EventFrame] = collections.deque()
        self._frame: _EventFrame | None = None
        self._stream: torch.cuda.Stream | None = None
        self.frames_created = 0

    def _new_frame(self) -> _EventFrame:
        self.frames_created += 1
        return _EventFrame(self.n_layers)

    def begin_step(self) -> None:
        try:
            frame = self._free.popleft()
        except IndexError:
            frame = self._new_frame()
        frame.reset()
        self._frame = frame
        # The model's device may not be the current one (cuda:1): record on its stream explicitly.
        self._stream = torch.cuda.current_stream(self.device)
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


def make_timer(n_layers: int, device: torch.device | str) -> Timer:
    device = torch.device(device)
    if device.type == "cuda":
        return CudaTimer(n_layers, device)
    return CpuTimer(n_layers)
