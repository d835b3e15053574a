"""The UI's state and its reducer: records in, view data out. No Textual import.

Everything the screens show is derived here from the same records a recording holds, so a live
session, a replay and a watched file look alike. ``apply`` takes a batch of records (one drain of
the source per frame); the ``*_view`` methods compute what widgets draw, once per frame.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_moments.engine.analysis.scales import robust_histogram
from llm_moments.engine.analysis.stats import KINDS, RollingStats
from llm_moments.engine.analysis.steptable import StepTable
from llm_moments.engine.core.work import header_coeffs

from .analysis import LiveGaps, LiveWork, OutlierLog

SORT_KEYS = ("order", "last", "mean", "p50", "p99", "cycles", "share", "flops", "roof")
STATS_WINDOW_STEPS = 256      # percentiles in the live table: recent behaviour, cheap to compute
HISTORY_STEPS = 2048          # what the rolling store keeps (detail screen, heatmap)
RATE_WINDOW_NS = 5_000_000_000


@dataclass
class Status:
    level: str
    message: str


@dataclass
class LayerView:
    """Per-layer arrays for the table (all aligned with ``names``), in header order."""

    names: list[str]
    parents: list[int | None]
    last_ms: np.ndarray
    mean_ms: np.ndarray
    p50_ms: np.ndarray
    p99_ms: np.ndarray
    cycles: np.ndarray          # mean cycles per moment
    share: np.ndarray           # of step time, 0..1
    recent_ms: np.ndarray       # [layers, k] newest moments for sparklines (NaN padded)
    outlier: np.ndarray         # bool: newest moment far above the layer's own history
    slowest: np.ndarray         # bool: among the slowest top-level layers by mean
    order: np.ndarray           # row order after sorting
    flops_per_s: np.ndarray | None = None   # achieved, Σ FLOPs / Σ time over the window
    roof_pct: np.ndarray | None = None      # of the attainable roof at the layer's intensity
    memory_bound: np.ndarray | None = None
    gap_ms: np.ndarray | None = None        # mean gap before each top-level layer (steptable.layer_gaps)


@dataclass
class ViewState:
    mode: str = "live"                     # live | replay | watch
    header: dict[str, Any] | None = None
    stats: RollingStats | None = None
    samples: collections.deque = field(default_factory=lambda: collections.deque(maxlen=600))
    step_meta: collections.deque = field(default_factory=lambda: collections.deque(maxlen=HISTORY_STEPS))
    statuses: list[Status] = field(default_factory=list)
    footer: dict[str, Any] | None = None
    work: LiveWork | None = None
    outlier_log: OutlierLog | None = None
    live_gaps: LiveGaps | None = None      # the gap before each top-level layer, per step as steps arrive
    paused: bool = False
    recording_path: str | None = None
    sort_key: str = "order"
    sort_reverse: bool = True
    steps_total: int = 0
    tokens_total: int = 0
    steps_without_timing: int = 0
    last_step: dict[str, Any] | None = None
    loading: str | None = None             # "loading model…" until the header arrives
    error: str | None = None               # the engine stopped with this message
    source_note: str | None = None         # e.g. "writer idle for 12 s", "file cut off"
    version: int = 0                       # bumps on every change: widgets skip identical frames
    # per layer, over the session: calls that ran inside another layer's moment (``layer_nested_calls``,
    # their time counted there), the steps that had any, and the count in the newest such step
    nested_calls: np.ndarray | None = None
    nested_steps: np.ndarray | None = None
    nested_last: np.ndarray | None = None
    overhead: dict[str, Any] | None = None  # the monitor's own cost: header ``overhead``, then the newest record
    # several ranks (records tagged ``rank``): the primary rank feeds everything above, every rank the
    # merged view (tui/rank_state.py); ``primary_rank`` None: the first rank with a header
    ranks: Any = None
    primary_rank: int | None = None
    _pending: list = field(default_factory=list)   # steps of this batch, converted together
    ops: dict = field(default_factory=dict)        # layer index → its newest ``ops`` record (ops mode)
    _view_cache: tuple | None = field(default=None, repr=False, compare=False)   # layer_view: (stats, key, view)

    # -- reducer ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all steps and samples (a replay seeks backwards); keeps header and settings."""
        if self.header is not None:
            self._new_stats(self.header)
        self._pending.clear()
        self.samples.clear()
        self.step_meta.clear()
        self.steps_total = self.tokens_total = self.steps_without_timing = 0
        self.last_step = None
        self.footer = None
        self.version += 1

    def apply(self, records: Iterable[dict[str, Any]]) -> int:
        """Fold a batch of records into the state; returns how many there were."""
        n = 0
        for record in records:
            n += 1
            rtype = record.get("type")
            rank = record.get("rank")
            if type(rank) is int and not self._on_rank(rank, rtype, record):
                continue   # another rank's: the merged view only
            if rtype == "step":
                self._on_step(record)
            elif rtype == "sample":
                self.samples.append(record)
            elif rtype == "header":
                self._flush()
                self.header = record
                self.overhead = record.get("overhead") if isinstance(record.get("overhead"), dict) else None
                self.loading = None
                self._new_stats(record)
            elif rtype == "status":
                self._on_status(record)
            elif rtype == "footer":
                self.footer = record
            elif rtype == "overhead":
                self.overhead = record
            elif rtype == "reset":
                self._pending.clear()
                self.reset()
            elif rtype == "loading":
                self.loading = record.get("message")
            elif rtype == "error":
                if self.error is None or record.get("died") or type(record.get("rank")) is not int:
                    self.error = record.get("message")
                self.statuses.append(Status("error", self.error or "engine error"))
            elif rtype == "recording":
                self.recording_path = record.get("path")
            elif rtype == "ops" and type(record.get("layer")) is int:
                self.ops[record["layer"]] = record
        self._flush()   # (the merged view folds its ranks' steps when it is drawn: RankLive.view)
        if n:
            self.version += 1
        return n

    def _on_rank(self, rank: int, rtype: Any, record: dict[str, Any]) -> bool:
        """Fold a rank's record into the merged view; True when it is the primary rank's, which the
        single-rank state takes too."""
        if self.ranks is None:
            from .rank_state import RankLive

            self.ranks = RankLive(self.primary_rank)
        rl = self.ranks
        primary = rl.is_primary(rank, rtype)
        if rtype == "step":
            rl.step(rank, record)
        elif rtype == "header":
            rl.header(rank, record)
        elif rtype == "sample":
            rl.sample(rank, record)
        elif rtype == "footer":
            rl.footer(rank, record)
        elif rtype == "reset":
            rl.reset(rank)
        if primary:
            return True
        if rtype == "error":
            message = str(record.get("message"))
            if not record.get("died"):
                message = f"rank {rank}: {message}"
            if self.error is None or record.get("died"):
                self.error = message
            self.statuses.append(Status("error", message))
        elif rtype == "status":
            message = str(record.get("message", ""))
            if not any(s.message == message for s in self.statuses[-5:]):   # every rank says the same
                self._on_status({**record, "message": f"rank {rank}: {message}"})
        return False

    def _flush(self) -> None:
        """The batch's steps into the rolling window and the outlier log: one conversion per batch."""
        if not self._pending or self.stats is None:
            self._pending.clear()
            return
        chunk = StepTable(self.stats.layer_names, self.stats.parents, self.stats.window.coeffs,
                          capacity=len(self._pending))
        chunk.extend(self._pending)
        self._pending.clear()
        self.stats.window.extend_table(chunk)
        self.outlier_log.push(chunk)
        # the per-step parts of the live table (work, gaps) once per step, here, not every frame
        for keeper in (self.work, self.live_gaps):
            if keeper is not None:
                keeper.push(chunk)

    def _new_stats(self, header: dict[str, Any]) -> None:
        layers = header["layers"]
        self.stats = RollingStats([l["name"] for l in layers], [l.get("parent") for l in layers], HISTORY_STEPS,
                                  coeffs=header_coeffs(header))
        self.work = LiveWork(header, self.stats, STATS_WINDOW_STEPS)
        self.live_gaps = LiveGaps(self.stats, STATS_WINDOW_STEPS)
        self.outlier_log = OutlierLog(self.stats.layer_names)
        n = len(layers)
        self.nested_calls, self.nested_steps, self.nested_last = np.zeros(n), np.zeros(n, np.int64), np.zeros(n)

    def _on_step(self, step: dict[str, Any]) -> None:
        if self.stats is None or len(step.get("layer_ms") or []) != self.stats.n_layers:
            return
        self._pending.append(step)
        self.step_meta.append((step.get("index"), step.get("kind"), step.get("clock_mhz"),
                               tuple(step.get("throttle_reasons") or ())))
        self.steps_total += 1
        self.tokens_total += int(step.get("tokens") or 0)
        if step.get("hooks_fired") is False:
            self.steps_without_timing += 1
        self.last_step = step
        nested = step.get("layer_nested_calls")  # absent: none nested (older files, most steps)
        if nested and len(nested) == self.stats.n_layers and any(nested):
            try:
                arr = np.nan_to_num(np.array([n or 0 for n in nested], dtype=np.float64))
            except (TypeError, ValueError):  # a damaged record: ignore the field, keep the step
                return
            self.nested_calls += arr
            self.nested_steps += arr > 0
            self.nested_last = np.where(arr > 0, arr, self.nested_last)

    def _on_status(self, record: dict[str, Any]) -> None:
        status = Status(record.get("level", "warning"), record.get("message", ""))
        if not self.statuses or self.statuses[-1] != status:
            self.statuses.append(status)
            del self.statuses[:-20]

    # -- derived views ----------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return self.stats.layer_names if self.stats else []

    @property
    def no_layer_timing(self) -> bool:
        """Steps arrive but hooks did not fire for the newest one (CUDA graphs, compiled replay)."""
        return bool(self.last_step is not None and self.last_step.get("hooks_fired") is False)

    @property
    def newest_t_ns(self) -> int:
        times = [r["t_ns"] for r in (self.last_step, self.samples[-1] if self.samples else None) if r]
        return max(times) if times else 0

    def rates(self) -> tuple[float, float]:
        """(steps/s, tokens/s) over the last 5 s of session time (recorded time: works in replay)."""
        if not self.stats or self.stats.n_steps < 2:
            return 0.0, 0.0
        a = self.stats.arrays(last=min(self.stats.n_steps, 4096), fields=("t_ns", "tokens"))
        t = a["t_ns"]
        newest = t[-1]
        sel = t >= newest - RATE_WINDOW_NS
        if sel.sum() < 2:
            sel[-2:] = True
        span_s = (newest - t[sel][0]) / 1e9
        if span_s <= 0:
            return 0.0, 0.0
        n = int(sel.sum()) - 1  # intervals between the selected steps
        tokens = float(a["tokens"][sel][1:].sum())
        return n / span_s, tokens / span_s

    def step_percentiles(self) -> tuple[float, float]:
        if not self.stats or not self.stats.n_steps:
            return math.nan, math.nan
        w = self.stats.arrays(last=STATS_WINDOW_STEPS, fields=("wall_ms",))["wall_ms"]
        p50, p99 = np.percentile(w, [50, 99])
        return float(p50), float(p99)

    def layer_view(self, spark_steps: int = 16) -> LayerView | None:
        """The table's arrays, worked out once per new step (or sort): until then every call gets the
        same view, shared, so nobody writes into it (the statistics' arrays are read only)."""
        if not self.stats or not self.stats.n_steps:
            return None
        key = (self.stats.steps_seen, self.sort_key, self.sort_reverse, spark_steps)
        cached = self._view_cache
        if cached is not None and cached[0] is self.stats and cached[1] == key:
            return cached[2]
        view = self._layer_view(spark_steps)
        self._view_cache = (self.stats, key, view)
        return view

    def _layer_view(self, spark_steps: int) -> LayerView:
        assert self.stats is not None
        la = self.stats.layer_arrays(STATS_WINDOW_STEPS)
        spark = spark_steps if 0 < spark_steps < STATS_WINDOW_STEPS else STATS_WINDOW_STEPS
        mean = la["mean_ms"]
        top = self.stats.top_level
        slowest = np.zeros(len(mean), dtype=bool)
        top_idx = np.flatnonzero(top & ~np.isnan(mean))
        if top_idx.size >= 4:
            k = max(1, min(3, top_idx.size // 4))
            slowest[top_idx[np.argsort(mean[top_idx])[-k:]]] = True
        view = LayerView(
            names=self.stats.layer_names, parents=self.stats.parents, last_ms=la["last_ms"], mean_ms=mean,
            p50_ms=la["p50_ms"], p99_ms=la["p99_ms"], cycles=la["mean_cycles"], share=la["share"],
            recent_ms=self.stats.arrays(last=spark, fields=("layer_ms",))["layer_ms"].T,
            outlier=np.zeros(len(mean), dtype=bool), slowest=slowest, order=np.arange(len(mean)))
        placed = self.work.per_layer() if self.work is not None else None
        if placed is not None:
            view.flops_per_s, view.roof_pct = placed["flops_per_s"], placed["roof_pct"]
            view.memory_bound = placed["memory_bound"]
        if self.outlier_log is not None and self.step_meta:
            # the table's "!" is the outlier log's verdict on the newest step (one detector for all)
            view.outlier = self.outlier_log.newest_mask(self.step_meta[-1][0], len(mean))
        view.gap_ms = self.gap_means()
        view.order = self.sort_order(view)
        return view

    def gaps(self, last: int) -> np.ndarray:
        """[steps, layers] gap before each top-level layer in the newest ``last`` steps (NaN: none)."""
        from llm_moments.engine.analysis.steptable import layer_gaps

        held = self.live_gaps.newest(last) if self.live_gaps is not None else None
        if held is not None:   # worked out as the steps arrived
            return held
        a = self.stats.arrays(last=last, fields=("start_ms", "layer_ms"))
        return layer_gaps(a["start_ms"], a["layer_ms"], self.stats.parents)

    def gap_means(self) -> np.ndarray:
        g = self.gaps(STATS_WINDOW_STEPS)
        ok = np.isfinite(g)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(ok.any(axis=0), np.where(ok, g, 0).sum(axis=0) / ok.sum(axis=0), np.nan)

    def sort_order(self, view: LayerView) -> np.ndarray:
        n = len(view.names)
        if self.sort_key == "order":
            return np.arange(n)
        nan = np.full(n, np.nan)
        values = {"last": view.last_ms, "mean": view.mean_ms, "p50": view.p50_ms, "p99": view.p99_ms,
                  "cycles": view.cycles, "share": view.share,
                  "flops": view.flops_per_s if view.flops_per_s is not None else nan,
                  "roof": view.roof_pct if view.roof_pct is not None else nan}[self.sort_key]
        # layers that never ran ("—") go last in either direction
        keyed = np.nan_to_num(values, nan=-np.inf if self.sort_reverse else np.inf)
        order = np.argsort(keyed, kind="stable")
        return order[::-1] if self.sort_reverse else order

    def cycle_sort(self) -> str:
        self.sort_key = SORT_KEYS[(SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)]
        self.version += 1
        return self.sort_key

    def step_history(self, last: int = 240) -> tuple[np.ndarray, np.ndarray]:
        """(wall_ms, kind) of the newest steps, oldest first."""
        if not self.stats or not self.stats.n_steps:
            return np.zeros(0), np.zeros(0, dtype="<U7")
        a = self.stats.arrays(last=last, fields=("wall_ms", "kind"))
        return a["wall_ms"], a["kind"]

    def step_distribution(self, bins: int = 12) -> dict[str, Any]:
        """Histogram and moments of step times in the stats window, by kind and overall. The bins span
        p1–p99 (log-spaced when prefill and decode are far apart), the steps below and above are counted
        on their own (``under`` / ``over``), so one slow step does not squeeze the rest into one bin."""
        if not self.stats or not self.stats.n_steps:
            return {"counts": np.zeros(0), "edges": np.zeros(0), "by_kind": {}, "under": 0, "over": 0,
                    "log": False}
        a = self.stats.arrays(last=STATS_WINDOW_STEPS, fields=("wall_ms", "kind"))
        w, kinds = a["wall_ms"], a["kind"]
        h = robust_histogram(w, bins=bins)
        counts, edges = h.counts, h.edges
        by_kind = {}
        for kind in KINDS:
            sel = kinds == kind
            if sel.any():
                x = w[sel]
                p50, p90, p99 = np.percentile(x, [50, 90, 99])
                by_kind[kind] = {"count": int(sel.sum()), "mean": float(x.mean()), "std": float(x.std()),
                                 "p50": float(p50), "p90": float(p90), "p99": float(p99)}
        return {"counts": counts, "edges": edges, "by_kind": by_kind, "under": h.under, "over": h.over,
                "log": h.log}

    def heatmap(self, last: int, values: str = "moments") -> np.ndarray:
        """[layers, steps] moments (``values="gaps"``: the gap before each top-level layer) of the
        newest ``last`` steps (NaN where a layer did not run)."""
        if not self.stats or not self.stats.n_steps:
            return np.zeros((len(self.layer_names), 0))
        if values == "gaps":
            return self.gaps(last).T
        return self.stats.arrays(last=last, fields=("layer_ms",))["layer_ms"].T

    def clock_history(self, key: str = "clock_mhz", last: int = 120) -> list[float]:
        values = [s.get(key) for s in list(self.samples)[-last:]]
        return [float(v) for v in values if v is not None]

    def reference_clock_mhz(self) -> float | None:
        """The clock moments are normalized to: the GPU's max SM clock, else the CPU's nominal one."""
        clock = (self.header or {}).get("clock", {})
        return clock.get("sm_clock_max_mhz") or clock.get("nominal_mhz")

    def _normalized(self, ms: np.ndarray, cycles: np.ndarray, tokens: np.ndarray,
                    clock: np.ndarray) -> dict[str, float]:
        """Cycles per token (the CPI of a layer) and the moment at the reference clock."""
        ref = self.reference_clock_mhz()
        with np.errstate(divide="ignore", invalid="ignore"):
            per_token = cycles / np.where(tokens > 0, tokens, np.nan)
            at_ref = ms * clock / ref if ref else np.full_like(ms, np.nan)
        mean = lambda x: float(np.nanmean(x)) if np.isfinite(x).any() else math.nan
        return {"cycles_per_token": mean(per_token), "ref_clock_mhz": ref, "mean_ms_at_ref": mean(at_ref)}

    def layer_detail(self, index: int, last: int = HISTORY_STEPS) -> dict[str, Any]:
        """Everything the detail screen shows for one layer."""
        assert self.stats is not None
        a = self.stats.arrays(last=last)
        ms = a["layer_ms"][:, index]
        cyc = a["layer_cycles"][:, index]
        fired = ~np.isnan(ms)
        meta = list(self.step_meta)[-len(ms):]
        slowest = []
        if fired.any():
            idx = np.flatnonzero(fired)
            for j in idx[np.argsort(ms[idx])[::-1][:5]]:
                step_index, kind, clock, throttle = meta[j] if j < len(meta) else (None, None, None, ())
                slowest.append({"step": step_index, "kind": kind, "ms": float(ms[j]),
                                "clock_mhz": clock, "throttle": list(throttle)})
        children = [j for j, p in enumerate(self.stats.parents) if p == index]
        child_rows = []
        for j in children:
            cm = a["layer_ms"][:, j]
            child_rows.append({"name": self.stats.layer_names[j],
                               "mean_ms": float(np.nanmean(cm)) if (~np.isnan(cm)).any() else math.nan})
        total = float(np.nanmean(ms)) if fired.any() else math.nan
        for row in child_rows:
            row["share_of_parent"] = row["mean_ms"] / total if total and total > 0 else math.nan
        vals = ms[fired]
        calls = self.stats.arrays(last=last, fields=("calls",))["calls"][:, index]  # NaN: not recorded
        known = calls[np.isfinite(calls)]
        return {
            "name": self.stats.layer_names[index],
            "parent": self.stats.parents[index],
            "history_ms": ms,
            "count": int(fired.sum()),
            "mean_ms": float(vals.mean()) if vals.size else math.nan,
            "p50_ms": float(np.percentile(vals, 50)) if vals.size else math.nan,
            "p99_ms": float(np.percentile(vals, 99)) if vals.size else math.nan,
            "mean_cycles": float(np.nanmean(cyc)) if (~np.isnan(cyc)).any() else math.nan,
            "last_cycles": float(cyc[fired][-1]) if fired.any() and not math.isnan(cyc[fired][-1]) else math.nan,
            **self._normalized(ms, cyc, a["tokens"], a["clock_mhz"]),
            "children": child_rows,
            "slowest": slowest,
            # calls per step (``layer_calls``; 0: did not run), NaN where the recording does not say
            "calls_last": float(calls[-1]) if calls.size else math.nan,
            "calls_median": float(np.median(known)) if known.size else math.nan,
            "calls_steps": int(known.size),
            "nested_calls": float(self.nested_calls[index]) if self.nested_calls is not None else 0.0,
            "nested_steps": int(self.nested_steps[index]) if self.nested_steps is not None else 0,
            "nested_last": float(self.nested_last[index]) if self.nested_last is not None else 0.0,
            "attribution": (self.header or {}).get("attribution"),
        }
