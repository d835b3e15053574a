"""Clock sources and the background sampler thread.

A clock source reads the processor clock used for cycles (``clock_mhz``) plus a few related fields.
``read_fast`` is cheap and runs every tick (clocks, throttle reasons); ``read_slow`` runs at the
utilization rate (utilization, power, temperature). Sources never raise from reads: a field the
device does not support is None, a problem is a one-line ``status``.

Several GPUs (a ``device_map`` model): ``MultiClockSource`` reads one source per device in one tick (the
NVML calls of all devices run one after another on the sampler's one thread, never at once; the tick
rate stays ≤ 20 Hz, so each GPU is asked at most that often). A sample then carries the first
device's fields at top level, exactly as a one-GPU sample, plus ``devices: {"cuda:0": {...},
"cuda:1": {...}}`` with every device's fields; ``clock_between(t0, t1, device)`` reads one of them.

``Sampler`` runs a source on a daemon thread and answers, once per step from the engine's thread,
"what was the clock between these two instants" (``clock_between``). All times are
``time.perf_counter_ns`` nanoseconds, the clock the engine stamps steps with.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import platform
import threading
from collections import deque
from time import perf_counter_ns
from typing import Any, Callable, Protocol, runtime_checkable

import psutil

from llm_moments.engine.core.nvml import NvmlDevice, NvmlUnavailable, open_device

__all__ = [
    "ClockSource",
    "NvmlClockSource",
    "CpuClockSource",
    "UnavailableClockSource",
    "MultiClockSource",
    "make_clock_source",
    "make_clock_sources",
    "Sampler",
    "MAX_CLOCK_HZ",
    "MAX_UTIL_HZ",
]

# Design §6: NVML calls are slow-ish and serialize with the driver; utilization is itself an
# average over 1/6 s to 1 s, so sampling it faster only repeats numbers.
MAX_CLOCK_HZ = 20.0
MAX_UTIL_HZ = 10.0

_NVML_FAST_KEYS = ("sm_clock_mhz", "mem_clock_mhz", "throttle_reasons", "clock_mhz")
_NVML_SLOW_KEYS = ("gpu_util_pct", "mem_util_pct", "power_w", "temp_c")
_CPU_FAST_KEYS = ("cpu_clock_mhz", "clock_mhz")
_CPU_SLOW_KEYS = ("cpu_util_pct", "process_cpu_pct")


# -- sources -------------------------------------------------------------------------------------


@runtime_checkable
class ClockSource(Protocol):
    """What the sampler reads: NVML on a GPU, the CPU clock on CPU, or nothing (``unavailable``)."""

    name: str  # recorded as the clock's source: "nvml", "cpufreq", "cpu-nominal", "unavailable"

    def info(self) -> dict[str, Any]:
        """Static facts read once: device name, max clocks (MHz), how the clock is known."""
        ...

    def read_fast(self) -> dict[str, Any]:
        """Cheap fields read every tick: ``clock_mhz`` (used for cycles) and related clocks. Never raises."""
        ...

    def read_slow(self) -> dict[str, Any]:
        """Fields read at the utilization rate: utilization %, power W, temperature C. Never raises."""
        ...

    @property
    def status(self) -> str | None:
        """One line on why the source is degraded (GPU lost, no clock), else None."""
        ...

    def close(self) -> None: ...


class NvmlClockSource:
    """GPU clocks through NVML; ``clock_mhz`` is the SM clock (the one cycles are counted in)."""

    name = "nvml"

    def __init__(self, device: NvmlDevice) -> None:
        self.device = device

    def info(self) -> dict[str, Any]:
        """The device's info: name, driver_version, uuid, max clocks (MHz), power_limit_w."""
        return self.device.info()

    def read_fast(self) -> dict[str, Any]:
        """sm_clock_mhz, mem_clock_mhz, throttle_reasons, clock_mhz (= sm_clock_mhz)."""
        fields = self.device.read_clocks()
        fields["clock_mhz"] = fields["sm_clock_mhz"]
        return fields

    def read_slow(self) -> dict[str, Any]:
        """gpu_util_pct, mem_util_pct (%), power_w (W), temp_c (degrees C)."""
        return self.device.read_util()

    @property
    def status(self) -> str | None:
        """None while healthy, else one line (e.g. "GPU lost: ...")."""
        return self.device.status

    def close(self) -> None:
        self.device.close()


