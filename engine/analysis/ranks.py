"""The merged view of a multi-rank session (design §10): per layer each rank's p50, the skew between
ranks, and the **culprit rank** — the one whose *compute* is slowest, never the one that waited.

Rules (one place):

- **compute** of a layer in a step on a rank = its moment − ``comm_ms`` (time inside collectives) −
  ``load_ms`` (offloaded weights brought in), each absent / null counted as 0, floored at 0. A
  blocking collective ends together on every rank, so the fast rank's moment holds the wait: the
  moments of two tensor-parallel ranks look alike, their compute does not;
- **culprit rank** of a layer = the argmax over ranks of the median of its compute (None with fewer
  than two ranks that ran it, or when the top two medians tie exactly);
- **last share** of a rank for a layer = the fraction of aligned steps (same step ``index`` on every
  rank; only steps where at least two ranks ran the layer and the slowest is not an exact tie) in
  which that rank's compute was the highest;
- **skew** of a layer = max − min over ranks of the per-rank p50 *moments*;
- per rank: its step count and step p50 (wall time); the **worst rank** has the highest step p50.

Bounded memory: every rank's file is streamed once, all of them in lockstep by step index (a k-way
merge of their step records), ``max(64, CHUNK // ranks)`` aligned steps at a time, into per-rank
``sketch.QuantileSketch``es (moments, compute, step wall times: exact up to a share of the sketch's
cell budget, within 0.5 % after) and counters of who was last. ``RankScan`` is a ``scan.Scan`` of the
lowest rank's file that folds the others as it is read: ``report.analyze(RankScan(rs))`` gives the
usual report of that rank, and ``RankScan.result()`` then the merged view, in the same single pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_moments.engine.analysis.diff import Diff
from llm_moments.engine.analysis.scan import Scan
from llm_moments.engine.analysis.sketch import EXACT_CELLS, QuantileSketch
from llm_moments.engine.analysis.steptable import CHUNK
from llm_moments.engine.core import recording
from llm_moments.engine.core.rankfiles import RankSet

TIE_MS = 1e-9   # computes closer than this are a tie (nobody was last)


@dataclass
class RankInfo:
    rank: int
    host: str | None
    device: str | None
    file: str
    steps: int
    step_p50_ms: float
    vs_worst_pct: float = math.nan          # step p50 against the worst rank's, in per cent (≤ 0)


@dataclass
class RankLayer:
    name: str
    parent: int | None
    p50_ms: dict[int, float]                # rank → p50 moment
    compute_p50_ms: dict[int, float]        # rank → median compute (moment − comm − load)
    skew_ms: float                          # max − min of the p50 moments
    culprit_rank: int | None
    last_share: dict[int, float]            # rank → share of aligned steps it was the slowest to compute
    steps_compared: int                     # aligned steps that counted for last_share


@dataclass
class RankAnalysis:
    base: str
    session: str | None
    world_size: int
    backend: str | None
    ranks: list[RankInfo]
    missing: list[int]
    layers: list[RankLayer]
    worst_rank: int | None
    warnings: list[str] = field(default_factory=list)   # one line per problem, each naming its file
    has_comm: bool = False                  # some step of some rank carried comm_ms / load_ms

    @property
    def rank_ids(self) -> list[int]:
        return [r.rank for r in self.ranks]

    def layer(self, name: str) -> RankLayer | None:
        return next((l for l in self.layers if l.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "session": self.session, "world_size": self.world_size, "backend": self.backend,
                "missing_ranks": list(self.missing), "worst_rank": self.worst_rank,
                "ranks": [vars(r) for r in self.ranks],
                "layers": [{**{k: v for k, v in vars(l).items() if not isinstance(v, dict)},
                            **{k: {str(r): x for r, x in v.items()} for k, v in vars(l).items() if isinstance(v, dict)}}
                           for l in self.layers]}


def _layer_array(steps: list[dict[str, Any]], key: str, n: int) -> np.ndarray:
    """A per-layer field of step records as [steps, n] float64, None / absent → NaN (the reader checked
    the arrays: numbers or null, n of them)."""
    rows = [s.get(key) for s in steps]
    rows = [r if type(r) is list and len(r) == n else (None,) * n for r in rows]
    if not rows:
        return np.zeros((0, n))
    try:
        a = np.array(rows, dtype=np.float64).reshape(len(rows), n)
    except (TypeError, ValueError, OverflowError):
        a = np.array([[v if type(v) in (int, float) else np.nan for v in r] for r in rows],
                     dtype=np.float64).reshape(len(rows), n)
    a[~np.isfinite(a) | (a < 0)] = np.nan
    return a


def compute_ms(steps: list[dict[str, Any]], n: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(moments, compute) [steps, n] of one rank's step records: compute = moment − comm_ms − load_ms
    (null / absent: 0), floored at 0, NaN where the layer did not run; and whether any wait was recorded."""
    ms = _layer_array(steps, "layer_ms", n)
    waits = False
    compute = ms.copy()
    for key in ("comm_ms", "load_ms"):
        if any(key in s for s in steps):
            waits = True
            w = _layer_array(steps, key, n)
            compute -= np.where(np.isfinite(w), w, 0.0)
    return ms, np.maximum(compute, 0.0), waits


