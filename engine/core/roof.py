"""The machine's roof: peak compute (FLOP/s) and memory bandwidth (B/s) of the device in use.

Measured by a short calibration (a large matmul and a large copy, a second or two), cached per
device in ~/.cache/llm-moments, with datasheet figures for known GPUs beside it as a cross-check.
Placing moments on the roofline is analysis (engine.analysis.roofline.place): attainable =
min(peak_flops, intensity × bandwidth).
On a GPU the compute roof moves with the SM clock (peak × clock / max clock); bandwidth does not.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where a device is measured: place() and datasheet() need numpy only
    import torch

# Dense bf16/fp16 tensor-core FLOP/s and HBM/GDDR bandwidth (B/s) from the vendors' datasheets.
DATASHEET = {
    "H200": (989e12, 4.8e12),
    "H100 SXM": (989e12, 3.35e12),
    "H100 NVL": (835e12, 3.9e12),
    "H100 PCIe": (756e12, 2.0e12),
    "H100": (989e12, 3.35e12),
    "A100-SXM4-80GB": (312e12, 2.039e12),
    "A100 80GB PCIe": (312e12, 1.935e12),
    "A100": (312e12, 1.555e12),
    "L40S": (362e12, 0.864e12),
    "L40": (181e12, 0.864e12),
    "L4": (121e12, 0.3e12),
    "A10G": (70e12, 0.6e12),
    "A10": (125e12, 0.6e12),
    "RTX 4090": (165e12, 1.008e12),
    "T4": (65e12, 0.32e12),
    "V100": (125e12, 0.9e12),
}


def datasheet(device_name: str | None) -> dict[str, float] | None:
    if not device_name:
        return None
    for key, (flops, bw) in DATASHEET.items():  # most specific keys first
        if key.lower() in device_name.lower():
            return {"peak_flops": flops, "peak_bytes_per_s": bw, "source": f"datasheet ({key})"}
    return None


def _cache_path(key: str) -> Path:
    # XDG: an empty or relative XDG_CACHE_HOME is ignored.
    xdg = os.environ.get("XDG_CACHE_HOME") or ""
    base = (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "llm-moments"
    return base / f"roof-{key}.json"


def device_key(device: torch.device, dtype: torch.dtype) -> str:
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        name = f"{name}-{torch.get_num_threads()}threads"
    return "".join(ch if ch.isalnum() else "_" for ch in f"{device.type}-{name}-{dtype!s}")


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calibrate(device: torch.device, dtype: torch.dtype, budget_s: float = 1.5) -> dict[str, float]:
    """Measure matmul FLOP/s and copy bandwidth on ``device`` within about ``budget_s`` seconds."""
    import torch

    gpu = device.type == "cuda"
    n = 8192 if gpu else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget_s / 2:
        a @ b
        reps += 1
        _sync(device)
    flops = 2.0 * n ** 3 * reps / (time.perf_counter() - t0)
    del a, b
    size = (1 << 30) if gpu else (128 << 20)  # bytes of the source buffer
    src = torch.empty(size // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget_s / 2:
        dst.copy_(src)
        reps += 1
        _sync(device)
    bandwidth = 2.0 * size * reps / (time.perf_counter() - t0)  # each copy reads and writes
    return {"peak_flops": flops, "peak_bytes_per_s": bandwidth, "source": "calibrated"}


def machine_roof(device: torch.device, dtype: torch.dtype, calibrate_now: bool = True,
                 refresh: bool = False) -> dict[str, Any]:
    """The roof for the header: measured (cached per device) and the datasheet's, when known."""
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    sheet = datasheet(name)
    measured = None
    path = _cache_path(device_key(device, dtype))
    if not refresh and os.path.isfile(path):  # os.path: False on any OSError (an unreadable folder too)
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):  # ValueError: bad JSON or bad UTF-8
            cached = None
        if _valid_roof(cached):
            measured = {"peak_flops": float(cached["peak_flops"]),
                        "peak_bytes_per_s": float(cached["peak_bytes_per_s"]), "source": "calibrated (cached)"}
    if measured is None and calibrate_now:
        measured = calibrate(device, dtype)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({k: v for k, v in measured.items() if k != "source"}))
        except OSError:
            pass  # a read-only home only costs a calibration next time
    use = measured or sheet
    return {"peak_flops": use["peak_flops"] if use else None,
            "peak_bytes_per_s": use["peak_bytes_per_s"] if use else None,
            "source": use["source"] if use else "unknown",
            "measured": measured, "datasheet": sheet}


def _valid_roof(d: Any) -> bool:
    """A cached measurement we can use: both peaks, finite and positive (else: calibrate again)."""
    if not isinstance(d, dict):
        return False
    try:
        return all(np.isfinite(float(d[k])) and float(d[k]) > 0 for k in ("peak_flops", "peak_bytes_per_s"))
    except (KeyError, TypeError, ValueError):
        return False