class UnavailableClockSource:
    """Stands in when no clock can be read: every field None, ``status`` says why."""

    name = "unavailable"

    def __init__(
        self, status: str, fast_keys: tuple[str, ...] = ("clock_mhz",), slow_keys=()
    ) -> None:
        self._status = status
        self._fast_keys = tuple(fast_keys)
        self._slow_keys = tuple(slow_keys)

    def info(self) -> dict[str, Any]:
        return {"name": None, "status": self._status}

    def read_fast(self) -> dict[str, Any]:
        return dict.fromkeys(self._fast_keys)

    def read_slow(self) -> dict[str, Any]:
        return dict.fromkeys(self._slow_keys)

    @property
    def status(self) -> str | None:
        return self._status

    def close(self) -> None:
        pass


class MultiClockSource:
    """Several GPUs read in one tick: one source per device, the first (the model's primary device) first.

    ``read_fast`` / ``read_slow`` return the first device's fields at top level (a one-GPU reader sees
    the sample it always saw) plus ``devices``: {device: that device's fields}. A source that raises
    gives its device's last known fields as None (sources should not raise: this is a backstop).
    ``status``: the first device's status that is not None, prefixed with its device.
    """

    def __init__(self, sources: dict[str, ClockSource]) -> None:
        if not sources:
            raise ValueError("MultiClockSource needs at least one device's source")
        self.sources = dict(sources)
        self.primary = next(iter(self.sources))
        first = self.sources[self.primary]
        self.name = getattr(first, "name", "unavailable")
        self._keys: dict[tuple[str, str], tuple[str, ...]] = {}

    @property
    def devices(self) -> list[str]:
        return list(self.sources)

    @property
    def device(self) -> Any:
        """The primary source's NVML device (for its call latencies), if it has one."""
        return getattr(self.sources[self.primary], "device", None)

    def info(self) -> dict[str, Any]:
        per: dict[str, Any] = {}
        for dev, src in self.sources.items():
            try:
                per[dev] = {"source": getattr(src, "name", "unavailable"), **(src.info() or {})}
            except Exception as exc:
                per[dev] = {"source": getattr(src, "name", "unavailable"), "status": f"info failed: {exc!r}"}
        out = {k: v for k, v in per[self.primary].items() if k != "source"}
        out["devices"] = per
        return out

    def _each(self, what: str) -> dict[str, Any]:
        per: dict[str, dict[str, Any]] = {}
        for dev, src in self.sources.items():
            try:
                fields = dict(getattr(src, what)())
                self._keys[(dev, what)] = tuple(fields)
            except Exception:
                fields = dict.fromkeys(self._keys.get((dev, what), ()))
            per[dev] = fields
        out = dict(per[self.primary])
        out["devices"] = per
        return out

    def read_fast(self) -> dict[str, Any]:
        return self._each("read_fast")

    def read_slow(self) -> dict[str, Any]:
        return self._each("read_slow")

    @property
    def status(self) -> str | None:
        for dev, src in self.sources.items():
            st = getattr(src, "status", None)
            if st:
                return st if len(self.sources) == 1 else f"{dev}: {st}"
        return None

    def close(self) -> None:
        for src in self.sources.values():
            with contextlib.suppress(Exception):
                src.close()


