"""Per layer × variant statistics of a ``moments compare`` session (live or recorded).

Steps carry ``variant`` (a label from the header's ``variants``) and ``round``. Per step kind, for
every variant and layer: p50 / p99 moment, p50 cycles, share of step time; for every variant but the
baseline: the ratio to the baseline, an interval, and a verdict; the same on moments scaled to the
reference clock (time × clock / reference clock: diff.py's ``_scale``), as ``*_clock_normalized``.

**The estimator: paired by round.** In round r both sides ran the same texts back to back (ABAB /
BABA), so they share the machine's state of that moment. Each side's value in a round is the median
of its steps of that kind in that round (per layer, or the step's wall time); the round's log ratio
is d_r = ln(variant's value / baseline's value), which cancels the drift between rounds. The ratio
is exp(median of d_r) over the rounds where both sides have a value.

**The interval: distribution-free (sign test / order statistics).** For n paired rounds and
confidence 1 − α, the interval of the median is [exp d_(k), exp d_(n−k+1)] (d_(i): the i-th smallest)
with k the largest integer such that P(Binomial(n, ½) ≤ k − 1) ≤ α / 2; its coverage is at least
1 − α whatever the distribution of d_r (heavy tails, bimodal order effects) as long as the rounds
are independent with median ln ratio. No bootstrap: at the per-row levels below (tails of 0.1 % and
less) diff.py's percentile bootstrap would need far more resamples, and a bootstrap of a median
undercovers at a few dozen rounds — which is why the earlier paired bootstrap flagged 3-4 of 20 rows
in an A/A compare here. With too few rounds for any k ≥ 1 (2 · 2⁻ⁿ > α) there is no interval and
the verdict is ``too few rounds``.

**The rule: family-wise and practical.** Every row of a variant (step and layer rows of every kind)
is one test of one family: with L rows, each interval is at confidence 1 − 0.05 / L (Bonferroni), so
the chance that an A/A compare flags any row is at most 5 % and the expected count at most 0.05. A
verdict also needs the interval to lie entirely outside [1 − m, 1 + m] (the practical-equivalence
margin ``m``, 2 % unless ``--margin``): ``faster`` when its upper end is < 1 − m, ``slower`` when its
lower end is > 1 + m, else ``within-noise``. The clock-normalized view is a family of its own under
the same rule. The JSON's ``rule`` states all of it with the numbers used.

Recordings whose steps lack ``round`` cannot be paired: the ratio of medians is given without an
interval (verdict ``n/a``). A layer a variant does not have (``--drop-layers``) has no entry for it
(``absent_in``); a variant whose steps ran without layer hooks (``--compile``) has ``verdict: "no
per-layer timing"`` and no numbers, its step row still compares.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_moments.engine.analysis.diff import _scale, reference_clock_mhz
from llm_moments.engine.analysis.steptable import StepTable
from llm_moments.engine.errors import MomentsError

NO_TIMING = "no per-layer timing"
TOO_FEW = "too few rounds"
KIND_ORDER = ("decode", "encode", "prefill")
FAMILY_ALPHA = 0.05       # the chance that any row of one variant is flagged when nothing changed
DEFAULT_MARGIN = 0.02     # ratios within [1 − m, 1 + m] are never called a change
MAX_MARGIN = 0.5


def verdict(lo: float | None, hi: float | None, margin: float = DEFAULT_MARGIN) -> str:
    """``faster`` / ``slower`` when the interval lies entirely below 1 − margin / above 1 + margin."""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    if hi < 1 - margin:
        return "faster"
    if lo > 1 + margin:
        return "slower"
    return "within-noise"


@functools.lru_cache(maxsize=1024)
def sign_rank(n: int, alpha: float) -> int:
    """The largest k ≥ 1 with P(Binomial(n, ½) ≤ k − 1) ≤ alpha / 2 (0: none, too few values): the
    order statistics d_(k), d_(n−k+1) bound the median at confidence ≥ 1 − alpha."""
    if n < 1 or not 0 < alpha < 1:
        return 0
    target, cdf, k = alpha / 2, 0.0, 0
    log_norm = math.lgamma(n + 1) - n * math.log(2)
    while k <= n // 2:
        cdf += math.exp(log_norm - math.lgamma(k + 1) - math.lgamma(n - k + 1))   # P(X = k)
        if cdf > target:
            break
        k += 1
    return k


def median_interval(d: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """(median, low, high) of the values ``d``: the sign-test interval at confidence ≥ 1 − alpha
    (NaN ends when ``d`` has too few values for one)."""
    d = np.sort(d[np.isfinite(d)])
    n = d.size
    if n == 0:
        return np.nan, np.nan, np.nan
    k = sign_rank(n, alpha)
    med = float(np.median(d))
    if k < 1:
        return med, np.nan, np.nan
    return med, float(d[k - 1]), float(d[n - k])


def min_rounds(alpha: float) -> int:
    """The fewest paired rounds that give a sign-test interval at confidence 1 − alpha."""
    return max(1, math.ceil(math.log2(2 / alpha))) if 0 < alpha < 1 else 0


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
    _medians: dict[str, tuple[np.ndarray, np.ndarray] | None] = field(default_factory=dict)

    def round_medians(self, key: str, values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(the rounds, the median of ``values``' rows [steps, columns] in each round, NaN ignored),
        computed once per ``key``; None when a step's round is unknown (< 0)."""
        if key not in self._medians:
            if self.rounds.size == 0 or (self.rounds < 0).any():
                self._medians[key] = None
            else:
                self._medians[key] = _group_medians(self.rounds, values)
        return self._medians[key]


