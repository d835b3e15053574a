#!/usr/bin/env python3
"""GPU check of issue #2: the real CUDA-event timer and the real NVML sampler on a decoder preset.

Run on a machine with an NVIDIA GPU and a CUDA build of torch (about 1–3 minutes, capped by
--budget):

    python scripts/gpu_check.py --out gpu_check.md --record gpu_check.jsonl
    python scripts/gpu_check.py --model gpt2-shape --out gpu_check.md

What it does, in one process:

1. a monitored run at blocks depth (recorded with --record): prefill, then decode steps driven by
   hand with the KV cache for --seconds, the cache cropped back every 64 steps and re-prefilled
   every 512 (so the recording has prefill steps too);
2. ABAB / BABA pairs of short decode runs, monitored vs plain (hooks detached), beside an A/A run of
   the same estimator (median of per-pair ratios, as bench/overhead.py) — at blocks depth with the
   same monitor, then at each further --depths with a fresh monitor;
3. a table (stdout, and markdown with --out): NVML call latency per function (median / p99 µs),
   SM clock range seen and max clock, coverage (Σ top-level moments / step time) at blocks depth,
   cycles per decode step, steps measured, decode step p50, monitored / plain ratios.

4. with more than one GPU visible (issue #9 item 5): the same preset, random weights, split over the
   GPUs with accelerate's ``dispatch_model`` (top-level layers in contiguous chunks, tied weights kept
   together), monitored for --multi-seconds of decode: per device its layers, moments, SM clock, busy
   time, the layers marked ``transfer_in``, and the sum check (Σ top-level moments ≤ step wall time,
   coverage, steps where they overlap), beside the synchronized plain step time. With one GPU the
   table says "skipped: one GPU". ``--multi-only`` runs just this part.

Without a CUDA GPU it exits with status 2 and one line on stderr. Without NVML the NVML rows say
n/a. torch.cuda.synchronize is called only around the timed runs of a pair, never in a hook.
Exit status: 0 all sections ran, 1 a section failed (the table still shows the others), 2 no GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/pairs.py (the pair estimator) lives beside scripts/, not in the package
    sys.path.insert(0, str(ROOT))

NO_GPU = "no CUDA GPU visible: run this on a machine with an NVIDIA GPU and a CUDA build of torch"
DEPTHS = ("blocks", "sublayers", "leaves")


# -- arguments ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GPU check of issue #2: CUDA-event timer + NVML sampler on a decoder.")
    p.add_argument("--model", default="tiny-llama",
                   help="decoder preset, local directory or cached Hub id (default tiny-llama)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 / fp16 on GPU), float32, float16, bfloat16")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the continuous monitored run (default 10)")
    p.add_argument("--pairs", type=int, default=300, help="pairs per depth (default 300)")
    p.add_argument("--steps-per-side", type=int, default=2, choices=(1, 2, 3))
    p.add_argument("--depths", default="blocks,sublayers,leaves",
                   help="depths for the monitored / plain ratio, comma-separated; blocks always runs first")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--out", metavar="FILE", help="write the table as markdown")
    p.add_argument("--record", metavar="FILE", help="record the monitored (blocks) run as JSON Lines")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    p.add_argument("--multi-seconds", type=float, default=5.0,
                   help="decode seconds of the multi-GPU part (runs only with more than one GPU; default 5)")
    p.add_argument("--multi-only", action="store_true", help="run only the multi-GPU part")
    p.add_argument("--budget", type=float, default=240.0,
                   help="seconds for the whole check at most; pairs stop early to fit (default 240)")
    # Development only: run the same pipeline on CPU so every non-CUDA line is exercised here.
    p.add_argument("--force-cpu", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dev-clock", default="auto", choices=("auto", "cpu", "nvml", "fake-nvml", "none"),
                   help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    depths = [d.strip() for d in a.depths.split(",") if d.strip()]
    bad = [d for d in depths if d not in DEPTHS]
    if bad:
        p.error(f"--depths: unknown {', '.join(bad)} (use {', '.join(DEPTHS)})")
    a.depths = ["blocks"] + [d for d in DEPTHS if d in depths and d != "blocks"]
    if a.pairs < 1 or a.seconds <= 0 or a.budget <= 0:
        p.error("--pairs, --seconds and --budget must be positive")
    return a


def check_outputs(args: argparse.Namespace) -> str | None:
    """A one-line problem with an output path, found before any GPU work."""
    from llm_moments.engine.core.recording import check_writable
    from llm_moments.engine.errors import MomentsError

    for flag, value in (("--out", args.out), ("--record", args.record), ("--json", args.json)):
        if not value:
            continue
        try:
            check_writable(value)
        except MomentsError as exc:
            return f"{flag}: {exc}"
    return None


# -- a fake NVML binding for --dev-clock fake-nvml (CPU development only) -----------------------------


class _FakeNvmlError(Exception):
    def __init__(self, value: int = 999) -> None:
        super().__init__(value)
        self.value = value


class FakeNvml:
    """Just what engine.nvml calls; the SM clock wanders so the range code has a range to show."""

    NVMLError = _FakeNvmlError
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self) -> None:
        self.n = 0

    def nvmlInit(self): pass
    def nvmlShutdown(self): pass
    def nvmlDeviceGetCount(self): return 1
    def nvmlDeviceGetHandleByIndex(self, i): return ("fake", i)
    def nvmlDeviceGetHandleByUUID(self, u): raise _FakeNvmlError(28)
    def nvmlDeviceGetName(self, h): return "Fake GPU (dev)"
    def nvmlSystemGetDriverVersion(self): return "0.0-fake"
    def nvmlDeviceGetUUID(self, h): return "GPU-00000000-fake"
    def nvmlDeviceGetMaxClockInfo(self, h, kind): return 1980 if kind == 1 else 3201
    def nvmlDeviceGetEnforcedPowerLimit(self, h): return 700_000
    def nvmlDeviceGetPowerUsage(self, h): return 123_456
    def nvmlDeviceGetTemperature(self, h, s): return 41
    def nvmlDeviceGetCurrentClocksEventReasons(self, h): return 0x1 if self.n % 7 else 0x4

    def nvmlDeviceGetClockInfo(self, h, kind):
        self.n += 1
        return 1755 + 15 * (self.n % 16) if kind == 1 else 3201

    def nvmlDeviceGetUtilizationRates(self, h):
        return type("Util", (), {"gpu": 37, "memory": 12})()


def make_source(kind: str, device: Any) -> Any:
    from llm_moments.engine.core.nvml import NvmlUnavailable, open_device
    from llm_moments.engine.core.sampler import NvmlClockSource, UnavailableClockSource, make_clock_source

    if kind == "auto":
        return make_clock_source(str(device))
    if kind == "cpu":
        return make_clock_source("cpu")
    if kind == "nvml":
        return make_clock_source("cuda:0")  # the real binding; on a CPU machine: unavailable
    if kind == "fake-nvml":
        try:
            return NvmlClockSource(open_device(0, binding=FakeNvml()))
        except NvmlUnavailable as exc:
            return UnavailableClockSource(str(exc))
    return UnavailableClockSource("NVML not available: --dev-clock none")


# -- collecting the monitor's records --------------------------------------------------------------


class Collector:
    """A monitor listener (worker thread): keeps step and sample records, tagged with the phase."""

    def __init__(self) -> None:
        self.phase = "warm-up"
        self.steps: list[tuple[str, dict[str, Any]]] = []
        self.samples: list[dict[str, Any]] = []

    def __call__(self, record: dict[str, Any]) -> None:
        kind = record.get("type")
        if kind == "step":
            self.steps.append((self.phase, record))
        elif kind == "sample":
            self.samples.append(record)

    def phase_steps(self, phase: str, kind: str | None = None) -> list[dict[str, Any]]:
        return [s for p, s in self.steps if p == phase and (kind is None or s.get("kind") == kind)]


# -- figures --------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


def nvml_latency(source: Any) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of NVML call latency per function, or ([], reason it is n/a)."""
    device = getattr(source, "device", None)
    latency = getattr(device, "latency_ns", None)
    if not isinstance(latency, dict):
        reason = getattr(source, "status", None) or f"clock source is {getattr(source, 'name', '?')}, not NVML"
        return [], reason
    rows = []
    for name, times in sorted(latency.items(), key=lambda kv: -len(kv[1])):
        if times:
            rows.append({"function": name, "calls_kept": len(times), "median_us": pct(times, 50) / 1e3,
                         "p99_us": pct(times, 99) / 1e3})
    return rows, None if rows else "no NVML call was made"