def _cpuinfo(proc_root: str) -> tuple[str | None, float | None]:
    """(model name, mean "cpu MHz" over cores) from /proc/cpuinfo; None where absent."""
    model, mhz = None, []
    try:
        with open(os.path.join(proc_root, "cpuinfo"), encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    continue
                key, value = key.strip(), value.strip()
                if key == "model name" and model is None:
                    model = value
                elif key == "cpu MHz":
                    try:
                        mhz.append(float(value))
                    except ValueError:
                        pass
    except OSError:
        pass
    return model, (sum(mhz) / len(mhz) if mhz else None)


class CpuClockSource:
    """CPU clock: live from cpufreq when the kernel exposes it, else a nominal MHz read once.

    ``name`` says which: "cpufreq" (mean of scaling_cur_freq over cores, read each tick),
    "cpu-nominal" (/proc/cpuinfo "cpu MHz" or psutil, read once at construction: on machines
    without cpufreq it is all there is, and re-reading it would only cost time), or
    "unavailable" (clock None). ``proc_root`` / ``sys_root`` let tests point at fake trees.
    """

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys") -> None:
        pattern = os.path.join(sys_root, "devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")
        self._freq_files = sorted(glob.glob(pattern))
        self._model, cpuinfo_mhz = _cpuinfo(proc_root)
        self.nominal_mhz: float | None = cpuinfo_mhz
        self._nominal_from = "/proc/cpuinfo" if cpuinfo_mhz is not None else None
        if self.nominal_mhz is None:
            freq = _psutil_freq()
            if freq:
                self.nominal_mhz, self._nominal_from = freq, "psutil"
        if self._freq_files and self._read_cpufreq() is not None:
            self.name = "cpufreq"
        elif self.nominal_mhz is not None:
            self.name = "cpu-nominal"
        else:
            self.name = "unavailable"
        self._process = psutil.Process()
        # psutil's percentages compare with the previous call; prime them so the first is real.
        psutil.cpu_percent(None)
        self._process.cpu_percent(None)

    def _read_cpufreq(self) -> float | None:
        khz = []
        for path in self._freq_files:
            try:
                with open(path, encoding="ascii") as f:
                    khz.append(int(f.read().strip()))
            except (OSError, ValueError):  # a core went offline: skip it
                continue
        return sum(khz) / len(khz) / 1000.0 if khz else None

    @property
    def status(self) -> str | None:
        if self.name == "unavailable":
            return "CPU clock not available: no cpufreq, no 'cpu MHz' in /proc/cpuinfo, no psutil"
        return None

    def info(self) -> dict[str, Any]:
        """name (CPU model), cores, nominal_mhz (MHz or None), clock_from (where it came from)."""
        return {
            "name": self._model or platform.processor() or None,
            "cores": os.cpu_count(),
            "nominal_mhz": self.nominal_mhz,
            "clock_from": "cpufreq" if self.name == "cpufreq" else self._nominal_from,
        }

    def read_fast(self) -> dict[str, Any]:
        """cpu_clock_mhz and clock_mhz (the same, MHz)."""
        mhz = self._read_cpufreq() if self.name == "cpufreq" else self.nominal_mhz
        return {"cpu_clock_mhz": mhz, "clock_mhz": mhz}

    def read_slow(self) -> dict[str, Any]:
        """cpu_util_pct (whole machine) and process_cpu_pct (this process, can exceed 100), %."""
        try:
            return {
                "cpu_util_pct": psutil.cpu_percent(None),
                "process_cpu_pct": self._process.cpu_percent(None),
            }
        except Exception:  # psutil can fail on exotic systems; never stop sampling for it
            return dict.fromkeys(_CPU_SLOW_KEYS)

    def close(self) -> None:
        pass


def _psutil_freq() -> float | None:
    try:
        freq = psutil.cpu_freq()
    except Exception:
        return None
    if freq is None:
        return None
    return float(freq.current or freq.max or 0) or None


def _cuda_uuid(index: int) -> str | None:
    """The NVML-style UUID ("GPU-...") of torch's CUDA device ``index``, if torch can tell."""
    try:
        import torch  # noqa: PLC0415 - only needed for GPU sessions

        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    except Exception:
        return None
    if uuid is None:
        return None
    text = str(uuid)
    # torch prints the bare UUID; NVML wants it prefixed (MIG devices already carry "MIG-").
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def make_clock_source(device: str) -> ClockSource:
    """A clock source for ``device`` ("cpu", "cuda", "cuda:N"). Never raises.

    On CUDA the NVML device is found by the CUDA device's UUID when torch reports one (indices
    differ under CUDA_VISIBLE_DEVICES), else by index N. Without NVML the source is an
    ``UnavailableClockSource`` whose ``status`` is the reason.
    """
    text = str(device).strip().lower()
    if text == "cpu":
        return CpuClockSource()
    kind, _, idx = text.partition(":")
    if kind != "cuda":
        return UnavailableClockSource(f"no clock source for device {device!r}")
    try:
        index = int(idx) if idx else 0
    except ValueError:
        return UnavailableClockSource(f"no clock source for device {device!r}")
    try:
        nvml = open_device(index=index, uuid=_cuda_uuid(index))
    except NvmlUnavailable as exc:
        return UnavailableClockSource(str(exc), _NVML_FAST_KEYS, _NVML_SLOW_KEYS)
    return NvmlClockSource(nvml)


def make_clock_sources(devices: list[str]) -> ClockSource:
    """One source for ``devices[0]``, or a ``MultiClockSource`` over each (several GPUs). Never raises."""
    devices = list(dict.fromkeys(str(d) for d in devices))
    if len(devices) <= 1:
        return make_clock_source(devices[0] if devices else "cpu")
    return MultiClockSource({d: make_clock_source(d) for d in devices})


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

        Times are ns since this sampler's ``t0_ns``, like sample ``t_ns``. The clock is the mean
        ``clock_mhz`` of the samples inside the window, else the nearest sample's clock (0
        inside); reasons are the union over the samples inside, else the nearest one's. Scans
        from the newest end, so a recent step costs a few samples. ``device`` ("cuda:1"): that
        device's fields of a multi-device sample (``devices``); None: the sample's top level.
        """
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


def _device_fields(sample: dict[str, Any], device: str) -> dict[str, Any]:
    """One device's fields of a multi-device sample (empty when the sample has none for it)."""
    per = sample.get("devices")
    return (per.get(device) if isinstance(per, dict) else None) or {}
