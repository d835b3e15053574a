"""The background sampler thread over a clock source (engine.core.clocks).

``Sampler`` runs a source on a daemon thread and answers, once per step from the engine's thread,
"what was the clock between these two instants" (``clock_between``; with several GPUs, per device).
All times are ``time.perf_counter_ns`` nanoseconds, the clock the engine stamps steps with.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from llm_moments.engine.core.clock_buffer import ClockBuffer
from llm_moments.engine.core.clocks import (
    ClockSource,
    CpuClockSource,
    MultiClockSource,
    NvmlClockSource,
    UnavailableClockSource,
    make_clock_source,
    make_clock_sources,
)
from llm_moments.engine.errors import MomentsError

__all__ = [
    "MAX_CLOCK_HZ",
    "MAX_UTIL_HZ",
    "MIN_RATE_HZ",
    "ClockSource",
    "CpuClockSource",
    "MultiClockSource",
    "NvmlClockSource",
    "Sampler",
    "UnavailableClockSource",
    "check_rate_hz",
    "make_clock_source",
    "make_clock_sources",
]

# Design §6: NVML calls are slow-ish and serialize with the driver; utilization is itself an
# average over 1/6 s to 1 s, so sampling it faster only repeats numbers.
MAX_CLOCK_HZ = 20.0
MAX_UTIL_HZ = 10.0
MIN_RATE_HZ = 0.1     # one sample every 10 s; lower rates would hold nothing up but the first sample


# -- sampler -------------------------------------------------------------------------------------


def _check_rate(name: str, value: float, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number of Hz in (0, {limit:g}], got {value!r}")
    if not 0 < value <= limit:
        raise ValueError(
            f"{name} must be in (0, {limit:g}] Hz, got {value:g}: NVML serializes with the driver,"
            " so faster sampling costs the model time without adding information"
        )
    return float(value)


def check_rate_hz(name: str, flag: str, value: Any, limit: float) -> None:
    """A user's rate (``--sample-hz`` / ``sample_hz=``) as one clear line: MomentsError, not ValueError."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and MIN_RATE_HZ <= value <= limit
    if not ok:  # NaN fails every comparison
        raise MomentsError(f"{flag} ({name}) must be from {MIN_RATE_HZ:g} to {limit:g} samples per second, "
                           f"not {value!r}")


