"""What the monitor itself costs, measured on this machine (design §5, §9).

Two parts, both said as a share of a step:

- **hooks** — a pre/post pair per timed module call. ``calibrate_hook_pair`` measures one pair at
  start, in about 50 ms: an ``nn.Identity`` called in short rounds with and without a pair built by
  ``StepHooks`` itself around the session's own kind of timer (a clock read on CPU, an event record
  on GPU), plain and hooked rounds alternating, the median of the per-round differences (robust to
  a shared machine's hiccups). × the hooks fired per step (at start: the hooked modules; while it
  runs: the calls counted in the step records).
- **worker** — the thread that resolves steps, attaches clocks, writes and tells listeners runs
  Python, so it holds the GIL that the inference thread wants: its CPU time per step
  (``time.thread_time_ns`` inside the worker) is counted as cost, an upper bound.

``est_pct`` = (hook pair × hooks per step + worker CPU per step) / step time × 100. The header says
the estimate made at start (``overhead``); ``{"type": "overhead", ...}`` records say what was measured
every few seconds while the session runs, and once more at its end over the whole session
(``window: "session"``). Nothing here runs on the hot path.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: the UI imports this module for its numbers
    import torch
    from torch import nn

__all__ = [
    "OVERHEAD_EVERY_S",
    "TYPICAL_COST",
    "OverheadMeter",
    "calibrate_hook_pair",
    "cost_line",
    "estimate_pct",
    "header_estimate",
    "time_forwards",
]

OVERHEAD_EVERY_S = 5.0   # an overhead record at most this often while steps arrive

# The depths' typical cost per decode step (design §9: GPT-2-shaped model, 12 × 768, one CPU thread,
# 26.6 ms a decode step, 3.7 µs a hook pair). ``moments run --help`` quotes these.
TYPICAL_COST = {"blocks": "≈ 0.5 %", "sublayers": "≈ 1–2 %", "leaves": "≈ 2–5 %"}


def _one_pair_module(device: torch.device) -> tuple[nn.Module, nn.Module, Any, Any]:
    """(plain module, hooked module, timer, hooks): a pair exactly as the monitor installs it."""
    from torch import nn

    from llm_moments.engine.core.hooks import ROOT, Layer, StepHooks
    from llm_moments.engine.core.timing import make_timer

    plain, hooked = nn.Identity(), nn.Identity()
    timer = make_timer(1, device)
    hooks = StepHooks(hooked, [Layer("probe", hooked, None)], timer, lambda a, k: None, lambda aborted: None)
    pre, post = hooks._make_hooks([(0, ROOT)])
    hooks._stack[:] = [ROOT]                      # as inside a step: each call is timed
    hooks._handles.append(hooked.register_forward_pre_hook(pre))
    hooks._handles.append(hooked.register_forward_hook(post))
    return plain, hooked, timer, hooks


def _round_ns(module: nn.Module, x: Any, calls: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        module(x)
    return (time.perf_counter_ns() - t0) / calls


def calibrate_hook_pair(device: torch.device | str = "cpu", *, budget_s: float = 0.05, calls: int = 200,
                        max_rounds: int = 40) -> dict[str, Any]:
    """One hook pair's cost here (µs), the median over rounds of ``calls`` hooked minus plain calls.

    Returns ``{"hook_pair_us", "bare_call_us", "rounds"}``; ``hook_pair_us`` is None when it could not
    be measured (never raises: a cost estimate is never a reason to fail a session)."""
    try:
        import torch

        device = torch.device(device)
        plain, hooked, timer, hooks = _one_pair_module(device)
    except Exception:
        return {"hook_pair_us": None, "bare_call_us": None, "rounds": 0}
    try:
        x = torch.zeros(1, device=device)
        diffs: list[float] = []
        bare: list[float] = []
        deadline = time.perf_counter() + budget_s
        rounds = 0
        while rounds < max_rounds and (rounds < 3 or time.perf_counter() < deadline):
            timer.begin_step()
            if rounds % 2:   # alternate which side goes first: drift cancels
                h = _round_ns(hooked, x, calls)
                p = _round_ns(plain, x, calls)
            else:
                p = _round_ns(plain, x, calls)
                h = _round_ns(hooked, x, calls)
            timer.resolve(timer.end_step())   # on GPU: the round's events are returned to the pool
            rounds += 1
            if rounds == 1:
                continue     # the first round grows the event pool and warms caches: not counted
            diffs.append(h - p)
            bare.append(p)
        if not diffs:
            return {"hook_pair_us": None, "bare_call_us": None, "rounds": rounds}
        return {"hook_pair_us": round(max(0.0, statistics.median(diffs)) / 1e3, 3),
                "bare_call_us": round(statistics.median(bare) / 1e3, 3), "rounds": rounds - 1}
    except Exception:
        return {"hook_pair_us": None, "bare_call_us": None, "rounds": 0}
    finally:
        hooks.detach()


def estimate_pct(hook_pair_us: float | None, hooks_per_step: float | None, worker_us_per_step: float | None,
                 step_ms: float | None) -> float | None:
    """The monitor's cost as a percentage of a step; None when a part is unknown."""
    if hook_pair_us is None or hooks_per_step is None or not step_ms or step_ms <= 0:
        return None
    cost_us = hook_pair_us * hooks_per_step + (worker_us_per_step or 0.0)
    return round(cost_us / (step_ms * 1e3) * 100.0, 3)


