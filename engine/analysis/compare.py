"""Per layer × variant statistics of a ``moments compare`` session (live or recorded).

Steps carry ``variant`` (a label from the header's ``variants``) and ``round``. Per step kind, for
every variant and layer: p50 / p99 moment, p50 cycles, share of step time; for every variant but the
baseline: the ratio of its median moment to the baseline's, with a 95 % bootstrap interval and a
verdict — ``faster`` (the interval lies below 1), ``slower`` (above 1), else ``within-noise`` — and the
same on moments scaled to the reference clock (time × clock / reference clock: diff.py's ``_scale``).

The interval is diff.py's ``ratio_interval`` (the one bootstrap of the project) over **per-round
medians**: each round gives one value per variant and layer (the median of its steps of that kind in
that round), so the steps of one side, which share the machine's state of that moment, count once, and
the rounds are resampled. The sides ran interleaved (ABAB / BABA), so drift lands in every variant
alike; the interval is unpaired, which is conservative: drift widens it rather than shifts it (on this
shared 2-core machine a paired median of per-round ratios flagged 3-4 of 20 rows in an A/A compare;
this flags at most one). Recordings without ``round`` resample steps, as diff does.

A layer a variant does not have (``--drop-layers``) has no entry for it (``absent_in``); a variant
whose steps ran without layer hooks (``--compile``) has ``verdict: "no per-layer timing"`` and no
numbers, its step row still compares.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_moments.engine.analysis.diff import _scale, ratio_interval, reference_clock_mhz
from llm_moments.engine.analysis.steptable import StepTable
from llm_moments.engine.errors import MomentsError

NO_TIMING = "no per-layer timing"
KIND_ORDER = ("decode", "encode", "prefill")


def verdict(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    if hi < 1:
        return "faster"
    if lo > 1:
        return "slower"
    return "within-noise"


def _num(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


@dataclass
class _Group:
    """One variant's steps of one kind."""

    table: StepTable
    rounds: np.ndarray


@dataclass
class CompareResult:
    header: dict[str, Any]
    baseline: str
    labels: list[str]
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)   # kind → {step, layers}
    primary: str | None = None
    info: dict[str, dict[str, Any]] = field(default_factory=dict)     # label → header's variant entry
    output: dict[str, dict[str, Any]] = field(default_factory=dict)   # label → output agreement
    steps: dict[str, int] = field(default_factory=dict)               # label → steps
    rounds: int = 0

    def to_dict(self) -> dict[str, Any]:
        kind = self.primary
        main = self.kinds.get(kind, {}) if kind else {}
        return {"schema": "moments-compare/1", "model": (self.header.get("model") or {}).get("name"),
                "device": (self.header.get("device") or {}).get("kind"),
                "clock_source": (self.header.get("clock") or {}).get("source"),
                "baseline": self.baseline, "variants": list(self.labels), "rounds": self.rounds,
                "variant_info": self.info, "steps": self.steps, "output": self.output,
                "kind": kind, "step": main.get("step"), "layers": main.get("layers", []),
                "by_kind": self.kinds}


def analyze_compare(header: dict[str, Any], steps: Iterable[dict[str, Any]], seed: int = 0,
                    output: dict[str, dict[str, Any]] | None = None) -> CompareResult:
    """The statistics of a compare session from its header and step records."""
    variants = header.get("variants") or []
    labels = [str(v.get("label")) for v in variants if isinstance(v, dict)]
    if len(labels) < 1:
        raise MomentsError("not a compare recording: its header lists no variants")
    baseline = (header.get("compare") or {}).get("baseline") or labels[0]
    names = [l["name"] for l in header["layers"]]
    parents = [l.get("parent") for l in header["layers"]]
    n = len(names)
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in steps:
        if s.get("type", "step") != "step" or len(s.get("layer_ms") or ()) != n:
            continue
        by.setdefault((str(s.get("variant")), str(s.get("kind"))), []).append(s)
    groups: dict[tuple[str, str], _Group] = {}
    for key, recs in by.items():
        t = StepTable.for_header(header, capacity=max(len(recs), 1))
        t.extend(recs)
        rounds = np.array([r.get("round") if isinstance(r.get("round"), int) else -1 for r in recs], dtype=np.int64)
        groups[key] = _Group(t, rounds)
    res = CompareResult(header, baseline, labels, info={str(v.get("label")): v for v in variants},
                        output=dict(output or header.get("output") or {}))
    res.steps = {l: sum(len(g.table) for (lab, _), g in groups.items() if lab == l) for l in labels}
    all_rounds = [g.rounds for g in groups.values() if g.rounds.size]
    res.rounds = int(max((r.max() for r in all_rounds), default=-1)) + 1
    ref = reference_clock_mhz(_H(header))
    rng = np.random.default_rng(seed)
    kinds = sorted({k for (_, k) in groups}, key=lambda k: KIND_ORDER.index(k) if k in KIND_ORDER else 9)
    for kind in kinds:
        res.kinds[kind] = _kind(groups, labels, baseline, kind, names, parents, ref, rng)
    res.primary = kinds[0] if kinds else None
    return res


class _H:
    def __init__(self, header: dict[str, Any]):
        self.header = header


def _round_medians(values: np.ndarray, rounds: np.ndarray) -> np.ndarray:
    """The median of ``values`` in each round; every value on its own when rounds are unknown (< 0)."""
    ok = np.isfinite(values)
    values, rounds = values[ok], rounds[ok]
    if values.size == 0 or (rounds < 0).any():
        return values
    return np.array([np.median(values[rounds == r]) for r in np.unique(rounds)], dtype=np.float64)


