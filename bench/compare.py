#!/usr/bin/env python3
"""Does ``moments compare`` cost anything beyond the monitor's own? (issue #10, performance clause)

Whole sessions, the CLI's own code paths, same model and options (tiny-gpt2 random weights, one
torch thread, no calibration, a few new tokens per text, depth blocks, recording on):

* A = ``moments run --headless --steps R·T --record FA``: one ordinary Monitor.
* B = ``moments compare --headless --rounds R --variant 'a:' --variant 'b:' --record FB``: two
  identical variants of the one loaded model object (one Monitor, its records forwarded by the
  session: tagged with variant / round, layer arrays remapped, written by the session).

A runs the same texts as B's baseline ``a`` (run loops the built-in texts in order; compare's round r
runs text r), so A's decode steps and ``a``'s are the same work. Per pair, the decode-step p50 of
B's ``a`` steps over A's (each read back from its recording), in AB order on even rounds and BA on
odd ones; beside it the A/A pair (two ordinary runs, X/Y with X first on even rounds) through the
same estimator, so the noise between whole sessions is on the table next to the effect. Pairs of a
round run in a shuffled order. Inside each B: ``b``'s decode p50 over ``a``'s (the same model object,
so ≈ 1) and the compare's own verdict for it. Median of per-pair ratios, bootstrap 95 % CI and the
sign-test (order-statistic) interval of the median (bench/pairs.py, engine/analysis/compare.py).

Second, the direct cost of the forwarding: ``CompareSession._take`` (per record, on the monitor's
worker thread, off the timed path) wrapped with perf_counter_ns in a short compare session, split
into the write to the recording (an ordinary run's monitor does that write itself) and the rest.

    .venv/bin/python bench/compare.py                 # 20 rounds of 4 sessions, ~4 min on 2 cores
    .venv/bin/python bench/compare.py --quick         # 4 rounds, ~40 s
    .venv/bin/python bench/compare.py --subprocess --pairs 8   # each session its own process, ~4.5 min

Sessions run in this process by default (``llm_moments.engine.cli.main`` with stdout and stderr
discarded): the same code as the command line after argument parsing, without 5 s of interpreter and
torch start-up per session; ``--subprocess`` pays that to isolate every session in its own process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
from pairs import note, ratio_stats  # noqa: E402

from llm_moments.engine.analysis.compare import analyze_compare, median_interval, sign_rank  # noqa: E402
from llm_moments.engine.core.recording import load  # noqa: E402

# -- one session -------------------------------------------------------------------------------------


def common_options(a: argparse.Namespace, path: Path) -> list[str]:
    return ["--headless", "--model", a.model, "--threads", str(a.threads), "--no-calibrate",
            "--max-new-tokens", str(a.tokens), "--record", str(path), "--force"]


def argv_for(kind: str, a: argparse.Namespace, path: Path, rounds: int | None = None) -> list[str]:
    rounds = a.rounds if rounds is None else rounds
    if kind == "A":
        return ["run", *common_options(a, path), "--steps", str(rounds * a.tokens)]
    return ["compare", *common_options(a, path), "--rounds", str(rounds), "--variant", "a:", "--variant", "b:"]


def run_cli(argv: list[str], in_subprocess: bool) -> float:
    """Run one whole session; its wall seconds. A failed session is an error (its stderr shown)."""
    t0 = time.perf_counter()
    if in_subprocess:
        proc = subprocess.run([sys.executable, "-m", "llm_moments.engine", *argv], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rc, err = proc.returncode, proc.stderr
    else:
        from llm_moments.engine.cli import main

        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
                contextlib.redirect_stderr(null):
            try:
                rc = main(argv)
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
        err = ""
    if rc != 0:
        raise SystemExit(f"bench/compare.py: session failed (exit {rc}): moments {' '.join(argv)}\n{err}")
    return time.perf_counter() - t0


def decode_p50(steps: list[dict[str, Any]], variant: str | None = None) -> tuple[float, int]:
    wall = [s["wall_ms"] for s in steps if s.get("kind") == "decode"
            and (variant is None or s.get("variant") == variant) and isinstance(s.get("wall_ms"), (int, float))]
    if not wall:
        raise SystemExit(f"bench/compare.py: no decode steps{f' of variant {variant}' if variant else ''}")
    return float(np.median(wall)), len(wall)


def read_session(kind: str, path: Path) -> dict[str, Any]:
    rec = load(path)
    if rec.footer is None or rec.footer.get("reason") != "completed":
        raise SystemExit(f"bench/compare.py: {path.name}: the session did not complete ({rec.warnings})")
    out: dict[str, Any] = {"kind": kind, "steps": len(rec.steps)}
    if kind == "A":
        out["p50_ms"], out["decode_steps"] = decode_p50(rec.steps)
        return out
    out["p50_ms"], out["decode_steps"] = decode_p50(rec.steps, "a")
    out["b_p50_ms"], _ = decode_p50(rec.steps, "b")
    b = analyze_compare(rec.header, rec.steps).kinds["decode"]["step"]["b"]
    out["compare_b"] = {k: b.get(k) for k in ("ratio", "ci_low", "ci_high", "verdict")}
    return out


def session(kind: str, a: argparse.Namespace, tmp: Path, tag: str) -> dict[str, Any]:
    path = tmp / f"{tag}-{kind}.jsonl"
    load1 = os.getloadavg()[0]
    wall_s = run_cli(argv_for(kind, a, path), a.subprocess)
    out = read_session(kind, path)
    out.update(wall_s=round(wall_s, 2), load1=load1)
    path.unlink()
    return out


# -- the pairs ---------------------------------------------------------------------------------------


def interval(r: list[float]) -> dict[str, Any]:
    """Median of per-pair ratios: bootstrap 95 % CI (pairs.ratio_stats) and the sign-test interval."""
    st = ratio_stats(r)
    d = np.asarray(r, dtype=np.float64)
    _, lo, hi = median_interval(d, 0.05)
    k = sign_rank(d.size, 0.05)
    conf = None
    if k >= 1:
        n = d.size
        tail = sum(math.comb(n, i) for i in range(k)) / 2 ** n
        conf = 1 - 2 * tail
    st["sign_ci"] = None if not np.isfinite(lo) else [lo, hi]
    st["sign_conf"] = conf
    st["min"], st["max"] = (float(d.min()), float(d.max())) if d.size else (None, None)
    return st


def run_pairs(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    rng = random.Random(a.seed)
    note("warm-up: one ordinary run and one compare, not counted")
    for kind in ("A", "B"):
        session(kind, a, tmp, "warm")
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for r in range(a.pairs):
        first = r % 2 == 0
        pairs = ["compare", "aa"]
        rng.shuffle(pairs)
        row: dict[str, Any] = {"round": r, "order": {}}
        for name in pairs:
            if name == "compare":
                order = ("A", "B") if first else ("B", "A")
                got = {k: session(k, a, tmp, f"r{r}") for k in order}
                row["A"], row["B"] = got["A"], got["B"]
                row["ratio_B_A"] = got["B"]["p50_ms"] / got["A"]["p50_ms"]
                row["ratio_b_a"] = got["B"]["b_p50_ms"] / got["B"]["p50_ms"]
            else:
                order = ("X", "Y") if first else ("Y", "X")
                got = {k: session("A", a, tmp, f"r{r}{k}") for k in order}
                row["X"], row["Y"] = got["X"], got["Y"]
                row["ratio_aa"] = got["X"]["p50_ms"] / got["Y"]["p50_ms"]
            row["order"][name] = "".join(order)
        rows.append(row)
        elapsed = time.monotonic() - t0
        note(f"round {r + 1}/{a.pairs}: B/A {row['ratio_B_A']:.4f}  A/A {row['ratio_aa']:.4f}  "
             f"b/a {row['ratio_b_a']:.4f}  (A p50 {row['A']['p50_ms']:.2f} ms; {elapsed:.0f} s, "
             f"~{elapsed / (r + 1) * (a.pairs - r - 1):.0f} s left; load {os.getloadavg()[0]:.2f})")
    verdicts = [row["B"]["compare_b"]["verdict"] for row in rows]
    return {
        "rounds": rows,
        "B_over_A": interval([row["ratio_B_A"] for row in rows]),
        "A_over_A": interval([row["ratio_aa"] for row in rows]),
        "b_over_a": interval([row["ratio_b_a"] for row in rows]),
        "compare_b_verdicts": {v: verdicts.count(v) for v in sorted(set(verdicts))},
        "A_p50_ms": float(np.median([row["A"]["p50_ms"] for row in rows])),
        "B_a_p50_ms": float(np.median([row["B"]["p50_ms"] for row in rows])),
        "decode_steps_A": rows[0]["A"]["decode_steps"], "decode_steps_B_a": rows[0]["B"]["decode_steps"],
        "session_s": {k: float(np.median([row[k]["wall_s"] for row in rows])) for k in ("A", "B")},
    }


# -- the forwarding's own cost -----------------------------------------------------------------------


def forwarding_cost(a: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Wrap CompareSession._take (and, inside it, _write) with perf_counter_ns for one short compare
    session in this process; per record type: calls and ns."""
    from llm_moments.engine.session.compare import CompareSession

    take, write = CompareSession._take, CompareSession._write
    took: dict[str, list[int]] = {}
    wrote: dict[str, list[int]] = {}

    def timed_take(self: Any, k: int, rec: dict) -> None:
        t0 = time.perf_counter_ns()
        take(self, k, rec)
        took.setdefault(str(rec.get("type")), []).append(time.perf_counter_ns() - t0)

    def timed_write(self: Any, rec: dict) -> None:
        t0 = time.perf_counter_ns()
        write(self, rec)
        wrote.setdefault(str(rec.get("type")), []).append(time.perf_counter_ns() - t0)

    path = tmp / "take-B.jsonl"
    CompareSession._take, CompareSession._write = timed_take, timed_write
    try:
        run_cli(argv_for("B", a, path, a.take_rounds), in_subprocess=False)
    finally:
        CompareSession._take, CompareSession._write = take, write
    rec = load(path)
    p50, _ = decode_p50(rec.steps)
    path.unlink()
    t = np.asarray(took.get("step", []), dtype=np.float64) / 1e3
    w = np.asarray(wrote.get("step", []), dtype=np.float64) / 1e3
    if t.size == 0:
        raise SystemExit("bench/compare.py: CompareSession._take saw no step records")
    n = min(t.size, w.size)   # each forwarded step is written once (the header's write is not a step)
    rest = t[:n] - w[:n]
    out = {"step_records": int(t.size), "decode_p50_ms": p50,
           "take_us_p50": float(np.median(t)), "take_us_mean": float(t.mean()),
           "take_us_p99": float(np.percentile(t, 99)),
           "write_us_p50": float(np.median(w)) if w.size else None,
           "forward_only_us_p50": float(np.median(rest)) if n else None,
           "other_records": {k: len(v) for k, v in took.items() if k != "step"},
           "other_us_total": float(sum(sum(v) for k, v in took.items() if k != "step") / 1e3)}
    out["take_pct_of_step"] = 100 * out["take_us_mean"] / 1e3 / p50
    out["forward_only_pct_of_step"] = (100 * out["forward_only_us_p50"] / 1e3 / p50) if n else None
    return out


