"""Driver-buffered clock samples (NVML's ``nvmlDeviceGetSamples``) kept beside the polled samples.

A clock source's fast read may carry the driver's new SM clock samples under ``BUFFER_KEY`` as
``[(perf_counter_ns, MHz), ...]`` (engine/core/nvml.py puts the driver's µs stamps on that clock). The
sampler moves them out of the sample record (which keeps only how many came, ``clock_buffered``) into a
``ClockBuffer``, where ``between`` answers "the driver's clock inside this step": preferred, where there
is any, to the polled clock.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

BUFFER_KEY = "_clock_buffer"
KEEP = 8192   # samples per device (the driver samples every few ms at most: tens of seconds)


class ClockBuffer:
    """(t_ns since the session's t0, MHz) per device (None: the sample's top level), thread-safe."""

    def __init__(self, t0_ns: int) -> None:
        self.t0_ns = t0_ns
        self._lock = threading.Lock()
        self._per: dict[str | None, deque[tuple[int, float]]] = {}

    def __bool__(self) -> bool:
        return bool(self._per)

    def take(self, fast: dict[str, Any]) -> int | None:
        """Move the buffered samples out of a fast read (and of its ``devices``); how many came for the
        primary device (None when none did)."""
        parts: list[tuple[str | None, Any]] = [(None, fast.pop(BUFFER_KEY, None))]
        per = fast.get("devices")
        if isinstance(per, dict):
            parts += [(d, f.pop(BUFFER_KEY, None)) for d, f in per.items() if isinstance(f, dict)]
        count = None
        for device, samples in parts:
            if not samples:
                continue
            with self._lock:
                buf = self._per.get(device)
                if buf is None:
                    buf = self._per[device] = deque(maxlen=KEEP)
                last = buf[-1][0] if buf else None
                for perf_ns, mhz in samples:
                    t = int(perf_ns) - self.t0_ns
                    if last is None or t > last:  # a sample seen before is never counted twice
                        buf.append((t, float(mhz)))
                        last = t
            if device is None:
                count = len(samples)
        return count

    def between(self, t0_ns: int, t1_ns: int, device: str | None = None) -> tuple[float | None, int]:
        """(mean MHz, count) of the samples inside [t0_ns, t1_ns]; (None, 0) when there are none."""
        with self._lock:
            buf = self._per.get(device)
            if not buf:
                return None, 0
            total, n = 0.0, 0
            for t, mhz in reversed(buf):
                if t > t1_ns:
                    continue
                if t < t0_ns:
                    break
                total += mhz
                n += 1
        return (total / n if n else None), n