def clock_figures(samples: list[dict[str, Any]], info: dict[str, Any], source_name: str) -> dict[str, Any]:
    key = "sm_clock_mhz" if any(s.get("sm_clock_mhz") is not None for s in samples) else "clock_mhz"
    clocks = [s[key] for s in samples if s.get(key) is not None]
    mem = [s["mem_clock_mhz"] for s in samples if s.get("mem_clock_mhz") is not None]
    reasons: dict[str, int] = {}
    for s in samples:
        for r in s.get("throttle_reasons") or ():
            reasons[r] = reasons.get(r, 0) + 1
    return {
        "source": source_name, "key": key, "samples": len(samples),
        "min_mhz": min(clocks) if clocks else None, "max_mhz": max(clocks) if clocks else None,
        "median_mhz": pct(clocks, 50),
        "max_clock_mhz": info.get("sm_clock_max_mhz") or info.get("nominal_mhz"),
        "mem_min_mhz": min(mem) if mem else None, "mem_max_mhz": max(mem) if mem else None,
        "mem_max_clock_mhz": info.get("mem_clock_max_mhz"),
        "throttle_reasons": reasons,
        "power_w_max": max((s["power_w"] for s in samples if s.get("power_w") is not None), default=None),
        "temp_c_max": max((s["temp_c"] for s in samples if s.get("temp_c") is not None), default=None),
        "gpu_util_pct_median": pct([s["gpu_util_pct"] for s in samples if s.get("gpu_util_pct") is not None], 50),
    }


