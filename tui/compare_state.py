"""What the compare screen shows, folded from a live ``moments compare``'s records. No Textual import.

The engine child (engine/session/compare_stream.py) does the statistics: its ``compare`` records carry
the rounds done and, every few rounds, the whole analysis (``compare --format json``'s document). This
state keeps the newest of each and turns it into rows for one step kind, raw or clock-normalized, so a
frame costs a dictionary walk, never a statistic. The header gives the variants (label, options,
memory, per-layer timing, notes); steps are counted per variant as they come.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from llm_moments.engine.output.units import si

NO_TIMING = "no per-layer timing"   # engine.analysis.compare's words: a verdict, not a number
TOO_FEW = "too few rounds"
ABSENT = "absent"                   # the variant does not have this layer (--drop-layers)
NO_DATA = ""                        # no figures yet for this variant in this kind
NORMALIZED = "_clock_normalized"    # the analysis' suffix of the clock-normalized fields


@dataclass
class Cell:
    """One variant's figures in one row."""

    p50_ms: float | None = None
    ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    verdict: str = NO_DATA     # faster / slower / within-noise / too few rounds / no per-layer timing / absent / n/a


@dataclass
class Row:
    name: str
    parent: int | None          # None: the step row or a top-level layer
    is_step: bool
    base: Cell                  # the baseline's p50 (no ratio)
    cells: dict[str, Cell]      # non-baseline label → its figures


@dataclass
class VariantLine:
    label: str
    options: str
    baseline: bool
    shown: bool                 # the variant the main screen shows
    memory: str
    per_layer_timing: bool
    notes: list[str]
    steps: int                  # steps seen so far
    output: str                 # its output against the baseline's, in words


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def output_text(o: Any) -> str:
    """A variant's output agreement in words: generated tokens the same as the baseline's (decoders),
    the largest absolute difference of the outputs (encoders)."""
    if not isinstance(o, dict):
        return "—"
    if o.get("measure") == "token_agreement":
        a = _num(o.get("token_agreement"))
        return "—" if a is None else f"{a * 100:.1f} % of {o.get('tokens')} tokens agree"
    parts = []
    d, p = _num(o.get("max_abs_diff_last_hidden")), _num(o.get("max_abs_diff_pooled"))
    if d is not None:
        parts.append(f"max |Δ| last hidden {d:.3g}")
    if p is not None:
        parts.append(f"pooled {p:.3g}")
    return ", ".join(parts) or "—"


