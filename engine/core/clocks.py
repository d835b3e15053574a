"""Clock sources: where the clock for cycles comes from (NVML on a GPU, the CPU clock on CPU).

A clock source reads the processor clock used for cycles (``clock_mhz``) plus a few related fields.
``read_fast`` is cheap and runs every tick (clocks, throttle reasons); ``read_slow`` runs at the
utilization rate (utilization, power, temperature). Sources never raise from reads: a field the
device does not support is None, a problem is a one-line ``status``.

Several GPUs (a ``device_map`` model): ``MultiClockSource`` reads one source per device in one tick (the
NVML calls of all devices run one after another on the sampler's one thread, never at once; the tick
rate stays ≤ 20 Hz, so each GPU is asked at most that often). A sample then carries the first
device's fields at top level, exactly as a one-GPU sample, plus ``devices: {"cuda:0": {...},
"cuda:1": {...}}`` with every device's fields.
"""

from __future__ import annotations

import contextlib
import glob
import os
import platform
from time import perf_counter_ns
from typing import Any, Protocol, runtime_checkable

import psutil

from llm_moments.engine.core.clock_buffer import BUFFER_KEY
from llm_moments.engine.core.nvml import NvmlDevice, NvmlUnavailable, open_device

__all__ = [
    "ClockSource",
    "CpuClockSource",
    "MultiClockSource",
    "NvmlClockSource",
    "UnavailableClockSource",
    "make_clock_source",
    "make_clock_sources",
]

# NVML fields read every tick (fast) and at the utilization rate (slow, design §6).
_NVML_FAST_KEYS = ("sm_clock_mhz", "mem_clock_mhz", "throttle_reasons", "clock_mhz")
_NVML_SLOW_KEYS = ("gpu_util_pct", "mem_util_pct", "power_w", "temp_c",
                   "pcie_tx_kbps", "pcie_rx_kbps", "nvlink_tx_kbps", "nvlink_rx_kbps")
LINKS_EVERY_NS = 1_000_000_000   # PCIe / NVLink throughput at most once a second (NVML takes ~20 ms each)
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
    """GPU clocks through NVML; ``clock_mhz`` is the SM clock (the one cycles are counted in).

    Where the driver buffers SM clock samples (``nvmlDeviceGetSamples``), each fast read also hands
    the new ones to the sampler (``BUFFER_KEY``): a step's clock then comes from the driver's samples
    inside the step. Where it does not, the header's clock says ``buffered: false`` and why, once,
    and the polled clock is all there is."""

    name = "nvml"

    def __init__(self, device: NvmlDevice) -> None:
        self.device = device
        self._links: dict[str, Any] = {}
        self._links_ns: int | None = None

    def info(self) -> dict[str, Any]:
        """The device's info: name, driver_version, uuid, max clocks (MHz), power_limit_w, and
        ``buffered`` (driver-buffered clock samples; ``buffered_reason`` when not)."""
        out = dict(self.device.info())
        if getattr(self.device, "buffered", False) is None:
            self.device.read_clock_samples()  # probe once (these first samples precede the session)
        buffered = bool(getattr(self.device, "buffered", False))
        out["buffered"] = buffered
        if not buffered:
            out["buffered_reason"] = getattr(self.device, "buffered_reason", None) or "not probed"
        return out

    def read_fast(self) -> dict[str, Any]:
        """sm_clock_mhz, mem_clock_mhz, throttle_reasons, clock_mhz (= sm_clock_mhz), and the
        driver-buffered clock samples since the last read (``BUFFER_KEY``) where there are any."""
        fields = self.device.read_clocks()
        fields["clock_mhz"] = fields["sm_clock_mhz"]
        if getattr(self.device, "buffered", False):
            samples = self.device.read_clock_samples()
            if samples:
                fields[BUFFER_KEY] = samples
        return fields

    def read_slow(self) -> dict[str, Any]:
        """gpu_util_pct, mem_util_pct (%), power_w (W), temp_c (degrees C), and PCIe / NVLink
        throughput (KB/s, read at most once a second; None where NVML does not report it)."""
        fields = self.device.read_util()
        read_links = getattr(self.device, "read_links", None)
        if read_links is not None:
            now = perf_counter_ns()
            if self._links_ns is None or now - self._links_ns >= LINKS_EVERY_NS:
                self._links_ns = now
                try:
                    self._links = dict(read_links())
                except Exception:
                    self._links = {}
            for key in ("pcie_tx_kbps", "pcie_rx_kbps", "nvlink_tx_kbps", "nvlink_rx_kbps"):
                fields[key] = self._links.get(key)
        return fields

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
                    with contextlib.suppress(ValueError):
                        mhz.append(float(value))
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
        import torch

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