def step_figures(steps: list[dict[str, Any]], top: list[bool]) -> dict[str, Any]:
    decode = [s for s in steps if s.get("kind") == "decode"]
    wall = [s["wall_ms"] for s in decode]
    covered, ratios = 0.0, []
    fired = [s for s in decode if s.get("hooks_fired")]
    for s in fired:
        c = sum(ms for ms, t in zip(s["layer_ms"], top) if t and ms is not None)
        covered += c
        if s["wall_ms"] > 0:
            ratios.append(c / s["wall_ms"])
    wall_fired = sum(s["wall_ms"] for s in fired)
    cycles = [s["cycles"] for s in decode if s.get("cycles") is not None]
    return {
        "steps": len(steps), "decode_steps": len(decode),
        "prefill_steps": sum(s.get("kind") == "prefill" for s in steps),
        "steps_without_hooks": len(decode) - len(fired),
        "coverage": covered / wall_fired if wall_fired > 0 else None, "coverage_step_median": pct(ratios, 50),
        "decode_ms_p50": pct(wall, 50), "decode_ms_p99": pct(wall, 99),
        "unattributed_ms_p50": pct([s["unattributed_ms"] for s in fired if s.get("unattributed_ms") is not None], 50),
        "cycles_median": pct(cycles, 50), "cycles_steps": len(cycles),
        "host_ms_p50": pct([s["host_ms"] for s in decode if s.get("host_ms") is not None], 50),
    }


# -- several GPUs (device_map) -------------------------------------------------------------------------

MULTI_SKIPPED = "skipped: one GPU"