def _ratio(base: tuple[np.ndarray, np.ndarray] | None, var: tuple[np.ndarray, np.ndarray] | None,
           rng: np.random.Generator) -> dict[str, Any]:
    """The ratio of the variant's median to the baseline's over per-round medians, with
    diff.ratio_interval's 95 % bootstrap interval (rounds resampled, each side on its own)."""
    if base is None or var is None:
        return {"ratio": None, "ci_low": None, "ci_high": None, "verdict": "n/a", "rounds": 0}
    a, b = _round_medians(*base), _round_medians(*var)
    r, lo, hi = ratio_interval(a, b, rng)
    return {"ratio": _num(r), "ci_low": _num(lo), "ci_high": _num(hi), "verdict": verdict(lo, hi),
            "rounds": int(min(a.size, b.size))}


def _kind(groups: dict[tuple[str, str], _Group], labels: list[str], baseline: str, kind: str,
          names: list[str], parents: list[Any], ref: float | None, rng: np.random.Generator) -> dict[str, Any]:
    g = {l: groups.get((l, kind)) for l in labels}
    scaled = {l: (_scale(x.table, ref) if x is not None and ref else None) for l, x in g.items()}
    base = g.get(baseline)
    step: dict[str, Any] = {}
    for l, x in g.items():
        if x is None:
            continue
        wall = x.table.wall_ms
        entry = {"steps": len(x.table), "p50_ms": _num(np.nanmedian(wall)) if wall.size else None,
                 "p99_ms": _num(np.nanpercentile(wall, 99)) if wall.size else None,
                 "cycles_p50": _num(np.nanmedian(x.table.clock_mhz * wall * 1e3))
                 if np.isfinite(x.table.clock_mhz).any() else None}
        if l != baseline:
            entry.update(_ratio((base.table.wall_ms, base.rounds) if base else None, (wall, x.rounds), rng))
            if ref and base is not None:
                rn = _ratio((scaled[baseline][2], base.rounds), (scaled[l][2], x.rounds), rng)
                entry.update({f"{k}_clock_normalized": v for k, v in rn.items()})
        step[l] = entry
    layers: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        row: dict[str, Any] = {"name": name, "parent": parents[i], "variants": {}, "absent_in": []}
        for l, x in g.items():
            if x is None:
                continue
            ms = x.table.ms[:, i]
            ran = np.isfinite(ms)
            if not x.table.hooks_fired.any():
                row["variants"][l] = {"verdict": NO_TIMING, "p50_ms": None, "p99_ms": None, "cycles_p50": None,
                                      "ratio": None, "ci_low": None, "ci_high": None}
                continue
            if not ran.any():
                row["absent_in"].append(l)
                continue
            cyc = x.table.cycles[:, i]
            wall_sum = float(np.nansum(x.table.wall_ms))
            entry = {"p50_ms": _num(np.median(ms[ran])), "p99_ms": _num(np.percentile(ms[ran], 99)),
                     "cycles_p50": _num(np.nanmedian(cyc)) if np.isfinite(cyc).any() else None,
                     "share": _num(float(np.nansum(ms)) / wall_sum) if wall_sum > 0 else None}
            if l != baseline:
                bx = base if base is not None and np.isfinite(base.table.ms[:, i]).any() else None
                entry.update(_ratio((bx.table.ms[:, i], bx.rounds) if bx else None, (ms, x.rounds), rng))
                if ref and bx is not None:
                    rn = _ratio((scaled[baseline][0][:, i], bx.rounds), (scaled[l][0][:, i], x.rounds), rng)
                    entry.update({f"{k}_clock_normalized": v for k, v in rn.items()})
            row["variants"][l] = entry
        if row["variants"]:
            layers.append(row)
    return {"step": step, "layers": layers}


def flagged(result: CompareResult, label: str) -> tuple[int, int]:
    """(rows called faster or slower, rows compared) for ``label`` over every kind: the A/A check."""
    hits = total = 0
    for k in result.kinds.values():
        for row in k["layers"]:
            e = row["variants"].get(label)
            if e and e.get("verdict") in ("faster", "slower", "within-noise"):
                total += 1
                hits += e["verdict"] != "within-noise"
    return hits, total


def from_scan(sc: Any) -> CompareResult:
    """The compare statistics of a recording (a Scan): its steps and the header's output agreement
    (the footer-side ``compare_output`` record, if the session wrote one)."""
    output: dict[str, Any] = {}
    steps: list[dict[str, Any]] = []
    for r in sc.records():
        if r.get("type") == "step":
            steps.append(r)
        elif r.get("type") == "compare_output" and isinstance(r.get("output"), dict):
            output = r["output"]
    return analyze_compare(sc.header, steps, output=output)


def variant_labels(header: dict[str, Any]) -> list[str]:
    """The variant labels of a compare recording's header ([] for an ordinary recording)."""
    return [str(v.get("label")) for v in header.get("variants") or [] if isinstance(v, dict)]


def only_variant(src: Any, label: str) -> Any:
    """A Scan of ``src`` that yields only ``label``'s steps and texts (everything else as it is): what
    ``report --variant`` and ``diff FILE#LABEL`` read. An unknown label is one line."""
    from llm_moments.engine.analysis.scan import Scan, scan

    sc = scan(src)
    labels = variant_labels(sc.header)
    if label not in labels:
        known = ", ".join(labels) if labels else "none: not a compare recording"
        raise MomentsError(f"{sc.path}: no variant {label!r} (variants: {known})")

    class _One(Scan):
        def records(self):  # type: ignore[override]
            for r in sc.records():
                if r.get("type") in ("step", "text") and r.get("variant") != label:
                    continue
                yield r
            self.footer, self.warnings = sc.footer, sc.warnings

    header = dict(sc.header)
    header["variant"] = label
    return _One(sc.path, header)