@dataclass
class CompareState:
    header: dict[str, Any] | None = None
    labels: list[str] = field(default_factory=list)
    baseline: str | None = None
    info: dict[str, dict[str, Any]] = field(default_factory=dict)   # label → the header's variant entry
    rounds: int = 0                      # rounds the session runs
    rounds_done: int = 0
    order: list[str] = field(default_factory=list)                   # labels in the running round's order
    analysis: dict[str, Any] | None = None
    analysis_round: int | None = None    # rounds done when the analysis was made
    analyses: int = 0                    # analyses received (the rows are rebuilt on a new one)
    final: bool = False                  # the analysis covers every step of the session
    output: dict[str, Any] = field(default_factory=dict)             # label → output agreement
    steps: collections.Counter = field(default_factory=collections.Counter)
    footer: dict[str, Any] | None = None
    kind: str | None = None              # the step kind shown (None: the analysis' primary kind)
    normalized: bool = False             # clock-normalized ratios
    shown: str | None = None             # the variant the main screen shows
    version: int = 0                     # bumps on every change: the screen skips identical frames
    _rows: tuple[Any, list[Row]] | None = None

    # -- reducer ----------------------------------------------------------------------------------
    def apply(self, records: Iterable[dict[str, Any]]) -> int:
        n = 0
        for r in records:
            rtype = r.get("type")
            if rtype == "header":
                self._on_header(r)
            elif rtype == "compare":
                self._on_compare(r)
            elif rtype == "compare_output" and isinstance(r.get("output"), dict):
                self.output = r["output"]
            elif rtype == "step":
                self.steps[str(r.get("variant"))] += 1
            elif rtype == "footer":
                self.footer = r
            else:
                continue
            n += 1
        if n:
            self.version += 1
        return n

    def _on_header(self, h: dict[str, Any]) -> None:
        """A session's header: its variants; what an earlier session showed is forgotten."""
        variants = [v for v in h.get("variants") or [] if isinstance(v, dict)]
        self.header = h
        self.labels = [str(v.get("label")) for v in variants]
        self.info = {str(v.get("label")): v for v in variants}
        cmp = h.get("compare") if isinstance(h.get("compare"), dict) else {}
        base = cmp.get("baseline")
        self.baseline = str(base) if base is not None else (self.labels[0] if self.labels else None)
        self.rounds = int(_num(cmp.get("rounds")) or 0)
        self.rounds_done, self.order = 0, list(self.labels)
        self.analysis = self.analysis_round = self.footer = None
        self.analyses += 1
        self.final = False
        self.output = {}
        self.steps.clear()
        if self.shown not in self.labels:
            self.shown = self.baseline

    def _on_compare(self, r: dict[str, Any]) -> None:
        done, total = _num(r.get("rounds_done")), _num(r.get("rounds"))
        if done is not None:
            self.rounds_done = int(done)
        if total is not None:
            self.rounds = int(total)
        if isinstance(r.get("order"), list):
            self.order = [str(x) for x in r["order"]]
        self.final = bool(r.get("final"))
        if isinstance(r.get("analysis"), dict):
            self.analysis = r["analysis"]
            self.analyses += 1
            self.analysis_round = int(_num(r.get("analysis_round")) or self.rounds_done)
            if isinstance(self.analysis.get("output"), dict):
                self.output = self.analysis["output"]

    # -- settings ---------------------------------------------------------------------------------
    @property
    def kinds(self) -> list[str]:
        """The step kinds of the analysis, primary first (decode, encode, prefill)."""
        by_kind = (self.analysis or {}).get("by_kind")
        return [str(k) for k in by_kind] if isinstance(by_kind, dict) else []

    @property
    def current_kind(self) -> str | None:
        kinds = self.kinds
        if self.kind in kinds:
            return self.kind
        primary = (self.analysis or {}).get("kind")
        return primary if primary in kinds else (kinds[0] if kinds else None)

    def next_kind(self) -> str | None:
        kinds = self.kinds
        if kinds:
            cur = self.current_kind
            self.kind = kinds[(kinds.index(cur) + 1) % len(kinds)] if cur in kinds else kinds[0]
            self.version += 1
        return self.kind

    def toggle_normalized(self) -> bool:
        self.normalized = not self.normalized
        self.version += 1
        return self.normalized

    def next_label(self) -> str | None:
        """The variant after the one the main screen shows (wraps round); the source switches to it."""
        if not self.labels:
            return None
        i = self.labels.index(self.shown) if self.shown in self.labels else -1
        return self.labels[(i + 1) % len(self.labels)]

    # -- views ------------------------------------------------------------------------------------
    @property
    def others(self) -> list[str]:
        return [l for l in self.labels if l != self.baseline]

    def has_normalized(self) -> bool:
        """Whether the analysis has clock-normalized figures (it needs a reference clock)."""
        kind = self.current_kind
        k = ((self.analysis or {}).get("by_kind") or {}).get(kind) or {}
        return any(isinstance(e, dict) and "ratio" + NORMALIZED in e for e in (k.get("step") or {}).values())

    def rows(self) -> list[Row]:
        """The table of the current kind: the step row, then one row per layer, in the header's order."""
        key = (self.analyses, self.current_kind, self.normalized, tuple(self.labels), self.baseline)
        if self._rows is not None and self._rows[0] == key:
            return self._rows[1]
        out: list[Row] = []
        kind = self.current_kind
        k = ((self.analysis or {}).get("by_kind") or {}).get(kind) if kind else None
        if isinstance(k, dict):
            suffix = NORMALIZED if self.normalized else ""
            step = k.get("step") if isinstance(k.get("step"), dict) else {}
            out.append(self._row("step", None, True, step, [], suffix))
            for layer in k.get("layers") or []:
                if not isinstance(layer, dict):
                    continue
                parent = layer.get("parent")
                out.append(self._row(str(layer.get("name")), parent if type(parent) is int else None, False,
                                     layer.get("variants") or {}, layer.get("absent_in") or [], suffix))
        self._rows = (key, out)
        return out

    def _row(self, name: str, parent: int | None, is_step: bool, variants: dict[str, Any],
             absent_in: list[Any], suffix: str) -> Row:
        base_entry = variants.get(self.baseline)
        base = self._cell(base_entry, "", self.baseline in absent_in, ratio=False)
        cells = {label: self._cell(variants.get(label), suffix, label in absent_in) for label in self.others}
        return Row(name, parent, is_step, base, cells)

    @staticmethod
    def _cell(e: Any, suffix: str, absent: bool, ratio: bool = True) -> Cell:
        if absent:
            return Cell(verdict=ABSENT)
        if not isinstance(e, dict):
            return Cell()
        if e.get("verdict") == NO_TIMING:
            return Cell(verdict=NO_TIMING)
        if not ratio:
            return Cell(p50_ms=_num(e.get("p50_ms")))
        verdict = e.get("verdict" + suffix)
        return Cell(_num(e.get("p50_ms")), _num(e.get("ratio" + suffix)), _num(e.get("ci_low" + suffix)),
                    _num(e.get("ci_high" + suffix)), str(verdict) if verdict is not None else "n/a")

    def variant_lines(self) -> list[VariantLine]:
        lines = []
        for label in self.labels:
            v = self.info.get(label) or {}
            own = _num(v.get("own_param_bytes"))
            memory = str(v.get("memory") or "—")
            if own:
                memory += f" ({si(own, 'B')})"
            base = label == self.baseline
            lines.append(VariantLine(
                label=label, options=str(v.get("options") or ""), baseline=base, shown=label == self.shown,
                memory=memory, per_layer_timing=v.get("per_layer_timing") is not False,
                notes=[str(n) for n in v.get("notes") or []], steps=self.steps.get(label, 0),
                output="(baseline)" if base else output_text(self.output.get(label))))
        return lines

    def rounds_text(self) -> str:
        """Rounds done of the session's, or how it ended."""
        if not self.labels:
            return "waiting for the session…"
        if self.footer is not None:
            return f"ended ({self.footer.get('reason')}) after {self.rounds_done} of {self.rounds} rounds"
        if self.rounds and self.rounds_done >= self.rounds:
            return f"{self.rounds_done} of {self.rounds} rounds done"
        return f"round {min(self.rounds_done + 1, self.rounds or 1)} of {self.rounds}"

    def order_text(self) -> str | None:
        """The running round's order (None once no round runs)."""
        if not self.labels or self.footer is not None or (self.rounds and self.rounds_done >= self.rounds):
            return None
        return "this round: " + " → ".join(self.order) + " (ABAB/BABA: the order is reversed every other round)"

    def ratios_text(self) -> str:
        """Which round the ratios are from: the engine redoes them every few rounds."""
        if self.analysis_round is None:
            return "ratios after the first round"
        if self.final:
            return f"final ratios ({self.analysis_round} rounds)"
        return f"ratios as of round {self.analysis_round}"