def _group_medians(groups: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct groups, the NaN-ignoring median of ``values``' rows [n, columns] in each group), in
    one vectorized pass: rows padded with NaN to [groups, most rows, columns], sorted (NaN last), the
    middle of each column's finite values taken."""
    order = np.argsort(groups, kind="stable")
    keys, start, count = np.unique(groups[order], return_index=True, return_counts=True)
    slot = np.arange(order.size) - np.repeat(start, count)
    cube = np.full((keys.size, int(count.max()), values.shape[1]), np.nan)
    cube[np.repeat(np.arange(keys.size), count), slot] = values[order]
    cube.sort(axis=1)
    n = np.isfinite(cube).sum(axis=1)                       # [groups, columns]
    lo = np.take_along_axis(cube, np.maximum(n - 1, 0)[:, None, :] // 2, axis=1)[:, 0]
    hi = np.take_along_axis(cube, (n // 2)[:, None, :], axis=1)[:, 0]
    return keys, np.where(n > 0, (lo + hi) / 2, np.nan)


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
    rule: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        kind = self.primary
        main = self.kinds.get(kind, {}) if kind else {}
        return {"schema": "moments-compare/1", "model": (self.header.get("model") or {}).get("name"),
                "device": (self.header.get("device") or {}).get("kind"),
                "clock_source": (self.header.get("clock") or {}).get("source"),
                "baseline": self.baseline, "variants": list(self.labels), "rounds": self.rounds,
                "rule": self.rule, "variant_info": self.info, "steps": self.steps, "output": self.output,
                "kind": kind, "step": main.get("step"), "layers": main.get("layers", []),
                "by_kind": self.kinds}


def header_margin(header: dict[str, Any]) -> float:
    """The margin the session ran with (header ``compare.margin``), else the default."""
    m = _num((header.get("compare") or {}).get("margin"))
    return m if m is not None and 0 <= m <= MAX_MARGIN else DEFAULT_MARGIN


def analyze_compare(header: dict[str, Any], steps: Iterable[dict[str, Any]], seed: int = 0,
                    output: dict[str, dict[str, Any]] | None = None, margin: float | None = None,
                    family_alpha: float = FAMILY_ALPHA) -> CompareResult:
    """The statistics of a compare session from its header and step records. ``margin``: the
    practical-equivalence margin (default: the header's, else 2 %). ``seed`` is unused (the interval
    is deterministic); kept for callers."""
    if margin is None:
        margin = header_margin(header)
    if not 0 <= margin <= MAX_MARGIN:
        raise MomentsError(f"--margin must be from 0 to {MAX_MARGIN}, not {margin}")
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
        rounds = np.array([r.get("round") if type(r.get("round")) is int else -1 for r in recs], dtype=np.int64)
        groups[key] = _Group(t, rounds)
    res = CompareResult(header, baseline, labels, info={str(v.get("label")): v for v in variants},
                        output=dict(output or header.get("output") or {}))
    res.steps = {l: sum(len(g.table) for (lab, _), g in groups.items() if lab == l) for l in labels}
    all_rounds = [g.rounds for g in groups.values() if g.rounds.size]
    res.rounds = int(max((r.max() for r in all_rounds), default=-1)) + 1
    ref = reference_clock_mhz(_H(header))
    kinds = sorted({k for (_, k) in groups}, key=lambda k: KIND_ORDER.index(k) if k in KIND_ORDER else 9)
    tests: dict[tuple[str, str], list[tuple[dict[str, Any], np.ndarray | None, float, str]]] = {}
    for kind in kinds:
        res.kinds[kind] = _kind(groups, labels, baseline, kind, names, parents, ref, tests)
    res.primary = kinds[0] if kinds else None
    res.rule = _decide(tests, margin, family_alpha, labels, baseline)
    return res


class _H:
    def __init__(self, header: dict[str, Any]):
        self.header = header


Series = tuple[_Group, str, np.ndarray, int]   # a group, what the values are, [steps, columns], a column


def _values(side: Series) -> np.ndarray:
    return side[2][:, side[3]] if side[2].ndim == 2 else side[2]


def _paired(base: Series, var: Series) -> tuple[np.ndarray | None, float]:
    """(per-round log ratios d_r, or None when the steps have no rounds; the unpaired ratio of medians)."""
    a_all, b_all = _values(base), _values(var)
    a_all, b_all = a_all[np.isfinite(a_all)], b_all[np.isfinite(b_all)]
    plain = float(np.median(b_all) / np.median(a_all)) if a_all.size and b_all.size and np.median(a_all) > 0 \
        else np.nan
    ma = base[0].round_medians(base[1], base[2] if base[2].ndim == 2 else base[2][:, None])
    mb = var[0].round_medians(var[1], var[2] if var[2].ndim == 2 else var[2][:, None])
    if ma is None or mb is None:
        return None, plain
    ra, va = ma[0], ma[1][:, base[3] if base[2].ndim == 2 else 0]
    rb, vb = mb[0], mb[1][:, var[3] if var[2].ndim == 2 else 0]
    _, ia, ib = np.intersect1d(ra, rb, assume_unique=True, return_indices=True)
    x, y = va[ia], vb[ib]
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    return np.log(y[ok] / x[ok]), plain


def _test(tests: dict, label: str, view: str, entry: dict[str, Any], suffix: str,
          base: Series | None, var: Series) -> None:
    """Put the row's ratio fields into ``entry`` now (as n/a) and queue its test in ``view``'s family;
    ``_decide`` fills them in once the family's size is known."""
    keys = {f"ratio{suffix}": None, f"ci_low{suffix}": None, f"ci_high{suffix}": None,
            f"verdict{suffix}": "n/a", f"rounds{suffix}": 0}
    entry.update(keys)
    if base is None:
        return
    d, plain = _paired(base, var)
    tests.setdefault((label, view), []).append((entry, d, plain, suffix))


def _decide(tests: dict, margin: float, family_alpha: float, labels: list[str], baseline: str) -> dict[str, Any]:
    """Each family's intervals at confidence 1 − family_alpha / L and the verdicts; returns the rule."""
    rows: dict[str, int] = {}
    per_row: dict[str, float | None] = {}
    need: dict[str, int] = {}
    for (label, view), items in tests.items():
        family = sum(1 for _, d, _, _ in items if d is not None and d.size)
        alpha = family_alpha / max(family, 1)
        if view == "wall":
            rows[label], per_row[label], need[label] = family, 1 - alpha, min_rounds(alpha)
        for entry, d, plain, suffix in items:
            if d is None:   # no rounds: no pairing, no interval
                entry[f"ratio{suffix}"] = _num(plain)
                continue
            if not d.size:
                continue
            med, lo, hi = median_interval(d, alpha)
            entry[f"ratio{suffix}"] = _num(math.exp(med))
            entry[f"rounds{suffix}"] = int(d.size)
            if np.isfinite(lo):
                entry[f"ci_low{suffix}"], entry[f"ci_high{suffix}"] = _num(math.exp(lo)), _num(math.exp(hi))
                entry[f"verdict{suffix}"] = verdict(math.exp(lo), math.exp(hi), margin)
            else:
                entry[f"verdict{suffix}"] = TOO_FEW
    return {"estimator": "exp(median over rounds of ln(variant / baseline)), each side's value in a round the "
                         "median of its steps of that kind in that round",
            "interval": "sign-test (order-statistic) interval of the median over rounds, distribution-free",
            "family": "every step and layer row of one variant, all kinds; the clock-normalized rows a family "
                      "of their own",
            "family_confidence": 1 - family_alpha,
            "rows": {l: rows.get(l, 0) for l in labels if l != baseline},
            "row_confidence": {l: per_row.get(l) for l in labels if l != baseline},
            "min_rounds": {l: need.get(l) for l in labels if l != baseline},
            "margin": margin,
            "verdict": f"faster: interval < {1 - margin:g}; slower: interval > {1 + margin:g}; else within-noise; "
                       f"'{TOO_FEW}': fewer rounds than min_rounds"}


def _kind(groups: dict[tuple[str, str], _Group], labels: list[str], baseline: str, kind: str,
          names: list[str], parents: list[Any], ref: float | None, tests: dict) -> dict[str, Any]:
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
            _test(tests, l, "wall", entry, "", (base, "wall", base.table.wall_ms, 0) if base else None,
                  (x, "wall", wall, 0))
            if ref and base is not None:
                _test(tests, l, "clock", entry, "_clock_normalized", (base, "wall@ref", scaled[baseline][2], 0),
                      (x, "wall@ref", scaled[l][2], 0))
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
                bx = base if base is not None and base.table.hooks_fired.any() \
                    and np.isfinite(base.table.ms[:, i]).any() else None
                _test(tests, l, "wall", entry, "", (bx, "ms", bx.table.ms, i) if bx else None, (x, "ms", x.table.ms, i))
                if ref and bx is not None:
                    _test(tests, l, "clock", entry, "_clock_normalized", (bx, "ms@ref", scaled[baseline][0], i),
                          (x, "ms@ref", scaled[l][0], i))
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
