"""What a session says about itself: the model, the device and the header record.

Pure description, read once when a monitor starts: nothing here runs on the hot path.
"""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llm_moments.engine import __version__
from llm_moments.engine.analysis.stats import Summary
from llm_moments.engine.core import dist as _dist
from llm_moments.engine.core.recording import SCHEMA
from llm_moments.engine.core.work_model import work_header
from llm_moments.engine.output.text import render_text


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        if p.device.type == "meta":  # weights offloaded by accelerate: where it computes
            return _dist.execution_device(model) or torch.device("cpu")
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def default_model_info(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    dtype = next((p.dtype for p in model.parameters()), None)
    return {
        "name": getattr(config, "_name_or_path", None) or type(model).__name__,
        "source": "python",
        "architecture": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "random_weights": None,  # unknown: the caller built the model
        "generative": _can_generate(model),
    }


def _can_generate(model: nn.Module) -> bool:
    can = getattr(model, "can_generate", None)
    try:
        return bool(can()) if callable(can) else False
    except Exception:
        return False


def device_info(device: torch.device) -> dict[str, Any]:
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = None
    info = {"kind": device.type, "index": device.index, "name": None, "driver": None,
            "torch": torch.__version__, "transformers": tf_version, "cuda": torch.version.cuda,
            "host": platform.node(), "python": platform.python_version()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    return info


def build_header(mon: Any, source: Any) -> dict[str, Any]:
    """The session's header record (design §4, §10): what every later record is read against."""
    try:
        clock_info = source.info() or {}
    except Exception:
        clock_info = {}
    return {
        "type": "header", "schema": SCHEMA,
        "tool": {"name": "llm-moments", "version": __version__},
        "started_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "model": mon.model_info,
        "device": device_info(mon.device),
        "clock": {"source": getattr(source, "name", "unavailable"), **clock_info},
        "timer": "cuda-events" if mon.timer.kind == "cuda" else "perf_counter",
        "depth": mon.depth,
        # How calls become moments (hooks.py): each call counts to the entry whose parent is the
        # innermost open entry; other calls are nested (layer_nested_calls), their time in the
        # enclosing layer's moment. Top-level moments never overlap; Σ children ≤ parent.
        "attribution": "enclosing",
        "sample_hz": mon.sample_hz, "util_hz": mon.util_hz,
        "record_text": mon.record_text,
        "run": mon.run_info,
        "layers": _header_layers(mon),
        "work": work_header(mon.model, mon.layers, mon.generative),
        "roof": mon._roof(),
        # a record's wall time = clock_origin.time_ns + t_ns (t_ns counts from perf_counter_ns)
        "clock_origin": dict(mon.clock_origin),
        # the monitor's own cost estimated at start (engine/core/overhead.py); ``overhead`` records
        # say what was measured while the session ran
        "overhead": getattr(mon, "overhead", None),
        **_dist_header(mon),
    }

def _header_layers(mon: Any) -> list[dict[str, Any]]:
    out = []
    for l, place in zip(mon.layers, mon.placement):
        entry = {"name": l.name, "parent": l.parent,
                 "module": "(synthetic)" if l.synthetic else type(l.module).__name__}
        if mon.sharded:
            entry.update(place)
        if l.synthetic:
            entry["synthetic"] = True
        out.append(entry)
    return out

def _dist_header(mon: Any) -> dict[str, Any]:
    """``dist`` under torch.distributed with several ranks; ``sharding`` whenever an engine split the model."""
    size = mon.world[1] if mon.world else 1
    engine = mon.engine
    out: dict[str, Any] = {}
    if engine is not None:
        sharding: dict[str, Any] = {"engine": engine}
        dmap = getattr(mon.model, "hf_device_map", None)
        if isinstance(dmap, dict):
            sharding["device_map"] = {str(k): str(v) for k, v in dmap.items()}
        offloaded = sorted({p["offload"] for p in mon.placement if p["offload"]})
        if offloaded:
            sharding["offload"] = offloaded
        out["sharding"] = sharding
    if mon.multi_rank:
        out["dist"] = {**_dist.rank_info(), "layout": _dist.parallel_layout(mon.model, mon.rank, size),
                       "engine": engine, "session": mon.session_id}
    return out


@dataclass
class SessionSummary(Summary):
    """A session's ``Summary`` that prints as the CLI's table (the header names model and device)."""

    header: dict[str, Any] | None = None

    def __str__(self) -> str:
        return render_text(self, self.header)
