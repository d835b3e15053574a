"""The merged view of several ranks, live: what ``ViewState`` keeps of records tagged with ``rank``.

No Textual import. Every rank's steps go into a ring of its newest ``WINDOW`` moments and computes
(moment − ``comm_ms`` − ``load_ms``: ``engine.analysis.ranks.compute_ms``), layers matched by name
(the primary rank's order, others' extra layers appended). ``view()`` derives, once per change, per
layer each rank's latest and p50 moment, the skew and the culprit rank — by the offline report's own
rules (``engine.analysis.ranks.skews`` / ``culprit_rows``: the rank with the slowest median compute,
never the one that waited) — and per rank its step p50 against the worst rank's, its newest clock
sample, host and device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_moments.engine.analysis.ranks import compute_ms, culprit_rows, skews

WINDOW = 128   # newest steps per rank the p50s are taken over


def nanmedian0(a: np.ndarray) -> np.ndarray:
    """Median along axis 0 ignoring NaN (NaN where a column has none): one sort, no warnings."""
    if a.shape[0] == 0:
        return np.full(a.shape[1:], np.nan)
    n = np.isfinite(a).sum(axis=0)
    s = np.sort(a, axis=0)                      # NaN sort last (a sort along axis 0 beats partition here)
    lo = np.clip((n - 1) // 2, 0, None)
    hi = np.clip(n // 2, 0, None)
    lo_v = np.take_along_axis(s, lo[None], axis=0)[0]
    hi_v = np.take_along_axis(s, np.minimum(hi, a.shape[0] - 1)[None], axis=0)[0]
    return np.where(n > 0, (lo_v + hi_v) / 2, np.nan)


@dataclass
class RankView:
    """What the ranks screen draws; per-rank arrays are [ranks, layers] in ``ranks`` order."""

    ranks: list[int]
    names: list[str]
    parents: list[int | None]
    latest_ms: np.ndarray
    p50_ms: np.ndarray
    compute_ms: np.ndarray          # median compute per rank and layer
    skew_ms: np.ndarray             # [layers]
    culprit: np.ndarray             # [layers] rank id, −1: none
    steps: list[int]
    step_p50_ms: np.ndarray         # [ranks]
    vs_worst_pct: np.ndarray        # [ranks] step p50 against the worst rank's (≤ 0)
    worst_rank: int | None
    hosts: list[str | None]
    devices: list[str | None]
    clocks: list[dict[str, Any] | None]     # newest clock sample per rank
    ended: list[str | None]                 # footer reason per rank, None while it runs
    has_comm: bool = False
    world_size: int | None = None
    missing: list[int] = field(default_factory=list)


class RankLive:
    def __init__(self, primary: int | None = None, window: int = WINDOW):
        self.primary = primary
        self.window = window
        self.headers: dict[int, dict[str, Any]] = {}
        self.names: list[str] = []
        self.parents: list[int | None] = []
        self.index: dict[str, int] = {}
        self.cols: dict[int, np.ndarray] = {}
        self.ms: dict[int, np.ndarray] = {}
        self.comp: dict[int, np.ndarray] = {}
        self.wall: dict[int, np.ndarray] = {}
        self.count: dict[int, int] = {}
        self.pending: dict[int, list[dict[str, Any]]] = {}   # folded when a view is asked for (lazily)
        self.dropped: dict[int, int] = {}                      # pending steps older than the window
        self.samples: dict[int, dict[str, Any]] = {}
        self.footers: dict[int, dict[str, Any]] = {}
        self.has_comm = False
        self.version = 0
        self._cached: tuple[int, RankView | None] | None = None

    # -- records ---------------------------------------------------------------------------------
    def is_primary(self, rank: int, rtype: str | None) -> bool:
        """The rank the single-rank screens show: the one named at start, else the first with a header."""
        if self.primary is None and rtype == "header":
            self.primary = rank
        return rank == self.primary

    def header(self, rank: int, header: dict[str, Any]) -> None:
        layers = header.get("layers") or []
        cols = []
        for layer in layers:
            name = str(layer.get("name"))
            if name not in self.index:
                self.index[name] = len(self.names)
                self.names.append(name)
                p = layer.get("parent")
                pname = str(layers[p].get("name")) if type(p) is int and 0 <= p < len(layers) else None
                self.parents.append(self.index.get(pname) if pname is not None else None)
            cols.append(self.index[name])
        self.headers[rank] = header
        self.cols[rank] = np.array(cols, dtype=np.intp)
        L = len(self.names)
        for r in list(self.ms):   # new layers: widen every ring
            if self.ms[r].shape[1] < L:
                pad = np.full((self.window, L - self.ms[r].shape[1]), np.nan)
                self.ms[r] = np.hstack([self.ms[r], pad])
                self.comp[r] = np.hstack([self.comp[r], pad.copy()])
        self.reset(rank)

    def reset(self, rank: int) -> None:
        L = len(self.names)
        self.ms[rank] = np.full((self.window, L), np.nan)
        self.comp[rank] = np.full((self.window, L), np.nan)
        self.wall[rank] = np.full(self.window, np.nan)
        self.count[rank] = 0
        self.pending[rank] = []
        self.dropped[rank] = 0
        self.footers.pop(rank, None)
        self.version += 1

    def step(self, rank: int, step: dict[str, Any]) -> None:
        if rank in self.cols:
            pending = self.pending[rank]
            pending.append(step)
            if len(pending) >= 2 * self.window:   # nobody looked for a while: keep only what a view uses
                self.dropped[rank] += len(pending) - self.window
                del pending[:-self.window]
            self.version += 1

    def sample(self, rank: int, sample: dict[str, Any]) -> None:
        self.samples[rank] = sample
        self.version += 1

    def footer(self, rank: int, footer: dict[str, Any]) -> None:
        self.footers[rank] = footer
        self.version += 1

    def flush(self) -> None:
        W = self.window
        for rank, steps in self.pending.items():
            if not steps:
                continue
            self.pending[rank] = []
            dropped, self.dropped[rank] = self.dropped[rank], 0
            cols = self.cols[rank]
            steps = [s for s in steps if type(s.get("layer_ms")) is list and len(s["layer_ms"]) == len(cols)]
            total = len(steps) + dropped
            if not steps:
                self.count[rank] += dropped
                continue
            steps = steps[-W:]
            ms, comp, waits = compute_ms(steps, len(cols))
            self.has_comm |= waits
            k = len(steps)
            pos = (self.count[rank] + (total - k) + np.arange(k)) % W
            L = len(self.names)
            full = np.full((k, L), np.nan)
            full[:, cols] = ms
            self.ms[rank][pos] = full
            full = np.full((k, L), np.nan)
            full[:, cols] = comp
            self.comp[rank][pos] = full
            self.wall[rank][pos] = [s.get("wall_ms") if type(s.get("wall_ms")) in (int, float) else np.nan
                                    for s in steps]
            self.count[rank] += total

    # -- the view --------------------------------------------------------------------------------
    @property
    def ranks(self) -> list[int]:
        return sorted(self.headers)

    def view(self) -> RankView | None:
        if self._cached is not None and self._cached[0] == self.version:
            return self._cached[1]
        self.flush()
        v = self._view()
        self._cached = (self.version, v)
        return v

    def _view(self) -> RankView | None:
        ranks = self.ranks
        if not ranks:
            return None
        R, L = len(ranks), len(self.names)
        latest, p50, comp = np.full((R, L), np.nan), np.full((R, L), np.nan), np.full((R, L), np.nan)
        wall = np.full(R, np.nan)
        for k, r in enumerate(ranks):
            n = min(self.count[r], self.window)
            if not n:
                continue
            p50[k] = nanmedian0(self.ms[r][:n])
            comp[k] = nanmedian0(self.comp[r][:n])
            latest[k] = self.ms[r][(self.count[r] - 1) % self.window]
            wall[k] = nanmedian0(self.wall[r][:n, None])[0]
        rows = culprit_rows(comp)
        culprit = np.where(rows >= 0, np.array(ranks)[np.clip(rows, 0, R - 1)], -1)
        worst = None
        vs = np.full(R, np.nan)
        if np.isfinite(wall).any():
            w = int(np.nanargmax(wall))
            worst = ranks[w]
            if wall[w] > 0:
                vs = (wall / wall[w] - 1) * 100
        hosts, devices = [], []
        for r in ranks:
            h = self.headers[r]
            d = h.get("dist") or {}
            hosts.append(None if d.get("host") is None else str(d.get("host")))
            dev = h.get("device") or {}
            name = dev.get("name") or dev.get("kind")
            devices.append(None if name is None else str(name))
        sizes = [(self.headers[r].get("dist") or {}).get("world_size") for r in ranks]
        world = max([s for s in sizes if type(s) is int and 0 < s <= 1 << 20] or [0]) or None
        missing = [r for r in range(world) if r not in self.headers] if world and world <= 4096 else []
        return RankView(ranks, list(self.names), list(self.parents), latest, p50, comp, skews(p50), culprit,
                        [self.count[r] for r in ranks], wall, vs, worst, hosts, devices,
                        [self.samples.get(r) for r in ranks],
                        [None if r not in self.footers else str(self.footers[r].get("reason")) for r in ranks],
                        self.has_comm, world, missing)


def clock_text(sample: dict[str, Any] | None) -> str:
    """One rank's newest clock sample in a few words."""
    if not sample:
        return "—"
    mhz = sample.get("sm_clock_mhz") or sample.get("clock_mhz")
    parts = [f"{float(mhz):.0f} MHz" if isinstance(mhz, (int, float)) and math.isfinite(mhz) else "— MHz"]
    util = sample.get("gpu_util_pct", sample.get("cpu_util_pct"))
    if isinstance(util, (int, float)) and math.isfinite(util):
        parts.append(f"{util:.0f}%")
    power = sample.get("power_w")
    if isinstance(power, (int, float)) and math.isfinite(power):
        parts.append(f"{power:.0f} W")
    if sample.get("throttle_reasons"):
        parts.append("throttled")
    return " ".join(parts)


__all__ = ["WINDOW", "RankLive", "RankView", "clock_text", "nanmedian0"]
