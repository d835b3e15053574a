"""Ops mode: the operators one layer runs, timed for the next N steps (issue #10, item 2).

Off by default; turned on with ``moments run --ops LAYER [--ops-steps N]`` or, live, with the
detail screen's key (the engine child gets ``{"cmd": "ops", "layer": i, "steps": N}``).

A ``TorchDispatchMode`` is pushed in the layer's forward pre-hook and popped in its post-hook (the
post-hook is ``always_call``: a forward that raises still pops it). Inside, every aten operator the
layer runs is timed: on CPU with ``perf_counter_ns`` around the call, on GPU with a pair of CUDA
events from a pool created once (never a sync on the hot path; the worker resolves them, as it does
the moments). The hooks are registered after the step hooks, so the layer's moment starts before the
mode is pushed and stops before it is popped: every timed op lies inside the moment, and the ops of
one call run one after the other, so Σ ops ≤ the moment.

Each step gives one record (design §10)::

    {"type": "ops", "step": i, "layer": index, "layer_ms": span, "ops": [{"name", "calls", "ms", "flops"?}]}

``layer_ms`` is the layer's own span with the mode on (the moment of that step, as this probe saw
it). The mode costs a Python call per operator: a layer runs several times slower while it is on
(the UI says by how much: the span against the layer's usual moment), so it is for a few steps.

``flops``: the op's floating-point operations in that step, counted by the formulas
``torch.utils.flop_counter`` uses (its ``flop_registry``: mm, addmm, bmm, baddbmm, convolutions, the
fused attention kernels…), called as FlopCounterMode calls them, with the op's args and output, right
after the op ran (outside its timed span; only shapes are read, no tensor is kept). An op without a
formula pays nothing more (its formula, None, is looked up once per overload with its name) and has no
``flops`` key: unknown is never written as 0. As in FlopCounterMode, ops with no formula (element-wise,
softmax, the CPU flash-attention kernel) count nothing.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from llm_moments.engine.errors import MomentsError

DEFAULT_STEPS = 8
MAX_STEPS = 1000


def _ms(ns: float) -> float:
    """ns → ms, rounded *down* to 10 ns: rounding never lifts Σ ops over the layer's span."""
    return math.floor(ns / 10) / 1e5


def op_name(func: Any) -> str:
    """``aten.mm``, ``aten.addmm``… (the overload packet: ``.default`` / ``.Tensor`` merged)."""
    packet = getattr(func, "overloadpacket", None)
    return str(packet if packet is not None else func)


class EventPool:
    """CUDA event pairs created ahead (creating one costs about 2.4 µs: pytorch/pytorch#78279),
    taken on the inference thread, given back by the worker once resolved. ``factory`` makes one
    event (tests pass a fake); the pool grows when it runs dry."""

    def __init__(self, factory: Callable[[], Any] | None = None, size: int = 256):
        self.factory = factory or (lambda: torch.cuda.Event(enable_timing=True))
        self._free: collections.deque = collections.deque(self.factory() for _ in range(size))

    def take(self) -> Any:
        try:
            return self._free.pop()
        except IndexError:
            return self.factory()

    def give(self, events: list[Any]) -> None:
        self._free.extend(events)


def flop_formula(func: Any) -> Callable[..., Any] | None:
    """torch.utils.flop_counter's formula for this op (keyed by its overload packet), or None."""
    from torch.utils.flop_counter import flop_registry

    packet = getattr(func, "overloadpacket", None)
    try:
        return flop_registry.get(packet) if packet is not None else None
    except TypeError:  # an unhashable stand-in
        return None


def count_flops(formula: Callable[..., Any], args: tuple, kwargs: dict | None, out: Any) -> int | None:
    """The op's FLOPs as FlopCounterMode counts them (``formula(*args, **kwargs, out_val=out)``);
    None when the formula cannot say (a shape it does not take, a symbolic size)."""
    try:
        n = formula(*args, **(kwargs or {}), out_val=out)
        n = int(n)
    except Exception:
        return None
    return n if n >= 0 else None


