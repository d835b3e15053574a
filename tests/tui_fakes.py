"""Synthetic, deterministic records (schema moments/1) and a fake source for the UI's tests.

Nothing here imports torch or loads a model: the UI is driven from records alone, exactly as a
replay would drive it. Imported as a plain module by tests/test_tui_*.py.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Top-level layers and their base moments (ms): distinct, so every sort has one right answer.
BLOCK_LAYERS = [
    ("embed", None, 0.05),
    ("blocks.0", None, 0.80),
    ("blocks.1", None, 1.20),
    ("blocks.2", None, 0.60),
    ("blocks.3", None, 1.00),
    ("norm", None, 0.02),
]
# The same with sub-layers of blocks.0 (index 1): attention and MLP, 0.3 + 0.4 of its 0.8 ms.
SUB_LAYERS = BLOCK_LAYERS + [
    ("blocks.0.attn", 1, 0.30),
    ("blocks.0.mlp", 1, 0.40),
]

STEP_NS = 50_000_000          # a step every 50 ms of session time
GPU_CLOCK_MHZ = 1980.0
CPU_CLOCK_MHZ = 2400.0


def make_header(*, device: str = "cuda", layers: list[tuple[str, int | None, float]] | None = None,
                depth: str = "blocks", random_weights: bool = True, name: str = "tiny-gpt2") -> dict[str, Any]:
    layers = BLOCK_LAYERS if layers is None else layers
    if device == "cuda":
        dev = {"kind": "cuda", "name": "NVIDIA H200", "driver": "550.54", "torch": "2.4.0",
               "transformers": "4.45.0"}
        clock = {"source": "nvml", "sm_clock_max_mhz": GPU_CLOCK_MHZ, "mem_clock_max_mhz": 2619.0,
                 "name": "NVIDIA H200"}
    else:
        dev = {"kind": "cpu", "name": None, "driver": None, "torch": "2.4.0", "transformers": "4.45.0"}
        clock = {"source": "cpu-nominal", "nominal_mhz": CPU_CLOCK_MHZ, "name": "/proc/cpuinfo"}
    return {
        "type": "header", "schema": "moments/1",
        "tool": {"name": "llm-moments", "version": "0.1.0"},
        "started_at": "2024-01-01T00:00:00+00:00",
        "model": {"name": name, "architecture": "GPT2LMHeadModel", "parameters": 124_439_808,
                  "dtype": "float16" if device == "cuda" else "float32", "random_weights": random_weights},
        "device": dev,
        "clock": clock,
        "timer": "cuda-events" if device == "cuda" else "perf_counter",
        "depth": depth,
        "sample_hz": 20, "util_hz": 10, "record_text": False,
        "layers": [{"name": n, "parent": p, "module": "Block"} for n, p, _ in layers],
    }


def layer_ms_for(i: int, layers: list[tuple[str, int | None, float]], kind: str = "decode") -> list[float]:
    """Deterministic moments: each layer's base × a small repeating wobble (× 4 for a prefill)."""
    scale = (4.0 if kind == "prefill" else 1.0) * (1.0 + 0.01 * (i % 5))
    return [round(base * scale, 5) for _, _, base in layers]


def make_step(i: int, *, layers: list[tuple[str, int | None, float]] | None = None, kind: str | None = None,
              clock_mhz: float | None = GPU_CLOCK_MHZ, spike: dict[int, float] | None = None,
              hooks_fired: bool = True, throttle: list[str] | None = None, t0_ns: int = 0,
              layer_ms: list[float | None] | None = None) -> dict[str, Any]:
    layers = BLOCK_LAYERS if layers is None else layers
    kind = kind or ("prefill" if i == 0 else "decode")
    if not hooks_fired:
        ms: list[float | None] = [None] * len(layers)
    elif layer_ms is not None:
        ms = list(layer_ms)
    else:
        ms = list(layer_ms_for(i, layers, kind))
        for j, value in (spike or {}).items():
            ms[j] = value
    top = sum(m for m, (_, p, _) in zip(ms, layers) if m is not None and p is None)
    wall = round((top if hooks_fired else sum(b for _, p, b in layers if p is None)) + 0.1, 5)
    cycles = [None if m is None or not clock_mhz else int(m * clock_mhz * 1e3) for m in ms]
    tokens = 8 if kind == "prefill" else 1
    return {
        "type": "step", "index": i, "kind": kind, "t_ns": t0_ns + i * STEP_NS, "wall_ms": wall,
        "host_ms": wall, "tokens": tokens, "batch": 1, "seq_len": tokens,
        "layer_ms": ms, "layer_cycles": cycles, "clock_mhz": clock_mhz, "clock_samples": 1,
        "cycles": None if not clock_mhz else int(wall * clock_mhz * 1e3),
        "unattributed_ms": round(wall - top, 5) if hooks_fired else None,
        "throttle_reasons": list(throttle or []), "hooks_fired": hooks_fired,
    }