class Sampler:
    """Reads a clock source on a daemon thread at ``clock_hz``, slow fields at ``util_hz``.

    Each sample is ``{"type": "sample", "t_ns", "source", **fast, **slow}`` with ``t_ns`` in ns
    since ``t0_ns`` (perf_counter_ns). Between slow reads the slow fields repeat their last
    values. Samples go to a bounded history (``history`` entries) and to ``on_sample`` on the
    sampler thread; ``on_status(message)`` is called once per new status (e.g. GPU lost).
    """

    def __init__(
        self,
        source: ClockSource,
        clock_hz: float = 10.0,
        util_hz: float = 5.0,
        on_sample: Callable[[dict[str, Any]], None] | None = None,
        t0_ns: int | None = None,
        history: int = 4096,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.clock_hz = _check_rate("clock_hz", clock_hz, MAX_CLOCK_HZ)
        self.util_hz = _check_rate("util_hz", util_hz, MAX_UTIL_HZ)
        if history < 1:
            raise ValueError(f"history must be at least 1 sample, got {history}")
        self.on_sample = on_sample
        self.on_status = on_status
        self.t0_ns = perf_counter_ns() if t0_ns is None else t0_ns
        self._period_ns = int(1e9 / self.clock_hz)
        self._slow_period_ns = int(1e9 / self.util_hz)
        self._next_slow_ns: int | None = None
        self._slow: dict[str, Any] = {}
        self._fast_keys: tuple[str, ...] = ()
        self._history: deque[dict[str, Any]] = deque(maxlen=history)
        self._buffer = ClockBuffer(self.t0_ns)  # driver-buffered clock samples (engine/core/clock_buffer.py)
        self._lock = threading.Lock()  # history is read from the engine's thread
        self._status: str | None = None
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self.callback_errors = 0  # on_sample / on_status exceptions swallowed so far

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Sampler:
        """Start the thread; returns once the first sample is taken (or after 1 s)."""
        if self._thread is not None:
            if self._stop.is_set():
                raise RuntimeError("a stopped Sampler cannot be restarted; make a new one")
            return self
        self._thread = threading.Thread(target=self._run, name="moments-sampler", daemon=True)
        self._thread.start()
        self._first.wait(timeout=1.0)
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop and join the thread (idempotent, no-op before start). Does not close the source."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout_s)

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._first.set()  # never leave start() waiting

    def _loop(self) -> None:
        next_ns = perf_counter_ns()
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # last resort: a broken source must not end the thread
                self._report(f"sampler tick failed: {exc!r}")
            self._first.set()
            # Absolute schedule so the rate does not drift; after a stall, resume from now
            # instead of bursting to catch up.
            next_ns += self._period_ns
            now = perf_counter_ns()
            if next_ns < now:
                next_ns = now
            if self._stop.wait((next_ns - now) / 1e9):
                break

    # -- one tick ------------------------------------------------------------------------------

    def _tick(self, now_ns: int | None = None) -> dict[str, Any]:
        """Take one sample now (tests pass ``now_ns`` to drive time by hand) and publish it."""
        start = perf_counter_ns() if now_ns is None else now_ns
        fast = self._read(self.source.read_fast, self._fast_keys)
        buffered = self._buffer.take(fast)
        self._fast_keys = tuple(fast)
        # Stamp the middle of the fast read: that is when the clock was seen.
        t_ns = (start + perf_counter_ns()) // 2 if now_ns is None else now_ns
        # Slow fields are due on their own period; a quarter tick of slack keeps jitter from
        # pushing a due read to the next tick.
        if self._next_slow_ns is None or start >= self._next_slow_ns - self._period_ns // 4:
            self._slow = self._read(self.source.read_slow, tuple(self._slow))
            if self._next_slow_ns is None or start - self._next_slow_ns > self._slow_period_ns:
                self._next_slow_ns = start + self._slow_period_ns
            else:
                self._next_slow_ns += self._slow_period_ns
        sample = {"type": "sample", "t_ns": t_ns - self.t0_ns, "source": self.source.name}
        sample.update(fast)
        if buffered is not None:
            sample["clock_buffered"] = buffered
        sample.update(self._slow)
        per_fast = fast.get("devices")
        if per_fast is not None:  # several devices: each one's fast and slow fields together
            per_slow = self._slow.get("devices") or {}
            sample["devices"] = {d: {**f, **(per_slow.get(d) or {})} for d, f in per_fast.items()}
        with self._lock:
            self._history.append(sample)
        if self.on_sample is not None:
            try:
                self.on_sample(sample)
            except Exception:  # a consumer's bug must not stop the clock readings
                self.callback_errors += 1
        self._check_status()
        return sample

    @property
    def buffered(self) -> bool:
        """True once the source has handed over driver-buffered clock samples."""
        return bool(self._buffer)

    def buffered_between(self, t0_ns: int, t1_ns: int, device: str | None = None) -> tuple[float | None, int]:
        """(mean MHz, count) of the driver-buffered clock samples inside [t0_ns, t1_ns]; (None, 0): none."""
        return self._buffer.between(t0_ns, t1_ns, device)

    def _read(self, read: Callable[[], dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
        """``read()``; if it raises anyway, the last known keys as None and a status."""
        try:
            return dict(read())
        except Exception as exc:
            self._report(f"clock source {self.source.name!r} failed: {exc!r}")
            return dict.fromkeys(keys)

    def _check_status(self) -> None:
        status = getattr(self.source, "status", None)
        if status is not None:
            self._report(status)

    def _report(self, message: str) -> None:
        if message == self._status:
            return
        self._status = message
        if self.on_status is not None:
            try:
                self.on_status(message)
            except Exception:
                self.callback_errors += 1

    # -- queries (any thread) ------------------------------------------------------------------

    @property
    def status(self) -> str | None:
        """The last status reported (None if none)."""
        return self._status

    def latest(self) -> dict[str, Any] | None:
        """The newest sample, or None before the first."""
        with self._lock:
            return self._history[-1] if self._history else None

    def samples(self) -> list[dict[str, Any]]:
        """A copy of the history, oldest first."""
        with self._lock:
            return list(self._history)

    def clock_between(self, t0_ns: int, t1_ns: int,
                      device: str | None = None) -> tuple[float | None, int, list[str]]:
        """(clock MHz, samples inside, throttle reasons) for the window [t0_ns, t1_ns].

        Times are ns since this sampler's ``t0_ns``, like sample ``t_ns``. The clock is the mean of
        the driver-buffered clock samples inside the window when there are any (``buffered_between``),
        else the mean ``clock_mhz`` of the polled samples inside, else the nearest polled sample's
        clock (0 inside); reasons are the union over the samples inside, else the nearest one's. Scans
        from the newest end, so a recent step costs a few samples. ``device`` ("cuda:1"): that
        device's fields of a multi-device sample (``devices``); None: the sample's top level.
        """
        buf_mhz, _ = self.buffered_between(t0_ns, t1_ns, device) if self._buffer else (None, 0)
        mhz, count, reasons = self._polled_between(t0_ns, t1_ns, device)
        return (mhz if buf_mhz is None else buf_mhz), count, reasons

    def _polled_between(self, t0_ns: int, t1_ns: int,
                        device: str | None = None) -> tuple[float | None, int, list[str]]:
        inside_mhz: list[float] = []
        reasons: dict[str, None] = {}  # ordered set
        count = 0
        after = before = None
        with self._lock:
            for sample in reversed(self._history):
                t = sample["t_ns"]
                if t > t1_ns:
                    after = sample  # keeps the earliest sample after the window
                    continue
                if t < t0_ns:
                    before = sample  # the latest sample before the window
                    break
                count += 1
                fields = sample if device is None else _device_fields(sample, device)
                if fields.get("clock_mhz") is not None:
                    inside_mhz.append(fields["clock_mhz"])
                reasons.update(dict.fromkeys(fields.get("throttle_reasons") or ()))
        if count:
            mhz = sum(inside_mhz) / len(inside_mhz) if inside_mhz else None
            return mhz, count, list(reasons)
        if before is None and after is None:
            return None, 0, []
        if before is None or (after is not None and after["t_ns"] - t1_ns < t0_ns - before["t_ns"]):
            nearest = after
        else:
            nearest = before
        if device is not None:
            nearest = _device_fields(nearest, device)
        return nearest.get("clock_mhz"), 0, list(nearest.get("throttle_reasons") or ())


    def device_clocks(self, t0: int, t1: int, devs: list[str], entry_device: list[str],
                      top_level_ms: list[float | None], primary_mhz: float | None,
                      throttle: list[str]) -> tuple[dict[str, Any], list[float | None], float | None, list[str]]:
        """Several GPUs: (``devices`` of a step record, each entry's clock, the step's clock, reasons).
        ``top_level_ms``: the step's moments with None for entries that are not top-level.

        Each device's clock in the step comes from its own samples; an entry's clock is its device's.
        The step's ``clock_mhz`` (and so its ``cycles``) is the mean of the devices' clocks weighted by
        the time each was busy with top-level layers (the primary device's clock if none was)."""
        clocks = {d: self.clock_between(t0, t1, d) for d in devs}
        busy = dict.fromkeys(devs, 0.0)
        for ms, d in zip(top_level_ms, entry_device):
            if ms is not None:
                busy[d] += ms
        reasons = dict.fromkeys(throttle)
        per: dict[str, Any] = {}
        for d in devs:
            mhz, n, r = clocks[d]
            reasons.update(dict.fromkeys(r))
            per[d] = {"clock_mhz": None if mhz is None else round(mhz, 1), "clock_samples": n,
                      "throttle_reasons": r, "busy_ms": round(busy[d], 5)}
        weight = sum(busy[d] for d in devs if clocks[d][0])
        if weight > 0:
            step_mhz = sum(busy[d] * clocks[d][0] for d in devs if clocks[d][0]) / weight
        else:
            step_mhz = clocks[devs[0]][0] if clocks[devs[0]][0] else primary_mhz
        layer_clock = [clocks[d][0] for d in entry_device]
        return per, layer_clock, step_mhz, list(reasons)

def _device_fields(sample: dict[str, Any], device: str) -> dict[str, Any]:
    """One device's fields of a multi-device sample (empty when the sample has none for it)."""
    per = sample.get("devices")
    return (per.get(device) if isinstance(per, dict) else None) or {}
