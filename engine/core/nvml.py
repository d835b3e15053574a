"""NVML access: the only module that imports ``pynvml`` (from the ``nvidia-ml-py`` package).

Modelled on nvitop's ``libnvml``: every NVML call goes through one helper, ``NvmlDevice._call``,
which returns None ("not available") instead of raising. A field the GPU does not support is None
and is never asked again; a lost GPU turns every field None and sets ``status`` to a one-line
message. Only ``open_device`` raises, with ``NvmlUnavailable`` whose message a user can act on.

Exception classes and constants are looked up on the binding with ``getattr`` and fallbacks, so
tests can inject a small fake module that defines only what it uses.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from time import perf_counter_ns, time_ns
from typing import Any

__all__ = ["REASON_BITS", "NvmlDevice", "NvmlUnavailable", "decode_reasons", "open_device"]

# Clock event ("throttle") reason bits, our own table so old and new bindings decode alike.
# Values from nvml.h; 0x200 / 0x400 exist only in the deprecated ThrottleReasons table.
REASON_BITS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal"),
    (0x040, "hw_thermal"),
    (0x080, "hw_power_brake"),
    (0x100, "display_clocks"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)
_KNOWN_MASK = sum(bit for bit, _ in REASON_BITS)

# Fallback values from nvml.h for a binding that lacks the constant.
_DEFAULTS = {"NVML_CLOCK_SM": 1, "NVML_CLOCK_MEM": 2, "NVML_TEMPERATURE_GPU": 0,
             "NVML_PROCESSOR_CLK_SAMPLES": 5, "NVML_PCIE_UTIL_TX_BYTES": 0, "NVML_PCIE_UTIL_RX_BYTES": 1,
             "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX": 138, "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX": 139}

# nvmlValue_t's member for each nvmlValueType_t (a sample's value)
_VALUE_FIELDS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}

# Buffered samples: a driver timestamp further than this from the wall clock at the read is not the
# wall clock; then the newest sample is taken to be "now" (``buffer_time: "estimated"``).
_WALL_SKEW_NS = 60 * 10**9

# Error classes by what they mean for us (names as pynvml generates them from NVML_ERROR_*).
_UNSUPPORTED = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NoPermission")
_LOST = {
    "NVMLError_GpuIsLost": "NVML reports the GPU has fallen off the bus",
    "NVMLError_ResetRequired": "NVML reports the GPU needs a reset",
    "NVMLError_GpuNotFound": "NVML no longer finds the GPU",
    "NVMLError_Uninitialized": "NVML was shut down under us (uninitialized)",
    "NVMLError_Unknown": "NVML returned an unknown error",
}
_BUFFER_UNSUPPORTED = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NoPermission",
                       "NVMLError_InvalidArgument")
_INIT_HINTS = {
    "NVMLError_LibraryNotFound": "libnvidia-ml.so.1 not found: the NVIDIA driver is not installed"
    " or not on the library path",
    "NVMLError_DriverNotLoaded": "the NVIDIA driver is not loaded (no NVIDIA GPU, or the kernel"
    " module is missing: check nvidia-smi)",
    "NVMLError_NoPermission": "no permission to open the GPU (check access to /dev/nvidia*)",
    "NVMLError_LibRmVersionMismatch": "NVML library and kernel driver versions differ"
    " (reboot after a driver update)",
}

_LATENCY_KEEP = 1000

# One nvmlInit per binding, shared by all open devices; nvmlShutdown when the last one closes.
_init_lock = threading.Lock()
_init_refs: dict[Any, int] = {}  # keyed by the binding itself: ids of dead fakes get reused


class NvmlUnavailable(Exception):
    """NVML cannot be used; the message is one line that says what to do."""


def decode_reasons(mask: int) -> list[str]:
    """Short names of the clock event reason bits set in ``mask``, in table order."""
    names = [name for bit, name in REASON_BITS if mask & bit]
    extra = mask & ~_KNOWN_MASK
    if extra:  # a newer driver's bit: show it rather than drop it
        names.append(f"0x{extra:x}")
    return names


def _error_class(binding: Any, name: str) -> type | None:
    cls = getattr(binding, name, None)
    return cls if isinstance(cls, type) else None


# nvml.h error codes, used only when a binding lacks the generated class for one.
_CODES = {
    "NVMLError_Uninitialized": 1, "NVMLError_NotSupported": 3, "NVMLError_NoPermission": 4,
    "NVMLError_DriverNotLoaded": 9, "NVMLError_LibraryNotFound": 12,
    "NVMLError_FunctionNotFound": 13, "NVMLError_GpuIsLost": 15, "NVMLError_ResetRequired": 16,
    "NVMLError_LibRmVersionMismatch": 18, "NVMLError_GpuNotFound": 28, "NVMLError_Unknown": 999,
    "NVMLError_NotFound": 6, "NVMLError_InvalidArgument": 2,
}


def _is(binding: Any, exc: BaseException, names) -> str | None:
    """The first error class name in ``names`` that ``exc`` matches, else None.

    Matches the binding's generated class (pynvml makes ``NVMLError_<Name>`` for every code);
    failing that, an ``NVMLError`` whose ``.value`` is the code.
    """
    base = _error_class(binding, "NVMLError")
    for name in names:
        cls = _error_class(binding, name)
        if cls is not None:
            if isinstance(exc, cls):
                return name
        elif isinstance(exc, base or ()) and getattr(exc, "value", None) == _CODES.get(name):
            return name
    return None


def _text(value: Any) -> Any:
    # Old bindings return bytes for strings; nvidia-ml-py decodes them already.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _import_binding() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _init(binding: Any) -> None:
    with _init_lock:
        key = binding
        if _init_refs.get(key, 0) == 0:
            try:
                binding.nvmlInit()
            except Exception as exc:  # any failure here means "no NVML": say why, in one line
                hint = _INIT_HINTS.get(_is(binding, exc, _INIT_HINTS) or "")
                raise NvmlUnavailable(
                    f"NVML not available: {hint or f'nvmlInit failed ({exc})'}"
                ) from exc
        _init_refs[key] = _init_refs.get(key, 0) + 1


def _release(binding: Any) -> None:
    with _init_lock:
        key = binding
        left = _init_refs.get(key, 0) - 1
        if left > 0:
            _init_refs[key] = left
            return
        _init_refs.pop(key, None)
        if left == 0:
            with contextlib.suppress(Exception):  # shutting down a lost GPU may fail; nothing left to do
                binding.nvmlShutdown()


def open_device(index: int = 0, uuid: str | None = None, binding: Any = None) -> NvmlDevice:
    """Open GPU ``index`` (NVML numbering), or the one with ``uuid`` when given and found.

    Prefer ``uuid``: torch's CUDA index differs from NVML's under CUDA_VISIBLE_DEVICES.
    ``binding`` is the pynvml module (tests pass a fake); None imports ``pynvml``.
    Raises NvmlUnavailable with a one-line, actionable message.
    """
    if binding is None:
        binding = _import_binding()
        if binding is None:
            raise NvmlUnavailable(
                "NVML not available: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
            )
    _init(binding)
    try:
        handle = None
        if uuid:
            try:
                handle = binding.nvmlDeviceGetHandleByUUID(uuid)
            except Exception:  # not found / old driver: fall back to the index
                handle = None
        if handle is None:
            try:
                count = int(binding.nvmlDeviceGetCount())
            except Exception as exc:
                raise NvmlUnavailable(f"NVML: cannot count GPUs ({exc})") from exc
            if not 0 <= index < count:
                raise NvmlUnavailable(f"NVML: no GPU with index {index} ({count} found)")
            try:
                handle = binding.nvmlDeviceGetHandleByIndex(index)
            except Exception as exc:
                raise NvmlUnavailable(f"NVML: cannot open GPU {index} ({exc})") from exc
    except BaseException:
        _release(binding)
        raise
    return NvmlDevice(binding, handle)


class NvmlDevice:
    """One GPU seen through NVML. ``read_*`` never raise; missing values are None.

    Attributes:
        status: None while healthy, else a one-line message (e.g. the GPU was lost).
    """

    def __init__(self, binding: Any, handle: Any) -> None:
        self._nvml = binding
        self._handle = handle
        self._unsupported: set[tuple] = set()  # (function name, args) never to call again
        self._latency: dict[str, deque[int]] = {}
        self._closed = False
        self.status: str | None = None
        self._clock_sm = self._const("NVML_CLOCK_SM")
        self._clock_mem = self._const("NVML_CLOCK_MEM")
        self._temp_gpu = self._const("NVML_TEMPERATURE_GPU")
        # Driver-buffered SM clock samples (nvmlDeviceGetSamples): None until probed, then True / False.
        self.buffered: bool | None = None
        self.buffered_reason: str | None = None   # why not, said once (header clock ``buffered_reason``)
        self.buffer_time = "wall"                 # "wall": driver µs = wall clock; "estimated": newest = now
        self._last_seen_us = 0
        self._nvlink_prev: dict[int, tuple[int, int]] = {}  # field id → (KiB counter, µs)
        self._nvlink_ok = True

    def _const(self, name: str) -> int:
        return getattr(self._nvml, name, _DEFAULTS[name])

    # -- the one way to call NVML --------------------------------------------------------------

    def _call(self, fn_name: str, *args: Any, handle: bool = True) -> Any:
        """``binding.fn_name(handle, *args)``, or None when unsupported, lost or failing."""
        key = (fn_name, args)
        if self._closed or self.status is not None or key in self._unsupported:
            return None
        fn = getattr(self._nvml, fn_name, None)
        if fn is None:  # the binding is too old to know this function
            self._unsupported.add(key)
            return None
        t0 = perf_counter_ns()
        try:
            return fn(self._handle, *args) if handle else fn(*args)
        except Exception as exc:
            if _is(self._nvml, exc, _UNSUPPORTED):
                self._unsupported.add(key)
            elif (lost := _is(self._nvml, exc, _LOST)) is not None:
                self.status = f"GPU lost: {_LOST[lost]} ({exc}); restart once the GPU is back"
            # anything else (timeout, no data, ...) is transient: None this time only
            return None
        finally:
            dt = perf_counter_ns() - t0
            times = self._latency.get(fn_name)
            if times is None:
                times = self._latency[fn_name] = deque(maxlen=_LATENCY_KEEP)
            times.append(dt)

    def _call_first(self, fn_names: tuple[str, ...], *args: Any) -> Any:
        """The first of ``fn_names`` that is supported (newer API first, deprecated after)."""
        for name in fn_names:
            if (name, args) in self._unsupported:
                continue
            value = self._call(name, *args)
            if value is not None or (name, args) not in self._unsupported:
                return value
        return None

    # -- public reads --------------------------------------------------------------------------

    @property
    def latency_ns(self) -> dict[str, list[int]]:
        """Per NVML function name, the last <= 1000 call durations in ns (a copy)."""
        return {name: list(times) for name, times in self._latency.items()}

    def info(self) -> dict[str, Any]:
        """name, driver_version, uuid, sm/mem_clock_max_mhz, power_limit_w (None if unsupported)."""
        limit_mw = self._call_first(
            ("nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit")
        )
        return {
            "name": _text(self._call("nvmlDeviceGetName")),
            "driver_version": _text(self._call("nvmlSystemGetDriverVersion", handle=False)),
            "uuid": _text(self._call("nvmlDeviceGetUUID")),
            "sm_clock_max_mhz": self._call("nvmlDeviceGetMaxClockInfo", self._clock_sm),
            "mem_clock_max_mhz": self._call("nvmlDeviceGetMaxClockInfo", self._clock_mem),
            "power_limit_w": None if limit_mw is None else limit_mw / 1000.0,
        }

    def read_clock_samples(self) -> list[tuple[int, float]] | None:
        """Driver-buffered SM clock samples since the last read, as ``(perf_counter_ns, MHz)`` oldest
        first; ``[]`` when there are none new; None when the driver does not buffer them (said once in
        ``buffered_reason``) or the GPU is lost. Never raises.

        The driver stamps samples in µs of the CPU wall clock; they are put on ``perf_counter_ns``
        with the offset between the two read together at each call (so a wall-clock step between
        reads is absorbed). A stamp that is no wall-clock time is aligned by its newest sample = now."""
        if self.buffered is False or self._closed or self.status is not None:
            return None
        fn = getattr(self._nvml, "nvmlDeviceGetSamples", None)
        if fn is None:
            self.buffered, self.buffered_reason = False, "this nvidia-ml-py has no nvmlDeviceGetSamples"
            return None
        kind = self._const("NVML_PROCESSOR_CLK_SAMPLES")
        t0 = perf_counter_ns()
        try:
            vtype, samples = fn(self._handle, kind, self._last_seen_us)
        except Exception as exc:
            if _is(self._nvml, exc, ("NVMLError_NotFound",)):  # no sample since the last one: not an error
                self.buffered = True if self.buffered is None else self.buffered
                return []
            if _is(self._nvml, exc, _BUFFER_UNSUPPORTED) or self.buffered is None:
                self.buffered = False
                self.buffered_reason = f"the driver does not buffer clock samples here ({exc}); the clock is polled"
            elif (lost := _is(self._nvml, exc, _LOST)) is not None:
                self.status = f"GPU lost: {_LOST[lost]} ({exc}); restart once the GPU is back"
            return None
        finally:
            times = self._latency.setdefault("nvmlDeviceGetSamples", deque(maxlen=_LATENCY_KEEP))
            times.append(perf_counter_ns() - t0)
        self.buffered = True
        # the wall clock ↔ perf_counter offset, read together (the midpoint of a perf read pair)
        a = perf_counter_ns()
        wall = time_ns()
        b = perf_counter_ns()
        now_perf = (a + b) // 2
        offset = now_perf - wall
        field = _VALUE_FIELDS.get(int(vtype) if vtype is not None else 1, "uiVal")
        out: list[tuple[int, float]] = []
        for smp in samples or ():
            ts = int(getattr(smp, "timeStamp", 0) or 0)
            if ts <= self._last_seen_us:
                continue
            val = getattr(smp, "sampleValue", None)
            mhz = getattr(val, field, None) if val is not None else None
            if mhz is None:
                continue
            out.append((ts, float(mhz)))
        if not out:
            return []
        out.sort()
        newest = out[-1][0]
        self._last_seen_us = newest
        if abs(newest * 1000 + offset - now_perf) > _WALL_SKEW_NS:
            self.buffer_time = "estimated"
            offset = now_perf - newest * 1000
        return [(ts * 1000 + offset, mhz) for ts, mhz in out]

    def read_links(self) -> dict[str, Any]:
        """PCIe and NVLink throughput, KB/s: ``pcie_tx_kbps``, ``pcie_rx_kbps`` (NVML's own 20 ms
        window), ``nvlink_tx_kbps``, ``nvlink_rx_kbps`` (from the data counters' change since the last
        read: None on the first). None where NVML does not report it."""
        tx = self._call("nvmlDeviceGetPcieThroughput", self._const("NVML_PCIE_UTIL_TX_BYTES"))
        rx = self._call("nvmlDeviceGetPcieThroughput", self._const("NVML_PCIE_UTIL_RX_BYTES"))
        out: dict[str, Any] = {"pcie_tx_kbps": tx, "pcie_rx_kbps": rx, "nvlink_tx_kbps": None,
                               "nvlink_rx_kbps": None}
        if not self._nvlink_ok:
            return out
        ids = (self._const("NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX"),
               self._const("NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX"))
        values = self._call("nvmlDeviceGetFieldValues", ids)
        if values is None:
            if ("nvmlDeviceGetFieldValues", (ids,)) in self._unsupported or self.status is not None:
                self._nvlink_ok = False
            return out
        for key, fid, fv in zip(("nvlink_tx_kbps", "nvlink_rx_kbps"), ids, values):
            if getattr(fv, "nvmlReturn", 1) != 0:   # this GPU has no NVLink (or no counter): never ask again
                self._nvlink_ok = False
                return dict(out, nvlink_tx_kbps=None, nvlink_rx_kbps=None)
            val = getattr(fv, "value", None)
            kib = getattr(val, _VALUE_FIELDS.get(getattr(fv, "valueType", 3), "ullVal"), None)
            ts = int(getattr(fv, "timestamp", 0) or 0) or perf_counter_ns() // 1000
            if kib is None:
                continue
            prev = self._nvlink_prev.get(fid)
            self._nvlink_prev[fid] = (int(kib), ts)
            if prev is not None and ts > prev[1] and kib >= prev[0]:
                out[key] = round((int(kib) - prev[0]) * 1.024 / ((ts - prev[1]) / 1e6), 1)  # KiB → kB
        return out

    def read_clocks(self) -> dict[str, Any]:
        """sm_clock_mhz, mem_clock_mhz (MHz) and throttle_reasons (list of short names)."""
        sm = self._call("nvmlDeviceGetClockInfo", self._clock_sm)
        mem = self._call("nvmlDeviceGetClockInfo", self._clock_mem)
        # ClocksEventReasons is the current name; drivers older than ~535 lack the symbol, which
        # raises FunctionNotFound at call time, so the fallback is decided per call, not by hasattr.
        mask = self._call_first(
            ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
        )
        return {
            "sm_clock_mhz": sm,
            "mem_clock_mhz": mem,
            "throttle_reasons": None if mask is None else decode_reasons(int(mask)),
        }

    def read_util(self) -> dict[str, Any]:
        """gpu_util_pct, mem_util_pct (%), power_w (W), temp_c (degrees C)."""
        util = self._call("nvmlDeviceGetUtilizationRates")
        power_mw = self._call("nvmlDeviceGetPowerUsage")
        # nvmlDeviceGetTemperature is deprecated ("removed in CUDA 14"); TemperatureV replaces it.
        temp = self._call_first(
            ("nvmlDeviceGetTemperature", "nvmlDeviceGetTemperatureV"), self._temp_gpu
        )
        return {
            "gpu_util_pct": None if util is None else getattr(util, "gpu", None),
            "mem_util_pct": None if util is None else getattr(util, "memory", None),
            "power_w": None if power_mw is None else power_mw / 1000.0,
            "temp_c": temp,
        }

    def close(self) -> None:
        """Release this device's share of nvmlInit (idempotent)."""
        if not self._closed:
            self._closed = True
            _release(self._nvml)

    def __enter__(self) -> NvmlDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