def hooks_in_step(record: dict[str, Any]) -> int:
    """Hook pairs that fired in a step: each timed call, each nested call, and the step's root pair."""
    calls = record.get("layer_calls") or ()
    nested = record.get("layer_nested_calls") or ()
    return int(sum(c for c in calls if c) + sum(n for n in nested if n)) + 1


class OverheadMeter:
    """The worker's accounting: hooks fired and worker CPU per step, over a period and the session.

    ``worker_cpu(ns)`` adds the worker's own CPU time (the caller measures it with
    ``time.thread_time_ns``); ``step(record)`` counts a resolved step; ``due(now_ns)`` says a periodic
    record is owed; ``record(t_ns)`` makes it (and starts a new period); ``final(t_ns)`` covers the session."""

    def __init__(self, hook_pair_us: float | None, every_s: float = OVERHEAD_EVERY_S):
        self.hook_pair_us = hook_pair_us
        self.every_ns = int(every_s * 1e9)
        self._period = self._zero()
        self._total = self._zero()
        self._last_ns: int | None = None

    @staticmethod
    def _zero() -> dict[str, Any]:
        return {"steps": 0, "hooks": 0, "cpu_ns": 0, "wall_ms": []}

    def worker_cpu(self, ns: int) -> None:
        self._period["cpu_ns"] += ns
        self._total["cpu_ns"] += ns

    def step(self, record: dict[str, Any]) -> None:
        n = hooks_in_step(record) if record.get("hooks_fired", True) else 1
        wall = record.get("wall_ms")
        for acc in (self._period, self._total):
            acc["steps"] += 1
            acc["hooks"] += n
            if isinstance(wall, (int, float)) and wall > 0:
                acc["wall_ms"].append(float(wall))
        if len(self._total["wall_ms"]) > 8192:   # bounded: keep the newest half
            del self._total["wall_ms"][:4096]

    def due(self, now_ns: int) -> bool:
        if self._period["steps"] == 0:
            return False
        if self._last_ns is None:
            self._last_ns = now_ns
            return self._period["steps"] >= 2    # the first record early: the UI has a measured figure
        return now_ns - self._last_ns >= self.every_ns

    def _make(self, acc: dict[str, Any], t_ns: int, window: str) -> dict[str, Any]:
        steps = acc["steps"]
        hooks = acc["hooks"] / steps if steps else None
        worker = acc["cpu_ns"] / steps / 1e3 if steps else None
        step_ms = statistics.median(acc["wall_ms"]) if acc["wall_ms"] else None
        return {"type": "overhead", "t_ns": t_ns, "window": window, "steps": steps,
                "hook_pair_us": self.hook_pair_us,
                "hooks_per_step": None if hooks is None else round(hooks, 2),
                "worker_us_per_step": None if worker is None else round(worker, 2),
                "step_p50_ms": None if step_ms is None else round(step_ms, 5),
                "est_pct": estimate_pct(self.hook_pair_us, hooks, worker, step_ms)}

    def record(self, t_ns: int, now_ns: int | None = None) -> dict[str, Any]:
        out = self._make(self._period, t_ns, "period")
        self._period = self._zero()
        self._last_ns = now_ns if now_ns is not None else self._last_ns
        return out

    def final(self, t_ns: int) -> dict[str, Any] | None:
        return self._make(self._total, t_ns, "session") if self._total["steps"] else None


