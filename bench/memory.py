"""Peak memory and time of `moments report / export / diff` on a big synthetic recording.

    python bench/memory.py               # 1 000 000 steps (a 0.6 GB recording under /tmp)
    python bench/memory.py --quick       # 100 000 steps
    python bench/memory.py --steps N --keep --only report-text,diff

The recording is written fast from a template string: a header like a real one (16 layers — embeddings,
14 blocks, head — with work coefficients, a roof and a clock), steps with every field (`layer_ms`,
`layer_cycles`, `layer_start_ms`, `layer_calls`, clock, throttle reasons ...; a prefill every 64 steps,
decode otherwise, a few planted slow moments), a clock sample every 10 steps, and a footer. Each
command runs in a subprocess of its own; its peak RSS is that process's (``wait4`` rusage, ru_maxrss)
and its time the wall clock. Outputs go under /tmp and are deleted after (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYERS = ["embed"] + [f"h.{i}" for i in range(14)] + ["head"]


def header() -> dict:
    n = len(LAYERS)
    work = [[1.2e7, 3072.0, 1.4e7, 6144.0, 2048.0, float(name == "head")] for name in LAYERS]
    return {"type": "header", "schema": "moments/1", "started_at": "2025-01-01T00:00:00Z",
            "model": {"name": "bench-synthetic", "architecture": "GPT2LMHeadModel", "parameters": 124_000_000,
                      "dtype": "float32", "random_weights": True, "generative": True},
            "device": {"kind": "cpu", "name": "bench", "torch": "2.13.0"},
            "clock": {"source": "cpu-nominal", "nominal_mhz": 2100.0}, "timer": "perf_counter", "depth": "blocks",
            "layers": [{"name": name, "parent": None} for name in LAYERS[:n]],
            "work": {"columns": ["a", "b", "w", "c", "d", "last_only"], "layers": work},
            "roof": {"peak_flops": 5e11, "peak_bytes_per_s": 2.6e10, "source": "bench"}}


def write_recording(path: Path, steps: int, seed: int = 0) -> int:
    """A synthetic recording of ``steps`` steps; returns its size in bytes."""
    rng = random.Random(seed)
    n = len(LAYERS)
    base = [0.05] + [1.6] * 14 + [0.9]
    # a few hundred distinct layer rows, reused: generation stays fast, values still vary
    rows = []
    for _ in range(512):
        ms = [round(b * rng.lognormvariate(0, 0.08), 5) for b in base]
        starts, t = [], 0.01
        for m in ms:
            starts.append(round(t, 5))
            t += m + 0.002
        cyc = ",".join(str(round(m * 2100e3)) for m in ms)
        rows.append((",".join(map(str, ms)), cyc, ",".join(map(str, starts)), sum(ms) + 0.05 * n))
    calls = ",".join(["1"] * n)
    step_tpl = ('{{"type":"step","index":{i},"kind":"{kind}","t_ns":{t},"wall_ms":{wall:.5f},"tokens":{tok},'
                '"batch":1,"seq_len":{seq},"past_len":{past},"layer_ms":[{ms}],"layer_cycles":[{cyc}],'
                '"layer_start_ms":[{st}],"layer_calls":[' + calls + '],"clock_mhz":2100.0,'
                '"unattributed_ms":0.8,"throttle_reasons":[],"hooks_fired":true}}\n')
    sample_tpl = ('{{"type":"sample","t_ns":{t},"clock_mhz":2100.0,"mem_clock_mhz":null,"util_pct":{u},'
                  '"power_w":null,"temp_c":null,"throttle_reasons":[]}}\n')
    t = 1_000_000
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(header(), separators=(",", ":")) + "\n")
        buf = []
        for i in range(steps):
            ms, cyc, st, wall = rows[rng.randrange(len(rows))]
            prefill = i % 64 == 0
            past = i % 64
            if i % 9973 == 5000:  # a planted slow moment now and then
                parts = ms.split(",")
                parts[7] = str(float(parts[7]) * 8)
                ms, wall = ",".join(parts), wall + 7 * float(parts[7]) / 8
            if prefill:
                wall *= 4
            buf.append(step_tpl.format(i=i, kind="prefill" if prefill else "decode", t=t, wall=wall,
                                       tok=32 if prefill else 1, seq=32 if prefill else 1,
                                       past=0 if prefill else 31 + past,
                                       ms=ms, cyc=cyc, st=st))
            if i % 10 == 0:
                buf.append(sample_tpl.format(t=t + 500, u=rng.randrange(50, 100)))
            t += int(wall * 1e6) + 20_000
            if len(buf) >= 4096:
                fh.write("".join(buf))
                buf.clear()
        fh.write("".join(buf))
        fh.write(json.dumps({"type": "footer", "steps": steps, "reason": "completed"}) + "\n")
    return path.stat().st_size


def run(cmd: list[str]) -> tuple[float, float, int]:
    """(seconds, peak RSS in MiB, exit status) of one command in a subprocess of its own."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code:
        print(f"  {' '.join(cmd[3:])}: exit {code}: {err.strip()[-400:]}", file=sys.stderr)
    return seconds, usage.ru_maxrss / 1024, code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100 000 steps")
    ap.add_argument("--keep", action="store_true", help="keep the recording and the outputs")
    ap.add_argument("--only", default=None, help="comma-separated commands (report-text, report-html, export-csv, "
                                                "export-chrome, export-json, diff)")
    ap.add_argument("--dir", default=None, help="where to write (default: a new folder under /tmp)")
    args = ap.parse_args()
    steps = 100_000 if args.quick else args.steps
    work = Path(args.dir or tempfile.mkdtemp(prefix="moments-bench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    rec = work / "bench.jsonl"
    t0 = time.perf_counter()
    size = write_recording(rec, steps)
    print(f"{steps} steps, {size / 1e6:.0f} MB recording written in {time.perf_counter() - t0:.1f} s ({rec})")
    moments = [sys.executable, "-P", "-m", "llm_moments.engine"]
    cmds = {
        "report-text": ["report", str(rec), "-o", str(work / "r.txt")],
        "report-html": ["report", str(rec), "--format", "html", "-o", str(work / "r.html")],
        "export-csv": ["export", str(rec), "--format", "csv", "-o", str(work / "e.csv")],
        "export-chrome": ["export", str(rec), "--format", "chrome", "-o", str(work / "e.trace.json")],
        "export-json": ["export", str(rec), "--format", "json", "-o", str(work / "e.json")],
        "diff": ["diff", str(rec), str(rec)],
    }
    chosen = args.only.split(",") if args.only else list(cmds)
    base = run([sys.executable, "-P", "-c", "import llm_moments.engine.analysis.report, numpy"])
    print(f"(a Python that imports the analysis: {base[1]:.0f} MiB, {base[0]:.1f} s)")
    print(f"{'command':<16}{'peak RSS MiB':>14}{'seconds':>10}{'output MB':>11}")
    failed = 0
    for name in chosen:
        seconds, rss, code = run(moments + cmds[name])
        out = next((work / cmds[name][i + 1] for i, a in enumerate(cmds[name]) if a == "-o"), None)
        out_mb = f"{out.stat().st_size / 1e6:.0f}" if out is not None and out.exists() else "-"
        print(f"{name:<16}{rss:>14.0f}{seconds:>10.1f}{out_mb:>11}" + ("  FAILED" if code else ""), flush=True)
        failed += bool(code)
        if out is not None and out.exists() and not args.keep:
            out.unlink()
    if not args.keep:
        rec.unlink()
        with contextlib.suppress(OSError):
            work.rmdir()
    print(f"(max RSS of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