def make_gpu_sample(t_ns: int, *, sm: float = GPU_CLOCK_MHZ, power_w: float | None = 312.5,
                    throttle: list[str] | None = None) -> dict[str, Any]:
    return {"type": "sample", "t_ns": t_ns, "sm_clock_mhz": sm, "mem_clock_mhz": 2619.0,
            "gpu_util_pct": 97.0, "mem_util_pct": 41.0, "power_w": power_w, "temp_c": 54.0,
            "throttle_reasons": list(throttle or []), "clock_mhz": sm}


def make_cpu_sample(t_ns: int, *, mhz: float = CPU_CLOCK_MHZ, util: float = 55.0) -> dict[str, Any]:
    return {"type": "sample", "t_ns": t_ns, "cpu_clock_mhz": mhz, "cpu_util_pct": util,
            "process_cpu_pct": 98.0, "clock_mhz": mhz}


def make_session(n_steps: int = 8, *, device: str = "cuda", layers: list | None = None, footer: bool = True,
                 start: int = 0, header: bool = True, sample_every: int = 1) -> list[dict[str, Any]]:
    """Header, then steps each followed by a clock sample, then (optionally) the footer."""
    layers = BLOCK_LAYERS if layers is None else layers
    out: list[dict[str, Any]] = [make_header(device=device, layers=layers)] if header else []
    clock = GPU_CLOCK_MHZ if device == "cuda" else CPU_CLOCK_MHZ
    for i in range(start, start + n_steps):
        out.append(make_step(i, layers=layers, clock_mhz=clock))
        if sample_every and i % sample_every == 0:
            t = i * STEP_NS + STEP_NS // 2
            # the SM clock wobbles so that the clock panel visibly moves from sample to sample
            out.append(make_gpu_sample(t, sm=GPU_CLOCK_MHZ - 15 * (i % 4)) if device == "cuda"
                       else make_cpu_sample(t, mhz=CPU_CLOCK_MHZ, util=50.0 + i % 7))
    if footer:
        out.append(footer_record(start + n_steps))
    return out


def footer_record(steps: int, reason: str = "completed") -> dict[str, Any]:
    return {"type": "footer", "t_ns": steps * STEP_NS, "steps": steps, "reason": reason}


def write_recording(path: Path, records: Iterable[dict[str, Any]], cut_last: bool = False) -> Path:
    """JSON Lines as the engine writes them; ``cut_last`` leaves the last line half written."""
    lines = [json.dumps(r, separators=(",", ":")) for r in records]
    text = "".join(line + "\n" for line in lines)
    if cut_last:
        last = lines[-1]
        text = "".join(line + "\n" for line in lines[:-1]) + last[: len(last) // 2]
    path.write_text(text, encoding="utf-8")
    return path


def append_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, separators=(",", ":")) + "\n")
        fh.flush()


class FakeSource:
    """The source interface (start / drain / stop / note, mode, can_record, can_seek) fed by the test."""

    def __init__(self, records: Iterable[dict[str, Any]] = (), mode: str = "live", note: str | None = None):
        self.mode = mode
        self.can_record = mode == "live"
        self.can_seek = mode == "replay"
        self.queue: collections.deque[dict[str, Any]] = collections.deque(records)
        self.started = 0
        self.stopped = 0
        self.drains = 0
        self.recording_calls: list[tuple[str, str | None]] = []
        self.paused = False
        self._note = note

    def push(self, *records: dict[str, Any]) -> None:
        self.queue.extend(records)

    def start(self) -> None:
        self.started += 1

    def drain(self) -> list[dict[str, Any]]:
        self.drains += 1
        out = list(self.queue)
        self.queue.clear()
        return out

    def stop(self) -> None:
        self.stopped += 1

    def note(self) -> str | None:
        return self._note

    # live only
    def start_recording(self, path: str) -> str:
        self.recording_calls.append(("start", path))
        return path

    def stop_recording(self) -> None:
        self.recording_calls.append(("stop", None))

    # replay only (the app asks a replay source to pause its playback)
    def toggle_pause(self) -> bool:
        self.paused = not self.paused
        return self.paused


def run(coro) -> Any:
    """Run an async test body (no pytest-asyncio here)."""
    return asyncio.run(coro)


async def settle(pilot, app, frames: int = 1) -> None:
    """Fold what the source has now and let the screen draw it (without waiting for the timer)."""
    for _ in range(frames):
        app.refresh_frame()
        await pilot.pause()


async def wait_for(pilot, predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    """Let the app run (timers, threads) until ``predicate()`` holds; False on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await pilot.pause(step)
    return bool(predicate())


def plain(widget) -> str:
    """The text a Static-based widget shows now."""
    visual = widget.visual
    return getattr(visual, "plain", None) or str(visual)


def capture_notifications(app) -> list[tuple[str, str]]:
    """Wrap ``app.notify``: every (message, severity) the app shows is appended to the list returned."""
    seen: list[tuple[str, str]] = []
    original = app.notify

    def notify(message, *args, **kwargs):
        severity = kwargs.get("severity", args[1] if len(args) > 1 else "information")
        seen.append((str(message), severity))
        return original(message, *args, **kwargs)

    app.notify = notify
    return seen


def table_lines(table) -> list[str]:
    """The layer table's visible lines as plain text (header line first), through its Line API."""
    return [table.render_line(y).text for y in range(table.scrollable_content_region.height)]
