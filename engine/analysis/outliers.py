"""Outlier moments in a recording: a moment far above its layer's own rolling median (robust, MAD),
listed with the step, the layer, the time, the clock and the throttle reasons at that moment."""

from __future__ import annotations

from typing import Any

import numpy as np

from llm_moments.engine.analysis.stats import robust_outliers


def find_outliers(header: dict[str, Any], steps: list[dict[str, Any]], window: int = 64, k_mad: float = 5.0,
                  min_history: int = 16, min_excess_ms: float = 0.005) -> list[dict[str, Any]]:
    """Each outlier: step index, kind, layer, ms, the layer's median then, clock MHz, throttle reasons."""
    names = [l["name"] for l in header["layers"]]
    steps = [s for s in steps if len(s.get("layer_ms") or []) == len(names)]
    # Each kind against its own history: a prefill is many times a decode step, and mixing them
    # would flag every prefill of a generative session.
    by_kind: dict[Any, list[int]] = {}
    for pos, s in enumerate(steps):
        by_kind.setdefault(s.get("kind"), []).append(pos)
    found: list[tuple[int, dict[str, Any]]] = []
    for positions in by_kind.values():
        if len(positions) <= min_history:
            continue
        m = np.array([[np.nan if v is None else v for v in steps[p]["layer_ms"]] for p in positions], dtype=float)
        for t in range(min_history, len(positions)):
            history = m[max(0, t - window):t]
            mask = robust_outliers(history, m[t], k_mad=k_mad, min_excess_ms=min_excess_ms)
            if not mask.any():
                continue
            med = np.nanmedian(history[:, mask], axis=0)
            s = steps[positions[t]]
            for j, median in zip(np.flatnonzero(mask), med):
                found.append((positions[t], {
                    "step": s.get("index"), "kind": s.get("kind"), "layer": names[j], "ms": float(m[t, j]),
                    "median_ms": float(median), "clock_mhz": s.get("clock_mhz"),
                    "throttle_reasons": list(s.get("throttle_reasons") or [])}))
    found.sort(key=lambda item: item[0])  # stable: layers keep their order within a step
    return [o for _, o in found]