class _Timed(TorchDispatchMode):
    """Times every operator dispatched while it is on into its probe's per-step lists, and counts the
    FLOPs of those that have a formula (after the op's timed span)."""

    def __init__(self, probe: OpsProbe):
        super().__init__()
        self.probe = probe

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        probe = self.probe
        known = probe._names.get(func)
        if known is None:  # once per overload: its name, its FLOP formula (None: none), may it decompose
            formula = flop_formula(func)
            known = probe._names[func] = (op_name(func), formula,
                                          formula is None and callable(getattr(func, "decompose", None)))
        name, formula, composite = known
        if composite:
            # A composite op (inference mode dispatches aten.linear, aten.matmul… here whole) runs as
            # its decomposition with the mode on, as FlopCounterMode runs it: its parts (addmm, bmm…)
            # are timed and counted, the op itself is not (its time is theirs). An op that turns out
            # to have no decomposition is asked once.
            with self:
                out = func.decompose(*args, **(kwargs or {}))
            if out is not NotImplemented:
                return out
            probe._names[func] = (name, formula, False)
        if probe.pool is None:
            clock = probe.clock
            t0 = clock()
            out = func(*args, **(kwargs or {}))
            probe._ops.append((name, clock() - t0))
        else:
            start, end = probe.pool.take(), probe.pool.take()
            start.record()
            out = func(*args, **(kwargs or {}))
            end.record()
            probe._ops.append((name, (start, end)))
        if formula is not None:
            n = count_flops(formula, args, kwargs, out)
            flops = probe._flops
            had = flops.get(name, 0)
            # one call the formula could not count makes the op's total unknown for this step
            flops[name] = None if n is None or had is None else had + n
        return out