def skews(p50_ms: np.ndarray) -> np.ndarray:
    """Skew per layer of [ranks, layers] p50 moments: max − min over the ranks that ran it (NaN with
    fewer than two)."""
    ok = np.isfinite(p50_ms)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore"):
        hi = np.where(ok, p50_ms, -np.inf).max(axis=0, initial=-np.inf)
        lo = np.where(ok, p50_ms, np.inf).min(axis=0, initial=np.inf)
        return np.where(n >= 2, hi - lo, np.nan)


def culprit_rows(compute_p50_ms: np.ndarray) -> np.ndarray:
    """The culprit rule over [ranks, layers] median computes: per layer the row of the slowest compute,
    −1 with fewer than two ranks that ran it or when the top two are closer than ``TIE_MS``."""
    R, L = compute_p50_ms.shape if compute_p50_ms.ndim == 2 else (0, 0)
    if R < 2:
        return np.full(L, -1, dtype=np.intp)
    c = np.where(np.isfinite(compute_p50_ms), compute_p50_ms, -np.inf)
    order = np.argsort(-c, axis=0, kind="stable")
    top, second = order[0], order[1]
    cols = np.arange(L)
    a, b = c[top, cols], c[second, cols]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(a) & np.isfinite(b) & ((a - b) > TIE_MS)
    return np.where(ok, top, -1)