# -- output ------------------------------------------------------------------------------------------


def fmt_ratio(st: dict[str, Any]) -> tuple[str, str, str]:
    med = f"{st['median']:.4f}" if st.get("median") is not None else "—"
    ci = st.get("ci95")
    boot = f"{ci[0]:.4f} – {ci[1]:.4f}" if ci else "—"
    sc = st.get("sign_ci")
    sign = f"{sc[0]:.4f} – {sc[1]:.4f} ({100 * st['sign_conf']:.1f} %)" if sc else "— (too few pairs)"
    return med, boot, sign


def render(doc: dict[str, Any]) -> str:
    p, f, c = doc["pairs"], doc["forwarding"], doc["config"]
    lines = [
        f"moments compare vs moments run — {c['model']}, --threads {c['threads']} --no-calibrate, "
        f"{c['tokens']} new tokens × {c['rounds']} texts per session ({p['decode_steps_A']} decode steps "
        f"of A, {p['decode_steps_B_a']} of B's baseline), {len(p['rounds'])} rounds, "
        f"sessions {'in subprocesses' if c['subprocess'] else 'in this process'}",
        f"decode step p50: A {p['A_p50_ms']:.2f} ms, B's a {p['B_a_p50_ms']:.2f} ms (medians over sessions); "
        f"session wall: A {p['session_s']['A']:.1f} s, B {p['session_s']['B']:.1f} s",
        "",
        "| ratio of decode-step p50 | pairs | median | bootstrap 95 % CI | sign-test interval (conf.) | min – max |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in (("B (compare, variant a) / A (run)", "B_over_A"),
                       ("A/A: run / run", "A_over_A"),
                       ("in-compare A/A: b / a (same object)", "b_over_a")):
        st = p[key]
        med, boot, sign = fmt_ratio(st)
        lines.append(f"| {label} | {st['pairs']} | {med} | {boot} | {sign} | {st['min']:.4f} – {st['max']:.4f} |")
    v = ", ".join(f"{k} {n}" for k, n in p["compare_b_verdicts"].items())
    lines += [f"the compare's own decode-step verdict for b (one per B session): {v}", ""]
    lines += [
        "| forwarding (CompareSession._take, per step record) | value |",
        "|---|---|",
        f"| _take, p50 / mean / p99 | {f['take_us_p50']:.1f} / {f['take_us_mean']:.1f} / {f['take_us_p99']:.1f} µs |",
        f"| of which the recording write (_write), p50 | {f['write_us_p50']:.1f} µs |",
        f"| tagging + layer remap (_take − _write), p50 | {f['forward_only_us_p50']:.1f} µs |",
        f"| share of a decode step ({f['decode_p50_ms']:.2f} ms): _take mean / remap only | "
        f"{f['take_pct_of_step']:.3f} % / {f['forward_only_pct_of_step']:.3f} % |",
        f"| step records timed | {f['step_records']} |",
        "",
        "_take runs on the monitor's worker thread, off the timed path (not inside any step's span); "
        "it can only reach a step by holding the GIL while the model runs.",
        f"load average (1 min): {doc['load_before']:.2f} before, {doc['load_after']:.2f} after "
        f"(sessions saw {doc['load_min']:.2f} – {doc['load_max']:.2f}); {doc['cores']} cores; "
        f"run time {doc['run_s']:.0f} s",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 rounds of 8-text sessions: a smoke run of ~40 s")
    p.add_argument("--pairs", type=int, default=None, help="rounds (pairs of each kind); default 20, --quick 4")
    p.add_argument("--rounds", type=int, default=None,
                   help="texts per session (compare --rounds; run --steps rounds × tokens); default 16, --quick 8")
    p.add_argument("--tokens", type=int, default=8, help="--max-new-tokens per text (default 8)")
    p.add_argument("--take-rounds", type=int, default=None, help="rounds of the _take session (default 16)")
    p.add_argument("--model", default="tiny-gpt2", help="preset (default tiny-gpt2, random weights)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--subprocess", action="store_true", help="run each session in its own Python process")
    p.add_argument("--json", metavar="FILE", help="also write the table's numbers and every session as JSON")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.pairs = a.pairs or (4 if a.quick else 20)
    a.rounds = a.rounds or (8 if a.quick else 16)
    a.take_rounds = a.take_rounds or (8 if a.quick else 16)
    if min(a.pairs, a.rounds, a.tokens, a.take_rounds, a.threads) < 1 or a.tokens < 2:
        p.error("--pairs, --rounds, --take-rounds and --threads must be ≥ 1, --tokens ≥ 2 (a decode step)")
    if a.json and not Path(a.json).expanduser().resolve().parent.is_dir():
        p.error(f"--json: no folder {Path(a.json).expanduser().resolve().parent}")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="moments-bench-compare-") as d:
        tmp = Path(d)
        pairs = run_pairs(a, tmp)
        note(f"forwarding cost: one compare of {a.take_rounds} rounds with CompareSession._take timed")
        fwd = forwarding_cost(a, tmp)
    loads = [row[k]["load1"] for row in pairs["rounds"] for k in ("A", "B", "X", "Y")]
    doc = {"config": {"model": a.model, "threads": a.threads, "tokens": a.tokens, "rounds": a.rounds,
                      "pairs": a.pairs, "take_rounds": a.take_rounds, "subprocess": a.subprocess,
                      "seed": a.seed, "quick": a.quick, "argv": sys.argv[1:] if argv is None else argv,
                      "session_A": argv_for("A", a, Path("FA")), "session_B": argv_for("B", a, Path("FB"))},
           "pairs": pairs, "forwarding": fwd, "cores": os.cpu_count(), "python": platform.python_version(),
           "load_before": load_before, "load_after": os.getloadavg()[0],
           "load_min": min(loads), "load_max": max(loads), "run_s": time.monotonic() - t0}
    print(render(doc))
    if a.json:
        Path(a.json).expanduser().write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        note(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