class OpsProbe:
    """Ops mode on one layer's module for ``steps`` steps. ``attach`` / ``detach`` and ``end_step``
    run on the inference thread (between steps and at a step's end: never while the module's hook
    dicts are iterated); ``resolve`` on the worker. ``pool``: an EventPool (GPU), None on CPU."""

    def __init__(self, module: nn.Module, layer: int, steps: int = DEFAULT_STEPS, *,
                 pool: EventPool | None = None, clock: Callable[[], int] = time.perf_counter_ns):
        self.module, self.layer = module, int(layer)
        self.steps_left = int(steps)
        self.pool, self.clock = None, clock
        self.mode = _Timed(self)
        self._names: dict[Any, tuple[str, Any, bool]] = {}   # op overload → (name, FLOP formula, composite)
        self._ops: list[tuple[str, Any]] = []
        self._flops: dict[str, int | None] = {}          # this step's FLOPs per op name (None: unknown)
        self._spans: list[Any] = []      # the layer's own spans in this step: ns (CPU) or event pairs
        self._open: Any = None
        self._depth = 0
        self._handles: list[Any] = []
        # the first dispatch mode a process pushes costs ~1 s of imports: paid here, not in a timed step
        with self.mode:
            torch.zeros(1).add_(1)
        self._ops.clear()
        self._flops.clear()
        self.pool = pool

    @property
    def done(self) -> bool:
        return self.steps_left <= 0

    def attach(self) -> OpsProbe:
        if not self._handles:
            self._handles = [self.module.register_forward_pre_hook(self._pre),
                             self.module.register_forward_hook(self._post, always_call=True)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        while self._depth > 0:  # a step that raised left the mode on
            self._depth -= 1
            self.mode.__exit__(None, None, None)

    def _pre(self, module: nn.Module, args: Any) -> None:
        self._depth += 1
        if self._depth == 1:
            if self.pool is None:
                self._open = self.clock()
            else:
                self._open = self.pool.take()
                self._open.record()
            self.mode.__enter__()

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._depth <= 0:
            return
        self._depth -= 1
        if self._depth == 0:
            self.mode.__exit__(None, None, None)
            if self.pool is None:
                self._spans.append(self.clock() - self._open)
            else:
                end = self.pool.take()
                end.record()
                self._spans.append((self._open, end))

    def end_step(self, step: int) -> tuple[int, list, list, dict] | None:
        """This step's raw times and FLOPs (None when the layer did not run); counts the step down."""
        ops, spans, flops = self._ops, self._spans, self._flops
        self._ops, self._spans, self._flops = [], [], {}
        self.steps_left -= 1
        return (step, ops, spans, flops) if spans or ops else None

    def discard(self, pending: tuple[int, list, list, dict] | None) -> None:
        if pending is not None and self.pool is not None:
            self.pool.give(self._events(pending))

    @staticmethod
    def _events(pending: tuple[int, list, list, dict]) -> list[Any]:
        ops, spans = pending[1], pending[2]
        return [e for _, pair in ops for e in pair] + [e for pair in spans for e in pair]

    def resolve(self, pending: tuple[int, list, list, dict]) -> dict[str, Any]:
        """The ops record of one step (worker thread; on GPU waits for the step's last event)."""
        step, ops, spans, flops = pending
        if self.pool is None:
            span_ns = float(sum(spans))
            times = ops
        else:
            last = spans[-1][1] if spans else (ops[-1][1][1] if ops else None)
            if last is not None:
                last.synchronize()
            span_ns = sum(a.elapsed_time(b) for a, b in spans) * 1e6
            times = [(name, a.elapsed_time(b) * 1e6) for name, (a, b) in ops]
            self.pool.give(self._events(pending))
        acc: dict[str, list] = {}
        for name, ns in times:
            row = acc.get(name)
            if row is None:
                acc[name] = [1, ns]
            else:
                row[0] += 1
                row[1] += ns
        rows = sorted(({"name": n, "calls": c, "ms": _ms(ns)} for n, (c, ns) in acc.items()),
                      key=lambda r: -r["ms"])
        for row in rows:
            n = flops.get(row["name"])
            if n is not None:
                row["flops"] = n
        return {"type": "ops", "step": step, "layer": self.layer, "layer_ms": _ms(span_ns), "ops": rows}


def find_layer(layers: list[Any], which: int | str) -> int:
    """The index of a layer given by index (``3``, ``"3"``) or by name; ValueError when there is none."""
    if isinstance(which, bool):
        raise ValueError(f"no layer {which!r}")
    if isinstance(which, int) or (isinstance(which, str) and which.strip().lstrip("-").isdigit()):
        i = int(which)
        if not 0 <= i < len(layers):
            raise ValueError(f"no layer {i}: the model has layers 0 to {len(layers) - 1}")
        return i
    names = [getattr(l, "name", l) for l in layers]
    if which in names:
        return names.index(which)
    ends = [i for i, n in enumerate(names) if isinstance(n, str) and n.endswith("." + str(which))]
    if len(ends) == 1:
        return ends[0]
    raise ValueError(f"no layer named {which!r}" + (f" (several end with it: {len(ends)})" if ends else ""))


def check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"ops steps must be a whole number from 1 to {MAX_STEPS}, not {steps!r}")
    return steps


def slowdown(record: dict[str, Any], usual_ms: float) -> float | None:
    """How many times slower the layer ran with ops mode on: its span against its usual moment."""
    span = record.get("layer_ms")
    if not isinstance(span, (int, float)) or not usual_ms or not math.isfinite(usual_ms) or usual_ms <= 0:
        return None
    return span / usual_ms


def make_probe(layers: Sequence[Any], layer_devices: Sequence[Any] | None, default_device: Any,
               layer: int | str, steps: int | None) -> tuple[OpsProbe, str]:
    """The probe for ``layer`` (index or name) over the next ``steps`` steps, and the status line that
    says it is on. A layer that is not here or a bad ``steps`` raises MomentsError."""
    try:
        index = find_layer(layers, layer)
        steps = check_steps(DEFAULT_STEPS if steps is None else steps)
    except ValueError as exc:
        raise MomentsError(str(exc)) from None
    entry = layers[index]
    if not entry.present or entry.synthetic:
        raise MomentsError(f"layer {index} ({entry.name}) runs no operators here: ops mode needs a module "
                           "this process runs")
    device = (layer_devices[index] if layer_devices and index < len(layer_devices) else None) or default_device
    pool = None
    if torch.device(device).type == "cuda":
        with torch.cuda.device(torch.device(device)):
            pool = EventPool()
    message = (f"ops mode on for layer {index} ({entry.name}), {steps} steps: this layer runs several "
               "times slower while on")
    return OpsProbe(entry.module, index, steps, pool=pool), message