class RankAcc:
    """The merged view folded from aligned rows ({rank: step record}) in bounded chunks."""

    def __init__(self, rs: RankSet):
        self.rs = rs
        self.ranks = rs.ranks
        names: list[str] = []
        parents: list[int | None] = []
        seen: dict[str, int] = {}
        self.cols: dict[int, np.ndarray] = {}
        for r in self.ranks:        # layers matched by name, in the lowest rank's order, others appended
            layers = rs.headers[r]["layers"]
            cols = []
            for layer in layers:
                name = str(layer.get("name"))
                if name not in seen:
                    seen[name] = len(names)
                    names.append(name)
                    p = layer.get("parent")
                    pname = str(layers[p].get("name")) if type(p) is int and 0 <= p < len(layers) else None
                    parents.append(seen.get(pname) if pname is not None else None)
                cols.append(seen[name])
            self.cols[r] = np.array(cols, dtype=np.intp)
        self.names, self.parents = names, parents
        R, L = len(self.ranks), len(names)
        budget = max(EXACT_CELLS // max(R, 1), 4096)
        self.ms = {r: QuantileSketch(L, budget) for r in self.ranks}
        self.compute = {r: QuantileSketch(L, budget) for r in self.ranks}
        self.wall = {r: QuantileSketch(1, budget // max(L, 1) + 1) for r in self.ranks}
        self.steps = dict.fromkeys(self.ranks, 0)
        self.last = np.zeros((R, L), dtype=np.int64)
        self.compared = np.zeros(L, dtype=np.int64)
        self.has_comm = False
        self.chunk = max(64, CHUNK // max(R, 1))
        self.rows: list[dict[int, dict[str, Any]]] = []

    def push(self, row: dict[int, dict[str, Any]]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        rows, self.rows = self.rows, []
        if not rows:
            return
        m, L = len(rows), len(self.names)
        C = np.full((len(self.ranks), m, L), np.nan)
        for k, r in enumerate(self.ranks):
            at = [i for i, row in enumerate(rows) if r in row]
            if not at:
                continue
            steps = [rows[i][r] for i in at]
            cols = self.cols[r]
            ms, comp, waits = compute_ms(steps, len(cols))
            self.has_comm |= waits
            full_ms, full_c = np.full((len(at), L), np.nan), np.full((len(at), L), np.nan)
            full_ms[:, cols], full_c[:, cols] = ms, comp
            self.ms[r].add(full_ms)
            self.compute[r].add(full_c)
            wall = np.array([s.get("wall_ms") if type(s.get("wall_ms")) in (int, float) else np.nan for s in steps],
                            dtype=np.float64)
            self.wall[r].add(wall[:, None])
            self.steps[r] += len(at)
            C[k, at] = full_c
        if len(self.ranks) < 2:
            return
        ran = np.isfinite(C)
        ok = ran.sum(axis=0) >= 2
        Cm = np.where(ran, C, -np.inf)
        top = np.argmax(Cm, axis=0)
        two = np.sort(Cm, axis=0)[-2:]
        with np.errstate(invalid="ignore"):
            ok &= (two[1] - two[0]) > TIE_MS
        for k in range(len(self.ranks)):
            self.last[k] += ((top == k) & ok).sum(axis=0)
        self.compared += ok.sum(axis=0)

    def result(self, warnings: list[str] | None = None) -> RankAnalysis:
        self.flush()
        rs, ranks = self.rs, self.ranks
        p50 = {r: self.ms[r].quantiles([50])[0] for r in ranks}
        cp50 = {r: self.compute[r].quantiles([50])[0] for r in ranks}
        walls = {r: float(self.wall[r].quantiles([50])[0, 0]) for r in ranks}
        layers = []
        L = len(self.names)
        P = np.array([np.asarray(p50[r], dtype=np.float64).reshape(L) for r in ranks]).reshape(len(ranks), L)
        C = np.array([np.asarray(cp50[r], dtype=np.float64).reshape(L) for r in ranks]).reshape(len(ranks), L)
        skew_of, culprit_of = skews(P), culprit_rows(C)
        for j, name in enumerate(self.names):
            vals = {r: float(p50[r][j]) for r in ranks}
            comp = {r: float(cp50[r][j]) for r in ranks}
            skew = float(skew_of[j])
            culprit = ranks[int(culprit_of[j])] if culprit_of[j] >= 0 else None
            n = int(self.compared[j])
            share = {r: float(self.last[k, j]) / n for k, r in enumerate(ranks)} if n else {}
            layers.append(RankLayer(name, self.parents[j], vals, comp, skew, culprit, share, n))
        fin_walls = [(w, r) for r, w in walls.items() if math.isfinite(w)]
        worst = max(fin_walls)[1] if fin_walls else None
        infos = []
        for r in ranks:
            w = walls[r]
            vs = (w / walls[worst] - 1) * 100 if worst is not None and math.isfinite(w) and walls[worst] > 0 \
                else math.nan
            infos.append(RankInfo(r, rs.host(r), rs.device(r), str(rs.files[r]), self.steps[r], w, vs))
        return RankAnalysis(str(rs.base), rs.session, rs.world_size, rs.backend, infos, list(rs.missing), layers,
                            worst, list(rs.warnings) + list(warnings or []), self.has_comm)


class _Aligner:
    """Steps of every rank matched by step index: the primary's records are pushed as they are read,
    the others' are pulled from their own readers (a k-way merge; each file read once, in order)."""

    def __init__(self, acc: RankAcc, primary: int, others: dict[int, Iterator[dict[str, Any]]]):
        self.acc, self.primary = acc, primary
        self.its = others
        self.heads: dict[int, dict[str, Any] | None] = {r: next(it, None) for r, it in others.items()}

    def _take(self, r: int) -> dict[str, Any]:
        head = self.heads[r]
        self.heads[r] = next(self.its[r], None)
        assert head is not None
        return head

    def _until(self, index: float) -> None:
        """Push the other ranks' steps with an index below ``index`` (aligned among themselves)."""
        while True:
            below = [h["index"] for h in self.heads.values() if h is not None and h["index"] < index]
            if not below:
                return
            j = min(below)
            self.acc.push({r: self._take(r) for r, h in list(self.heads.items()) if h is not None and h["index"] == j})

    def step(self, rec: dict[str, Any]) -> None:
        i = rec["index"]
        self._until(i)
        row = {self.primary: rec}
        for r, h in list(self.heads.items()):
            if h is not None and h["index"] == i:
                row[r] = self._take(r)
        self.acc.push(row)

    def finish(self) -> None:
        self._until(math.inf)
        self.acc.flush()


def _steps_of(path: Any, stats: recording.ReadStats) -> Iterator[dict[str, Any]]:
    for obj in recording.RecordReader(path, stats):
        if obj.get("type") == "step":
            yield obj


class RankScan(Scan):
    """A ``Scan`` of the lowest rank's file that folds every rank's steps into the merged view as it is
    read (see the module docstring); ``result()`` once ``records()`` is exhausted."""

    def __init__(self, rs: RankSet):
        super().__init__(rs.files[rs.primary], rs.headers[rs.primary])
        self.rs = rs
        self._result: RankAnalysis | None = None

    def records(self) -> Iterator[dict[str, Any]]:
        rs = self.rs
        acc = RankAcc(rs)
        stats = {r: recording.ReadStats() for r in rs.ranks if r != rs.primary}
        aligner = _Aligner(acc, rs.primary, {r: _steps_of(rs.files[r], stats[r]) for r in stats})
        for obj in super().records():
            if obj.get("type") == "step":
                aligner.step(obj)
            yield obj
        aligner.finish()
        warnings = [f"rank {r} ({rs.files[r].name}): {w}" for r, st in stats.items() for w in st.warnings()]
        self._result = acc.result(warnings)

    def result(self) -> RankAnalysis:
        if self._result is None:
            for _ in self.records():
                pass
        assert self._result is not None
        return self._result


def analyze_ranks(rs: RankSet) -> RankAnalysis:
    """The merged view alone (every rank's file read once)."""
    return RankScan(rs).result()


# -- diff of two rank sets ----------------------------------------------------------------------------


@dataclass
class RankDiff:
    """``diff A B`` where a side is a rank set: the merged view (every rank's steps pooled, layers by
    name) and, for the ranks both sides have, one diff per rank (rank R of A against rank R of B)."""

    merged: Diff
    per_rank: dict[int, Diff]
    only_in_a: list[int] = field(default_factory=list)     # ranks only A has
    only_in_b: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)   # (file, reader warning)

    def to_dict(self) -> dict[str, Any]:
        return {"merged": self.merged.to_dict(), "ranks": {str(r): d.to_dict() for r, d in self.per_rank.items()},
                "ranks_only_in_a": self.only_in_a, "ranks_only_in_b": self.only_in_b, "notes": self.notes}


class _Placed:
    """A step table's columns moved onto the merged layer list (what ``diff._Side.add`` reads)."""

    def __init__(self, table: Any, cols: np.ndarray, n: int):
        def place(a: np.ndarray) -> np.ndarray:
            out = np.full((len(a), n), np.nan)
            out[:, cols] = a
            return out

        self.ms, self.cycles = place(table.ms), place(table.cycles)
        self.wall_ms, self.kind, self.clock_mhz = table.wall_ms, table.kind, table.clock_mhz


def _fold_side(files: dict[int, Any], ref: float | None, reservoir: int, seed: int,
               warnings: list[tuple[str, str]]) -> tuple[Any, dict[int, Any]]:
    """(merged side, {rank: side}) of one side's files, each read once."""
    from llm_moments.engine.analysis.diff import _Side
    from llm_moments.engine.analysis.scan import scan, step_chunks

    scans = {r: scan(f) for r, f in files.items()}
    names: list[str] = []
    index: dict[str, int] = {}
    for sc in scans.values():
        for layer in sc.header["layers"]:
            if layer["name"] not in index:
                index[layer["name"]] = len(names)
                names.append(layer["name"])
    per_res = reservoir if len(files) <= 8 else max(512, reservoir * 8 // len(files))
    merged = _Side(names, reservoir, seed)
    sides = {}
    for k, (r, sc) in enumerate(scans.items()):
        own = [l["name"] for l in sc.header["layers"]]
        cols = np.array([index[n] for n in own], dtype=np.intp)
        side = sides[r] = _Side(own, per_res, seed + 101 * (k + 1))
        for steps, table in step_chunks(sc):
            side.add(steps, table, ref)
            merged.add(steps, _Placed(table, cols, len(names)), ref)   # type: ignore[arg-type]
        warnings += [(str(sc.path), w) for w in sc.warnings]
    return merged, sides


def diff_ranks(a: Any, b: Any, kind: str | None = None, seed: int = 0, normalize_clock: bool = False) -> RankDiff:
    """A and B: each a ``RankSet`` or one recording (a path). Every file is read once."""
    from llm_moments.engine.analysis.diff import RESERVOIR, compare_sides
    from llm_moments.engine.errors import MomentsError

    def files(x: Any) -> dict[int, Any]:
        return dict(x.files) if isinstance(x, RankSet) else {-1: x}

    def headers(x: Any) -> list[dict[str, Any]]:
        return list(x.headers.values()) if isinstance(x, RankSet) else [recording.read_header(x)]

    ref = None
    if normalize_clock:   # A's reference clock, else B's (as diff.compare)
        for h in headers(a) + headers(b):
            clock = h.get("clock") or {}
            ref = clock.get("sm_clock_max_mhz") or clock.get("nominal_mhz")
            if ref:
                break
        if not ref:
            raise MomentsError("--normalize-clock: neither recording knows a reference clock")
    fa, fb = files(a), files(b)
    warnings: list[tuple[str, str]] = []
    ma, sa = _fold_side(fa, ref, RESERVOIR, seed + 1, warnings)
    mb, sb = _fold_side(fb, ref, RESERVOIR, seed + 2, warnings)
    merged = compare_sides(ma, mb, kind, seed)
    out = RankDiff(merged, {})
    ra, rb = set(fa) - {-1}, set(fb) - {-1}
    if not ra or not rb:
        single = "A" if not ra else "B"
        out.notes.append(f"{single} is one recording: compared with the other side's ranks pooled (no per-rank pairs)")
        out.warnings = warnings
        return out
    out.only_in_a, out.only_in_b = sorted(ra - rb), sorted(rb - ra)
    for r in sorted(ra & rb):
        try:
            out.per_rank[r] = compare_sides(sa[r], sb[r], merged.kind, seed + r)
        except MomentsError as exc:
            out.notes.append(f"rank {r}: {exc}")
    out.warnings = warnings
    return out


__all__ = ["RankAcc", "RankAnalysis", "RankDiff", "RankInfo", "RankLayer", "RankScan", "analyze_ranks",
           "compute_ms", "culprit_rows", "diff_ranks", "skews"]