def split_device_map(model: Any, n_gpus: int) -> dict[str, int]:
    """A device_map over ``n_gpus``: the top-level layers in contiguous chunks (layer order), every
    tensor of the state dict covered (the rest on GPU 0), tied weights on their first member's GPU."""
    from llm_moments.engine.core.hooks import top_level_layers

    tops, _ = top_level_layers(model)
    names = [n for n, _ in tops]
    dmap = {name: min(n_gpus - 1, i * n_gpus // max(1, len(names))) for i, name in enumerate(names)}

    def key_for(tensor_name: str) -> str | None:
        hits = [k for k in dmap if tensor_name == k or tensor_name.startswith(k + ".")]
        return max(hits, key=len) if hits else None

    for name in model.state_dict():
        if key_for(name) is None:
            dmap[name.rsplit(".", 1)[0] if "." in name else name] = 0
    try:
        from accelerate.utils import find_tied_parameters

        groups = find_tied_parameters(model)
    except Exception:
        groups = []
    for group in groups:
        owner = key_for(group[0])
        for other in group[1:]:
            k = key_for(other)
            if owner is not None and k is not None:
                dmap[k] = dmap[owner]
    return dmap


def multi_gpu_figures(steps: list[dict[str, Any]], header: dict[str, Any]) -> dict[str, Any]:
    """Per device: layers, transfer_in layers, busy / clock medians; the sum check over steps."""
    layers = header["layers"]
    top = [l["parent"] is None for l in layers]
    devices: dict[str, dict[str, Any]] = {}
    for i, l in enumerate(layers):
        d = devices.setdefault(l.get("device") or "?", {"layers": [], "transfer_in": []})
        d["layers"].append(i)
        if l.get("transfer_in"):
            d["transfer_in"].append(l["name"])
    clock_info = (header.get("clock") or {}).get("devices") or {}
    over, ratios = 0, []
    for s in steps:
        c = sum(ms for ms, t in zip(s["layer_ms"], top) if t and ms is not None)
        if s["wall_ms"] > 0:
            ratios.append(c / s["wall_ms"])
        if c > s["wall_ms"] * 1.01:
            over += 1
    for name, d in devices.items():
        per = [s.get("devices", {}).get(name) or {} for s in steps]
        d["busy_ms_p50"] = pct([x["busy_ms"] for x in per if x.get("busy_ms") is not None], 50)
        d["clock_mhz_p50"] = pct([x["clock_mhz"] for x in per if x.get("clock_mhz") is not None], 50)
        d["gpu"] = (clock_info.get(name) or {}).get("name")
        d["moments_ms_p50"] = {
            layers[i]["name"]: pct([s["layer_ms"][i] for s in steps if s["layer_ms"][i] is not None], 50)
            for i in d["layers"] if top[i]}
        cyc = [sum(s["layer_cycles"][i] or 0 for i in d["layers"] if top[i]) for s in steps]
        d["cycles_p50"] = pct(cyc, 50)
    return {
        "devices": devices, "steps": len(steps),
        "wall_ms_p50": pct([s["wall_ms"] for s in steps], 50),
        "host_ms_p50": pct([s["host_ms"] for s in steps if s.get("host_ms") is not None], 50),
        "coverage_p50": pct(ratios, 50), "coverage_max": max(ratios) if ratios else None,
        "steps_sum_over_wall": over,
        "clock_mhz_p50": pct([s["clock_mhz"] for s in steps if s.get("clock_mhz") is not None], 50),
    }


def run_multi_gpu(args: argparse.Namespace, report: dict[str, Any], deadline: float) -> None:
    """Part 4: a device_map over every visible GPU (only with more than one)."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() and not args.force_cpu else 0
    if n < 2:
        report["multi_gpu"] = {"skipped": f"{MULTI_SKIPPED} ({n} visible)"}
        progress(f"multi-GPU part: {MULTI_SKIPPED} ({n} visible)")
        return
    from accelerate import dispatch_model

    from bench.pairs import Config, Decoder, ratio_stats, run_rounds
    from llm_moments.engine.session.models import load_model
    from llm_moments.engine.session.monitor import Monitor

    progress(f"multi-GPU part: {args.model} over {n} GPUs ...")
    loaded = load_model(args.model, "cpu", "bfloat16" if args.dtype == "auto" else args.dtype)
    model = loaded.model.eval()
    dmap = split_device_map(model, n)
    model = dispatch_model(model, device_map=dmap)

    def sync() -> None:
        for k in range(n):
            torch.cuda.synchronize(k)

    collector = Collector()
    mon = Monitor(model, depth="blocks", model_info=loaded.info, listeners=[collector],
                  run_info={"tool": "scripts/gpu_check.py", "part": "multi-gpu"})
    mon.start()
    try:
        out: dict[str, Any] = {"gpus": n, "device_map": {k: v for k, v in dmap.items()},
                               "timer": type(mon.timer).__name__, "timer_devices": list(mon.devices_in_use),
                               "clock_source": getattr(mon.clock_source, "name", "?")}
        dec = Decoder(model, "cuda:0", prompt_len=args.prompt_len)
        with torch.inference_mode():
            dec.prefill()
            for _ in range(20):
                dec.step()
            dec.reset()
            sync()
            mon.flush()
            collector.phase = "multi"
            t_end = time.monotonic() + min(args.multi_seconds, max(1.0, deadline - time.monotonic() - 20))
            k = 0
            while k < 50 or time.monotonic() < t_end:
                dec.step()
                k += 1
                if k % 64 == 0:
                    dec.reset()
                if k >= 50 and time.monotonic() > deadline - 15:
                    break
            sync()
            mon.flush()
            collector.phase = "multi-pairs"
            out.update(multi_gpu_figures(collector.phase_steps("multi", "decode"), mon.header))
            # monitored / plain with every GPU synchronized around each side (a short ABAB run)
            mon.hooks.detach()
            cfg = Config("blocks", enable=mon.hooks.attach, disable=lambda: (mon.hooks.detach(), mon.flush()),
                         modules=len(mon.layers))
            dec.prefill()
            dec.reset()
            run_rounds([cfg, Config("A/A")], dec, rounds=40, k=2, sync=sync, warmup_rounds=3,
                       deadline=min(deadline - 10, time.monotonic() + 20))
            out["ratio"] = ratio_stats(cfg.ratios)
            out["plain_step_ms"] = (pct(cfg.plain_ns, 50) / 2 / 1e6) if cfg.plain_ns else None
        report["multi_gpu"] = out
    finally:
        mon.stop()
        report["statuses"] += mon.statuses


def render_multi(m: dict[str, Any] | None, row: Any) -> None:
    if m is None:
        row("multi-GPU (device_map)", "n/a (section failed)")
        return
    if m.get("skipped"):
        row("multi-GPU (device_map)", m["skipped"])
        return
    row("multi-GPU (device_map)", f"{m['gpus']} GPUs, timer {m['timer']} on {', '.join(m['timer_devices'])}, "
        f"clock {m['clock_source']}; {m['steps']} decode steps")
    for name, d in m["devices"].items():
        moments = ", ".join(f"{k} {f(v, '.3f')}" for k, v in d["moments_ms_p50"].items())
        row(f"  {name} ({d.get('gpu') or '?'})",
            f"busy p50 {f(d['busy_ms_p50'], '.3f', ' ms')}, SM clock p50 {f(d['clock_mhz_p50'], '.0f', ' MHz')}, "
            f"cycles p50 {f(d['cycles_p50'], ',.0f')}; transfer_in: {', '.join(d['transfer_in']) or 'none'}; "
            f"moments p50 (ms): {moments}")
    row("  sum check", f"Σ top-level moments / wall: p50 {f(m['coverage_p50'], '.3f')}, "
        f"max {f(m['coverage_max'], '.3f')}; steps with Σ > wall + 1 %: {m['steps_sum_over_wall']} of "
        f"{m['steps']}; wall p50 "
        f"{f(m['wall_ms_p50'], '.3f', ' ms')} (host p50 {f(m['host_ms_p50'], '.3f', ' ms')}, plain synchronized "
        f"{f(m.get('plain_step_ms'), '.3f', ' ms')}); step clock p50 {f(m['clock_mhz_p50'], '.0f', ' MHz')}")
    st = m.get("ratio") or {}
    row("  monitored / plain (multi-GPU, blocks)", f"{f(st.get('median'), '.4f')} over {st.get('pairs', 0)} pairs")


# -- table ----------------------------------------------------------------------------------------


def f(x: Any, spec: str = ".1f", unit: str = "") -> str:
    if x is None:
        return "n/a"
    return f"{format(x, spec)}{unit}"


def render_markdown(r: dict[str, Any]) -> str:
    meta = r["meta"]
    lines = [f"### llm-moments GPU check — {meta['device_name']}", ""]
    if meta.get("dev_run"):
        lines += ["**development run on CPU (--force-cpu): CPU timer and CPU/fake clock, not a GPU result**", ""]
    lines += ["| check | value |", "|---|---|"]

    def row(k: str, v: str) -> None:
        lines.append(f"| {k} | {v.replace('|', '/')} |")

    row("device", f"{meta['device_name']}; driver {meta.get('driver') or 'n/a'}; torch {meta['torch']}"
        f" (CUDA {meta.get('cuda') or 'n/a'}); transformers {meta['transformers']}")
    row("model", f"{meta['model']} ({meta['architecture']}, {meta['parameters'] / 1e6:.1f} M parameters, "
        f"{meta['dtype']}, {'random' if meta.get('random_weights') else 'real'} weights), batch 1, "
        f"prompt {meta['prompt_len']} tokens")
    row("timer / clock source", f"{meta.get('timer', 'n/a')} / {meta['clock_source']}"
        + (f" ({meta['clock_status']})" if meta.get("clock_status") else ""))
    lat = r.get("nvml_latency")
    if lat is None:
        row("NVML call latency", "n/a (section failed)")
    elif not lat["rows"]:
        row("NVML call latency", f"n/a ({lat['reason']})")
    else:
        for x in lat["rows"]:
            row(f"NVML {x['function']}", f"median {x['median_us']:.1f} µs, p99 {x['p99_us']:.1f} µs "
                f"({x['calls_kept']} calls kept)")
    c = r.get("clock")
    if c is None:
        row("clock seen", "n/a (section failed)")
    else:
        label = "SM clock seen" if c["key"] == "sm_clock_mhz" else f"clock seen ({c['source']})"
        if c["min_mhz"] is None:
            row(label, f"n/a ({c['samples']} samples, none with a clock)")
        else:
            row(label, f"{c['min_mhz']:.0f}–{c['max_mhz']:.0f} MHz (median {c['median_mhz']:.0f}) over "
                f"{c['samples']} samples; max clock {f(c['max_clock_mhz'], '.0f', ' MHz')}")
        if c["mem_min_mhz"] is not None:
            row("memory clock seen", f"{c['mem_min_mhz']:.0f}–{c['mem_max_mhz']:.0f} MHz; max "
                f"{f(c['mem_max_clock_mhz'], '.0f', ' MHz')}")
        reasons = ", ".join(f"{k} ({v})" for k, v in c["throttle_reasons"].items()) or "none"
        row("clock event reasons seen (samples)", reasons)
        if c["power_w_max"] is not None or c["temp_c_max"] is not None:
            row("power / temperature max", f"{f(c['power_w_max'], '.0f', ' W')} / {f(c['temp_c_max'], '.0f', ' °C')};"
                f" GPU util median {f(c['gpu_util_pct_median'], '.0f', ' %')}")
    s = r.get("steps")
    if s is None:
        row("continuous monitored run", "n/a (section failed)")
    else:
        row("steps measured (continuous run)",
            f"{s['steps']} ({s['decode_steps']} decode, {s['prefill_steps']} prefill)"
            f" in {meta.get('run_s', 0):.1f} s" + (f"; {s['steps_without_hooks']} decode steps WITHOUT layer timing"
                                                   if s["steps_without_hooks"] else ""))
        row("coverage at blocks depth", f"{f(s['coverage'], '.3f')} (Σ top-level moments / step time; per-step median "
            f"{f(s['coverage_step_median'], '.3f')}; unattributed p50 {f(s['unattributed_ms_p50'], '.3f', ' ms')})")
        row("cycles per decode step", f"{f(s['cycles_median'], ',.0f')} (median over {s['cycles_steps']} steps)")
        row("decode step p50", f"{f(s['decode_ms_p50'], '.3f', ' ms')} on the timer's timeline (p99 "
            f"{f(s['decode_ms_p99'], '.3f', ' ms')}); host p50 {f(s['host_ms_p50'], '.3f', ' ms')}")
    for o in r.get("overhead", []):
        if o.get("error"):
            row(f"monitored / plain ({o['depth']})", f"n/a ({o['error']})")
            continue
        st, aa = o["stats"], o["aa"]
        row(f"monitored / plain ({o['depth']}, {o['hooked']} layers)",
            f"{f(st['median'], '.4f')} (p25–p75 {f(st['p25'], '.4f')}–{f(st['p75'], '.4f')}; {st['pairs']} pairs of "
            f"{meta['steps_per_side']} steps; A/A {f(aa['median'], '.4f')}); "
            f"{f(o['us_per_module'], '.2f', ' µs')}/layer;"
            f" plain step p50 {f(o['plain_step_ms'], '.3f', ' ms')} (host, synchronized)"
            + (" — stopped early (budget)" if o.get("stopped_early") else ""))
    render_multi(r.get("multi_gpu"), row)
    if r.get("statuses"):
        row("monitor statuses", "; ".join(dict.fromkeys(r["statuses"])))
    if r.get("errors"):
        row("ERRORS", "; ".join(r["errors"]))
    lines.append("")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


def progress(message: str) -> None:
    sys.stderr.write(f"[gpu_check] {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError as exc:
        sys.stderr.write(f"cannot import torch ({exc}): run `make setup` or install the project first\n")
        return 1

    if not args.force_cpu and not torch.cuda.is_available():
        sys.stderr.write(NO_GPU + "\n")
        return 2
    t_start = time.monotonic()
    # the multi-GPU part (several GPUs only) keeps its share of the budget from the single-GPU part
    multi_reserve = 45.0 if not args.force_cpu and torch.cuda.device_count() > 1 else 0.0
    deadline = t_start + args.budget - multi_reserve

    try:
        import numpy as np

        from bench.pairs import Config, Decoder, make_sync, ratio_stats, run_rounds
        from llm_moments.engine.errors import MomentsError
        from llm_moments.engine.session.models import load_model
        from llm_moments.engine.session.monitor import Monitor
    except ImportError as exc:
        sys.stderr.write(f"missing a dependency ({exc}): run `make setup` or `pip install -e .` first\n")
        return 1
    problem = check_outputs(args)
    if problem:
        sys.stderr.write(problem + "\n")
        return 1

    report: dict[str, Any] = {"errors": [], "statuses": [], "overhead": []}

    @contextlib.contextmanager
    def section(name: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # one failed section must not lose the others' figures
            report["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
            progress(f"{name} FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)

    if args.multi_only:
        with section("multi-GPU"):
            run_multi_gpu(args, report, deadline + multi_reserve)
        lines = ["### llm-moments GPU check — multi-GPU part", "", "| check | value |", "|---|---|"]
        render_multi(report.get("multi_gpu"), lambda k, v: lines.append(f"| {k} | {v.replace('|', '/')} |"))
        if report["statuses"]:
            lines.append(f"| monitor statuses | {'; '.join(dict.fromkeys(report['statuses']))} |")
        if report["errors"]:
            lines.append(f"| ERRORS | {'; '.join(report['errors'])} |")
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out:
            Path(args.out).expanduser().write_text(text, encoding="utf-8")
        if args.json:
            Path(args.json).expanduser().write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
        return 1 if report["errors"] else 0

    device = "cpu" if args.force_cpu else "cuda"
    progress(f"loading {args.model} on {device} ...")
    try:
        loaded = load_model(args.model, device, args.dtype)
    except MomentsError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    if not loaded.generative:
        sys.stderr.write(f"{args.model} is not a decoder (no KV-cache decode): pick a decoder preset such as "
                         "tiny-llama or gpt2-shape\n")
        return 1
    model, dev = loaded.model, loaded.device
    sync = make_sync(dev)
    clock_kind = args.dev_clock if args.dev_clock != "auto" or not args.force_cpu else "cpu"
    source = make_source(clock_kind, dev)
    try:
        import transformers

        tf_version = transformers.__version__
    except Exception:
        tf_version = None
    meta: dict[str, Any] = {
        "dev_run": args.force_cpu, "model": args.model, "architecture": loaded.info.get("architecture"),
        "parameters": loaded.info.get("parameters") or 0, "dtype": loaded.info.get("dtype"),
        "random_weights": loaded.info.get("random_weights"), "prompt_len": args.prompt_len,
        "steps_per_side": args.steps_per_side, "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": tf_version, "python": platform.python_version(), "host": platform.node(),
        "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                        else f"CPU ({platform.processor() or 'cpu'})"),
        "clock_source": getattr(source, "name", "?"), "clock_status": getattr(source, "status", None),
    }
    info: dict[str, Any] = {}
    with section("clock info"):
        info = source.info() or {}
        meta["driver"] = info.get("driver_version")

    collector = Collector()
    dec = Decoder(model, dev, prompt_len=args.prompt_len)

    # 1. continuous monitored run at blocks depth (recorded), then its pairs
    mon = None
    with section("continuous monitored run"):
        mon = Monitor(model, depth="blocks", record=args.record, clock_source=source, model_info=loaded.info,
                      listeners=[collector], run_info={"tool": "scripts/gpu_check.py", "seconds": args.seconds})
        mon.start()
        meta["timer"] = mon.timer.kind + (" events" if mon.timer.kind == "cuda" else " perf_counter_ns")
        top = [layer.parent is None for layer in mon.layers]
        with torch.inference_mode():
            dec.prefill()
            for _ in range(20):  # warm-up: kernels chosen, event pool grown
                dec.step()
            dec.reset()
            sync()
            mon.flush()
            collector.phase = "run"
            progress(f"continuous monitored run, {args.seconds:.0f} s ...")
            run_deadline = time.monotonic() + min(args.seconds, max(1.0, (deadline - time.monotonic()) * 0.3))
            n = 0
            t0 = time.perf_counter()
            while n < 200 or time.monotonic() < run_deadline:
                dec.step()
                n += 1
                if n % 512 == 0:
                    dec.prefill()  # a fresh cache: a prefill step in the recording
                elif n % 64 == 0:
                    dec.reset()
                if n >= 200 and time.monotonic() > deadline - 30:
                    break
            sync()
            meta["run_s"] = time.perf_counter() - t0
            mon.flush()
            collector.phase = "pairs-blocks"
        report["steps"] = step_figures(collector.phase_steps("run"), top)

    # 2. pairs: monitored vs plain, blocks first (same monitor), then the other depths
    def pairs_for(depth: str, monitor: Monitor, phases_left: int) -> None:
        monitor.hooks.detach()
        cfg = Config(depth, enable=monitor.hooks.attach,
                     disable=lambda: (monitor.hooks.detach(), monitor.flush()), modules=len(monitor.layers))
        aa = Config("A/A")
        left = deadline - time.monotonic() - 10
        phase_deadline = time.monotonic() + max(5.0, left / max(1, phases_left))
        progress(f"pairs at {depth} depth: up to {args.pairs} rounds ...")
        with torch.inference_mode():
            dec.prefill()
            dec.reset()
            done = run_rounds([cfg, aa], dec, rounds=args.pairs, k=args.steps_per_side, sync=sync,
                              warmup_rounds=5, deadline=phase_deadline)
        plain_step_ns = float(np.median(cfg.plain_ns)) / args.steps_per_side if cfg.plain_ns else None
        st = ratio_stats(cfg.ratios)
        per_module = None
        if st["median"] is not None and plain_step_ns:
            per_module = (st["median"] - 1) * plain_step_ns / 1e3 / len(monitor.layers)
        report["overhead"].append({
            "depth": depth, "hooked": len(monitor.layers), "stats": st, "aa": ratio_stats(aa.ratios),
            "plain_step_ms": None if plain_step_ns is None else plain_step_ns / 1e6, "us_per_module": per_module,
            "stopped_early": done < args.pairs, "ratios": cfg.ratios, "aa_ratios": aa.ratios,
        })

    phases = len(args.depths)
    if mon is not None and mon.started:
        with section("pairs blocks"):
            try:
                pairs_for("blocks", mon, phases)
            except Exception as exc:
                report["overhead"].append({"depth": "blocks", "error": f"{type(exc).__name__}: {exc}"})
                raise
    if mon is not None:
        with section("stop blocks monitor"):
            mon.stop()
            report["statuses"] += mon.statuses
    for i, depth in enumerate(args.depths[1:], start=1):
        if time.monotonic() > deadline - 15:
            report["overhead"].append({"depth": depth, "error": "skipped: out of --budget"})
            continue
        with section(f"pairs {depth}"):
            other = Monitor(model, depth=depth, record=None, clock_source=source, model_info=loaded.info,
                            listeners=[collector])
            other.start()
            try:
                collector.phase = f"pairs-{depth}"
                pairs_for(depth, other, phases - i)
            except Exception as exc:
                report["overhead"].append({"depth": depth, "error": f"{type(exc).__name__}: {exc}"})
                raise
            finally:
                other.stop()
                report["statuses"] += other.statuses

    # 4. several GPUs: a device_map over all of them (says "skipped: one GPU" otherwise)
    with section("multi-GPU"):
        run_multi_gpu(args, report, deadline + multi_reserve)

    # 3. figures that need the whole session
    with section("NVML latency"):
        rows, reason = nvml_latency(source)
        report["nvml_latency"] = {"rows": rows, "reason": reason}
    with section("clock figures"):
        report["clock"] = clock_figures(collector.samples, info, getattr(source, "name", "?"))
    with section("close clock source"):
        source.close()
    meta["total_s"] = time.monotonic() - t_start
    report["meta"] = meta

    try:
        text = render_markdown(report)
    except Exception as exc:  # never lose the figures to a formatting bug: fall back to JSON
        traceback.print_exc(file=sys.stderr)
        report["errors"].append(f"render: {type(exc).__name__}: {exc}")
        text = "```json\n" + json.dumps(report, indent=1, default=str) + "\n```\n"
    print(text)
    if args.out:
        Path(args.out).expanduser().write_text(text, encoding="utf-8")
        progress(f"wrote {args.out}")
    if args.record and mon is not None:
        progress(f"recording: {args.record}")
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
        progress(f"wrote {args.json}")
    failed = f", {len(report['errors'])} section(s) failed" if report["errors"] else ""
    progress(f"done in {meta['total_s']:.0f} s" + failed)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
