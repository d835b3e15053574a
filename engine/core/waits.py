"""Timers for the time a sharded session spends waiting: inside collectives, pipeline transfers and
offloaded weight loads (design §10).

**Waits** (``SpanTimer`` + ``Instruments``). Time inside a collective, or inside a weight load, is
taken around the call that does it, not with a device sync: the transformers tensor-parallel
style objects' ``transform_inputs_pre_forward`` / ``transform_output_post_forward`` (every path
goes through them: the explicit ``dist.all_reduce`` of the no-grad fast path, DTensor
redistributes, grad mode), the pipeline stage's ``communicate`` / ``broadcast_from_last``, and
accelerate's ``AlignDevicesHook.pre_forward`` / ``post_forward`` of offloaded modules. Each wrapper
reads the hooks' stack of open layer entries and adds its span to the innermost open one; the
worker later adds each entry's own time to its ancestors (an entry's open ancestors are exactly
its parent chain, hooks.py), so a layer's ``comm_ms`` is the collective time inside it. On CPU a
span is two ``perf_counter_ns`` reads; on CUDA a pair of events from a pool recorded on the current
stream (a collective makes the current stream wait for it, so the pair spans the wait), resolved
by the worker at step end. Wrappers go on instance attributes and come off on ``close()``.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from llm_moments.engine.core.dist import STYLE_COMM, offloaded_hooks, tp_module_styles
from llm_moments.engine.core.hooks import OUTSIDE, ROOT


def innermost_entry(stack: list[int]) -> int:
    """The innermost open layer entry on the hooks' stack; ROOT (-1) inside a step with none open,
    OUTSIDE (-2) outside a step."""
    for k in reversed(stack):
        if k >= 0 or k in (ROOT, OUTSIDE):
            return k
    return OUTSIDE


class SpanTimer:
    """Spans of wrapped calls (collectives, weight loads) per layer entry, for one step at a time.

    ``span(fn)`` gives a wrapper of ``fn`` whose every call adds its duration to the innermost open
    entry of the hooks' ``stack`` (``outside_ns`` when a step runs but no entry is open; nothing
    between steps). ``begin_step`` / ``end_step`` / ``resolve`` as ``Timer``; ``resolve`` gives each
    entry's own time (ns) and ``outside`` — the worker adds descendants to ancestors.

    ``kind="cuda"``: each call records an event pair (from a pool of frames, grown only while it warms
    up) on the current stream; ``resolve`` waits for the step's last event only. ``event_factory`` /
    ``stream_fn`` replace torch.cuda's (tests).
    """

    def __init__(self, n_layers: int, stack: list[int], kind: str = "cpu",
                 event_factory: Callable[[], Any] | None = None, stream_fn: Callable[[], Any] | None = None):
        self.n_layers = n_layers
        self.stack = stack
        self.kind = kind
        self.active = True
        self._acc = [0] * n_layers
        self._outside = 0
        self.calls = 0
        if kind == "cuda":
            self._event_factory = event_factory or (lambda: torch.cuda.Event(enable_timing=True))
            self._stream_fn = stream_fn or torch.cuda.current_stream
            self._free: collections.deque = collections.deque()
            self._frame: list[Any] | None = None   # [events pool, cursor, spans]
            self.frames_created = 0

    # -- per step ---------------------------------------------------------------------------------
    def begin_step(self) -> None:
        if self.kind == "cuda":
            try:
                frame = self._free.popleft()
            except IndexError:
                self.frames_created += 1
                frame = [[], 0, []]
            frame[1] = 0
            frame[2] = []
            self._frame = frame
            return
        self._acc = [0] * self.n_layers
        self._outside = 0

    def end_step(self) -> Any:
        if self.kind == "cuda":
            frame, self._frame = self._frame, None
            return frame
        acc, out = self._acc, self._outside
        self._acc = [0] * self.n_layers
        self._outside = 0
        return (acc, out)

    def resolve(self, pending: Any) -> tuple[list[float], float]:
        """(own ns per entry, ns outside any entry) of an ended step; on CUDA waits for its last event."""
        if self.kind != "cuda":
            acc, out = pending
            return [float(x) for x in acc], float(out)
        acc = [0.0] * self.n_layers
        out = 0.0
        if pending is None:
            return acc, out
        spans = pending[2]
        if spans:
            spans[-1][2].synchronize()
        for i, a, b in spans:
            ns = a.elapsed_time(b) * 1e6
            if i >= 0:
                acc[i] += ns
            else:
                out += ns
        pending[2] = []
        self._free.append(pending)
        return acc, out

    def discard(self, pending: Any) -> None:
        if self.kind == "cuda" and pending is not None:
            pending[2] = []
            self._free.append(pending)

    # -- the wrappers (hot path) --------------------------------------------------------------------
    def span(self, fn: Callable) -> Callable:
        if self.kind == "cuda":
            return self._cuda_span(fn)
        timer = self
        stack = self.stack
        clock = time.perf_counter_ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not timer.active or stack[-1] == OUTSIDE:
                return fn(*args, **kwargs)
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = clock() - t0
                top = stack[-1]
                if top < 0:
                    top = innermost_entry(stack)
                if top >= 0:
                    timer._acc[top] += dt
                elif top == ROOT:
                    timer._outside += dt
                timer.calls += 1

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    def _cuda_span(self, fn: Callable) -> Callable:
        timer = self
        stack = self.stack

        def timed(*args: Any, **kwargs: Any) -> Any:
            frame = timer._frame
            if not timer.active or frame is None or stack[-1] == OUTSIDE:
                return fn(*args, **kwargs)
            stream = timer._stream_fn()
            a = timer._take(frame)
            a.record(stream)
            try:
                return fn(*args, **kwargs)
            finally:
                b = timer._take(frame)
                b.record(timer._stream_fn())
                top = stack[-1]
                if top < 0:
                    top = innermost_entry(stack)
                if top != OUTSIDE:
                    frame[2].append((top, a, b))
                timer.calls += 1

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    def _take(self, frame: list[Any]) -> Any:
        pool = frame[0]
        if frame[1] == len(pool):
            pool.append(self._event_factory())  # only while the pool warms up
        ev = pool[frame[1]]
        frame[1] += 1
        return ev


def inclusive(own: Sequence[float], parents: Sequence[int | None]) -> list[float]:
    """Each entry's own time plus its descendants' (parents precede children in the layer list)."""
    n = len(own)
    total = list(own)
    for i in range(n):
        if not own[i]:
            continue
        j, hops = parents[i], 0
        while j is not None and 0 <= j < n and hops < n:  # a child's time is inside every ancestor
            total[j] += own[i]
            j, hops = parents[j], hops + 1
    return total


class _Patch:
    """One attribute replaced on an object; ``undo`` puts back exactly what was there."""

    __slots__ = ("had", "name", "new", "obj", "old")

    def __init__(self, obj: Any, name: str, new: Any):
        d = getattr(obj, "__dict__", {})
        self.obj, self.name, self.new = obj, name, new
        self.had = name in d
        self.old = d.get(name)
        setattr(obj, name, new)

    def undo(self) -> None:
        d = getattr(self.obj, "__dict__", {})
        if d.get(self.name) is not self.new:
            return  # someone wrapped over us: leave theirs (ours is switched off and passes through)
        if self.had:
            setattr(self.obj, self.name, self.old)
        else:
            with contextlib.suppress(AttributeError):
                delattr(self.obj, self.name)


PIPELINE_ENTRY = "(pipeline recv/send)"


class PipelineWait(nn.Module):
    """The module of the synthetic pipeline-wait entry: never called, holds nothing (no work)."""


class Instruments:
    """The wrappers a sharded session needs, installed once a monitor's hooks exist; ``close`` removes them.

    ``comm``: a SpanTimer over the tensor-parallel style transforms of the styles the model uses that
    hold a collective; ``load``: over offloaded accelerate hooks' pre/post_forward; ``pipeline_entry``:
    index of the synthetic layer entry timed around the pipeline stage's ``communicate`` and
    ``broadcast_from_last`` (through the moment timer itself, so it is a moment like any other), with
    ``pipeline_ms`` a host-side split per operation for the current step.
    """

    def __init__(self, model: nn.Module, layers: Sequence[Any], stack: list[int], timer: Any, device: torch.device):
        self.model = model
        self.layers = layers
        self.stack = stack
        self.timer = timer
        kind = "cuda" if device.type == "cuda" else "cpu"
        n = len(layers)
        self.comm: SpanTimer | None = None
        self.load: SpanTimer | None = None
        self.pipeline_entry: int | None = next((i for i, l in enumerate(layers)
                                                if getattr(l, "synthetic", False) and l.name == PIPELINE_ENTRY), None)
        self.pipeline_ms: dict[str, float] = {}
        self._patches: list[_Patch] = []
        self._timers: list[SpanTimer] = []
        try:
            self._install_tp(n, kind)
            self._install_offload(n, kind)
            self._install_pp()
        except BaseException:
            self.close()
            raise

    def _install_tp(self, n: int, kind: str) -> None:
        styles = tp_module_styles(self.model)
        used = {s for s in styles.values() if STYLE_COMM.get(s)}
        if not used:
            return
        try:
            from transformers.distributed.parallel_utils import ALL_PARALLEL_STYLES
        except Exception:
            return
        mapping = getattr(ALL_PARALLEL_STYLES, "_global_mapping", {})
        self.comm = SpanTimer(n, self.stack, kind)
        self._timers.append(self.comm)
        seen: set[int] = set()
        for name in sorted(used):
            style = mapping.get(name)
            if style is None or id(style) in seen:
                continue
            seen.add(id(style))
            for meth in ("transform_inputs_pre_forward", "transform_output_post_forward"):
                bound = getattr(style, meth, None)
                if callable(bound):
                    self._patches.append(_Patch(style, meth, self.comm.span(bound)))

    def _install_offload(self, n: int, kind: str) -> None:
        hooks = offloaded_hooks(self.model)
        if not hooks:
            return
        self.load = SpanTimer(n, self.stack, kind)
        self._timers.append(self.load)
        seen: set[int] = set()
        for _, hook, _ in hooks:
            if id(hook) in seen:
                continue
            seen.add(id(hook))
            for meth in ("pre_forward", "post_forward"):
                bound = getattr(hook, meth, None)
                if callable(bound):
                    self._patches.append(_Patch(hook, meth, self.load.span(bound)))

    def _install_pp(self) -> None:
        stage = getattr(self.model, "_pp_stage", None)
        i = self.pipeline_entry
        if stage is None or i is None:
            return
        stack, timer, split = self.stack, self.timer, self.pipeline_ms
        clock = time.perf_counter_ns

        def around(fn: Callable, label: Callable[[tuple], str]) -> Callable:
            def timed(*args: Any, **kwargs: Any) -> Any:
                if stack[-1] != ROOT:  # between steps, or inside a layer (its time is that layer's)
                    return fn(*args, **kwargs)
                stack.append(i)
                timer.start(i)
                t0 = clock()
                try:
                    return fn(*args, **kwargs)
                finally:
                    dt = clock() - t0
                    timer.stop(i)
                    stack.pop()
                    key = label(args)
                    split[key] = split.get(key, 0.0) + dt / 1e6

            timed.__wrapped__ = fn  # type: ignore[attr-defined]
            return timed

        def comm_label(args: tuple) -> str:
            op = str(args[0]) if args else "p2p"
            return {"recv_forward": "recv", "send_forward": "send"}.get(op, op)

        for meth, label in (("communicate", comm_label), ("broadcast_from_last", lambda a: "broadcast")):
            bound = getattr(stage, meth, None)
            if callable(bound):
                self._patches.append(_Patch(stage, meth, around(bound, label)))

    # -- per step (inference thread) ------------------------------------------------------------------
    def begin_step(self) -> None:
        for t in self._timers:
            t.begin_step()
        if self.pipeline_ms:
            self.pipeline_ms.clear()  # the pipeline wrappers hold this dict: cleared in place

    def end_step(self) -> tuple[Any, Any, dict[str, float] | None]:
        comm = self.comm.end_step() if self.comm is not None else None
        load = self.load.end_step() if self.load is not None else None
        split = None
        if self.pipeline_entry is not None:
            split = {k: round(v, 5) for k, v in self.pipeline_ms.items()}
            self.pipeline_ms.clear()
        return comm, load, split

    def discard(self, pending: tuple[Any, Any, Any]) -> None:
        comm, load, _ = pending
        if self.comm is not None:
            self.comm.discard(comm)
        if self.load is not None:
            self.load.discard(load)

    def add_to_record(self, record: dict[str, Any], waits: tuple, calls: list[int], layer_ms: list[float | None],
                      parents: Sequence[int | None], placement: Sequence[dict[str, Any]]) -> None:
        """``comm_ms[]``, ``load_ms[]``, ``pipeline_ms`` of a step (worker thread). Each entry's own span
        goes to its ancestors too, so a layer's value is the time inside it; null where the layer did
        not run, or holds no collective (comm) / no offloaded weights (load) and spent nothing there."""
        comm, load, split = waits

        def per_layer(timer: Any, pending: Any, holds: list[bool]) -> tuple[list[float | None], float]:
            own, outside = timer.resolve(pending)
            total = inclusive(own, parents)
            return [round(ns / 1e6, 5) if c and (h or ns > 0) else None
                    for ns, c, h in zip(total, calls, holds)], outside

        pe = self.pipeline_entry
        if self.comm is not None or pe is not None:
            if self.comm is not None:
                values, outside = per_layer(self.comm, comm, [p["comm"] is not None for p in placement])
                if outside > 0:
                    record["comm_outside_ms"] = round(outside / 1e6, 5)
            else:
                values = [None] * len(parents)
            if pe is not None:  # the pipeline row is all wait: its moment
                values[pe] = layer_ms[pe]
                record["pipeline_ms"] = split or {}
            record["comm_ms"] = values
        if self.load is not None:
            values, outside = per_layer(self.load, load, [p["offload"] is not None for p in placement])
            record["load_ms"] = values

    def close(self) -> None:
        for t in self._timers:
            t.active = False
        for p in reversed(self._patches):
            p.undo()
        self._patches = []


__all__ = ["PIPELINE_ENTRY", "Instruments", "PipelineWait", "SpanTimer", "inclusive", "innermost_entry"]