class ForwardTimes(list):
    """Durations (ms) of a model's top-level forward calls."""

    def median_ms(self) -> float | None:
        return round(statistics.median(self), 5) if self else None


@contextmanager
def time_forwards(model: nn.Module) -> Iterator[ForwardTimes]:
    """Time each top-level forward of ``model`` (e.g. the unhooked warm-up): a step's typical length
    before the session starts. On CUDA the end is synchronized (warm-up only, never while measuring)."""
    import torch

    times = ForwardTimes()
    state: dict[str, int] = {"depth": 0, "t0": 0}
    cuda = any(p.is_cuda for p in model.parameters())

    def pre(m, a):
        state["depth"] += 1
        if state["depth"] == 1:
            if cuda:
                torch.cuda.synchronize()
            state["t0"] = time.perf_counter_ns()

    def post(m, a, o):
        state["depth"] -= 1
        if state["depth"] == 0:
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter_ns() - state["t0"]) / 1e6)

    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post, always_call=True)]
    try:
        yield times
    finally:
        for h in handles:
            h.remove()


def cost_line(overhead: dict[str, Any]) -> str:
    """One line on what a depth costs here, e.g. for the headless run's stderr:
    "depth leaves: 125 hooked modules ≈ 3 % of a decode step here (hook pair 3.7 µs, step 26.6 ms)"."""
    depth = overhead.get("depth") or "?"
    n = overhead.get("hooks_per_step")
    pair = overhead.get("hook_pair_us")
    step = overhead.get("step_ms")
    kind = overhead.get("step_kind") or "step"
    head = f"depth {depth}: {n} hooked modules"
    if pair is None:
        return f"{head}; the cost of a hook pair could not be measured here"
    pct = overhead.get("est_pct")
    if pct is None:
        return f"{head} ≈ {pair * (n or 0) / 1e3:.3g} ms per step here (hook pair {pair:.2g} µs)"
    return (f"{head} ≈ {fmt_pct(pct)} of a {kind} here (hook pair {pair:.2g} µs, {kind} {step:.3g} ms)")


def fmt_pct(pct: float | None) -> str:
    """A cost percentage with the digits that mean something: 0.04 %, 0.7 %, 3 %, 12 %."""
    if pct is None:
        return "n/a"
    if pct < 0.1:
        return f"{pct:.2f} %"
    if pct < 10:
        return f"{pct:.1f} %"
    return f"{pct:.0f} %"


def header_estimate(device: Any, layers: Sequence[Any], depth: str, generative: bool,
                    step_ms_hint: float | None) -> dict[str, Any]:
    """Header ``overhead``: a hook pair's cost measured here × the hooked modules, as a share of
    a step when one was timed before the session (``step_ms_hint``)."""
    cal = calibrate_hook_pair(device)
    hooked = sum(1 for l in layers if l.present and not l.synthetic)
    pair = cal["hook_pair_us"]
    return {"depth": depth, "hook_pair_us": pair, "bare_call_us": cal["bare_call_us"],
            "calibration_rounds": cal["rounds"], "hooks_per_step": hooked, "worker_us_per_step": None,
            "step_ms": step_ms_hint, "step_kind": "decode step" if generative else "step",
            "est_pct": estimate_pct(pair, hooked, None, step_ms_hint)}
