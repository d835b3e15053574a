"""llm_moments.engine.core.nvml against a fake pynvml binding (gpustat-style scenarios); no GPU needed."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from llm_moments.engine.core import nvml
from llm_moments.engine.core.nvml import NvmlUnavailable, decode_reasons, open_device


class NVMLError(Exception):
    def __init__(self, value: int = 999) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 15: "GPU is lost", 9: "Driver Not Loaded"}.get(
            self.value, f"NVML error {self.value}"
        )


def _err(name: str, value: int) -> type:
    return type(name, (NVMLError,), {"__init__": lambda self: NVMLError.__init__(self, value)})


NotSupported = _err("NVMLError_NotSupported", 3)
GpuIsLost = _err("NVMLError_GpuIsLost", 15)
DriverNotLoaded = _err("NVMLError_DriverNotLoaded", 9)
FunctionNotFound = _err("NVMLError_FunctionNotFound", 13)
Timeout = _err("NVMLError_Timeout", 10)


class FakeNvml:
    """A module-like fake: only what engine.nvml uses, with switches for each scenario."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NotSupported
    NVMLError_GpuIsLost = GpuIsLost
    NVMLError_DriverNotLoaded = DriverNotLoaded
    NVMLError_FunctionNotFound = FunctionNotFound
    NVMLError_Timeout = Timeout
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self.calls: dict[str, int] = {}
        self.inits = self.shutdowns = 0
        self.lost = False
        self.init_error: Exception | None = None
        self.not_supported: set[str] = set()
        self.transient: set[str] = set()
        self.reasons = 0x4 | 0x40
        self.sm_mhz, self.mem_mhz = 1980, 3201

    def _hit(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.lost:
            raise GpuIsLost()
        if name in self.not_supported:
            raise NotSupported()
        if name in self.transient:
            self.transient.discard(name)
            raise Timeout()

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid != "GPU-abc":
            raise NVMLError(6)  # not found
        return ("handle", "uuid")

    def nvmlSystemGetDriverVersion(self):
        self._hit("nvmlSystemGetDriverVersion")
        return b"550.54.15"  # old bindings return bytes

    def nvmlDeviceGetName(self, h):
        self._hit("nvmlDeviceGetName")
        return "NVIDIA H200"

    def nvmlDeviceGetUUID(self, h):
        self._hit("nvmlDeviceGetUUID")
        return "GPU-abc"

    def nvmlDeviceGetMaxClockInfo(self, h, kind):
        self._hit("nvmlDeviceGetMaxClockInfo")
        return {1: 1980, 2: 3201}[kind]

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        self._hit("nvmlDeviceGetEnforcedPowerLimit")
        return 700000

    def nvmlDeviceGetClockInfo(self, h, kind):
        self._hit("nvmlDeviceGetClockInfo")
        return {1: self.sm_mhz, 2: self.mem_mhz}[kind]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        self._hit("nvmlDeviceGetCurrentClocksEventReasons")
        return self.reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
        self._hit("nvmlDeviceGetCurrentClocksThrottleReasons")
        return self.reasons

    def nvmlDeviceGetUtilizationRates(self, h):
        self._hit("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=87, memory=41)

    def nvmlDeviceGetPowerUsage(self, h):
        self._hit("nvmlDeviceGetPowerUsage")
        return 412345  # mW

    def nvmlDeviceGetTemperature(self, h, sensor):
        self._hit("nvmlDeviceGetTemperature")
        return 54


@pytest.fixture
def fake():
    return FakeNvml()


def test_normal_values_are_converted(fake):
    dev = open_device(binding=fake)
    assert fake.inits == 1
    clocks = dev.read_clocks()
    assert clocks == {
        "sm_clock_mhz": 1980,
        "mem_clock_mhz": 3201,
        "throttle_reasons": ["sw_power_cap", "hw_thermal"],
    }
    util = dev.read_util()
    assert util == {"gpu_util_pct": 87, "mem_util_pct": 41, "power_w": 412.345, "temp_c": 54}
    info = dev.info()
    assert info == {
        "name": "NVIDIA H200",
        "driver_version": "550.54.15",
        "uuid": "GPU-abc",
        "sm_clock_max_mhz": 1980,
        "mem_clock_max_mhz": 3201,
        "power_limit_w": 700.0,
    }
    assert dev.status is None
    # The new API is used when present; the deprecated one is not touched.
    assert "nvmlDeviceGetCurrentClocksThrottleReasons" not in fake.calls
    dev.close()
    dev.close()
    assert fake.shutdowns == 1


def test_decode_reasons():
    assert decode_reasons(0) == []
    assert decode_reasons(0x4 | 0x40) == ["sw_power_cap", "hw_thermal"]
    assert decode_reasons(0x1 | 0x100) == ["gpu_idle", "display_clocks"]
    assert decode_reasons(0x800 | 0x2) == ["applications_clocks", "0x800"]  # unknown bit kept


def test_unsupported_field_is_none_and_not_called_again(fake):
    fake.not_supported = {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetCurrentClocksEventReasons",
                          "nvmlDeviceGetCurrentClocksThrottleReasons"}
    dev = open_device(binding=fake)
    for _ in range(5):
        util = dev.read_util()
        clocks = dev.read_clocks()
    assert util["power_w"] is None and util["gpu_util_pct"] == 87
    assert clocks["throttle_reasons"] is None and clocks["sm_clock_mhz"] == 1980
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 1
    assert fake.calls["nvmlDeviceGetCurrentClocksEventReasons"] == 1
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 1
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 5
    assert dev.status is None


def test_transient_error_is_none_once(fake):
    dev = open_device(binding=fake)
    fake.transient = {"nvmlDeviceGetUtilizationRates"}
    assert dev.read_util()["gpu_util_pct"] is None
    assert dev.read_util()["gpu_util_pct"] == 87
    assert dev.status is None


def test_gpu_lost_mid_session(fake):
    dev = open_device(binding=fake)
    assert dev.read_clocks()["sm_clock_mhz"] == 1980
    fake.lost = True
    clocks = dev.read_clocks()
    util = dev.read_util()
    assert set(clocks) == {"sm_clock_mhz", "mem_clock_mhz", "throttle_reasons"}
    assert all(v is None for v in clocks.values())
    assert all(v is None for v in util.values())
    assert all(v is None for v in dev.info().values())
    assert dev.status.startswith("GPU lost: NVML reports the GPU has fallen off the bus")
    assert "\n" not in dev.status
    # Once lost, NVML is not asked again (every call would fail the same way).
    before = dict(fake.calls)
    dev.read_clocks()
    assert fake.calls == before
    dev.close()


def test_unknown_error_code_without_class_counts_as_lost():
    # A binding lacking NVMLError_Unknown still matches by the error code (999).
    fake = FakeNvml()
    dev = open_device(binding=fake)
    fake.nvmlDeviceGetPowerUsage = lambda h: (_ for _ in ()).throw(NVMLError(999))
    assert dev.read_util()["power_w"] is None
    assert dev.status is not None and dev.status.startswith("GPU lost")


def test_old_binding_falls_back_to_throttle_reasons():
    class OldNvml(FakeNvml):
        pass

    fake = OldNvml()
    # Old binding: no ClocksEventReasons at all.
    OldNvml.nvmlDeviceGetCurrentClocksEventReasons = None
    dev = open_device(binding=fake)
    assert dev.read_clocks()["throttle_reasons"] == ["sw_power_cap", "hw_thermal"]
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 1


def test_new_binding_old_driver_falls_back_at_call_time(fake):
    # nvidia-ml-py has the function, but an old driver lacks the symbol: FunctionNotFound.
    def missing(h):
        fake.calls["event"] = fake.calls.get("event", 0) + 1
        raise FunctionNotFound()

    fake.nvmlDeviceGetCurrentClocksEventReasons = missing
    dev = open_device(binding=fake)
    for _ in range(3):
        assert dev.read_clocks()["throttle_reasons"] == ["sw_power_cap", "hw_thermal"]
    assert fake.calls["event"] == 1
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 3


def test_library_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with pytest.raises(NvmlUnavailable) as err:
        open_device()
    msg = str(err.value)
    assert "nvidia-ml-py is not installed" in msg and "pip install nvidia-ml-py" in msg


def test_driver_not_loaded(fake):
    fake.init_error = DriverNotLoaded()
    with pytest.raises(NvmlUnavailable, match="the NVIDIA driver is not loaded"):
        open_device(binding=fake)
    assert nvml._init_refs.get(fake, 0) == 0


def test_bad_index_releases_init(fake):
    with pytest.raises(NvmlUnavailable, match=r"no GPU with index 3 \(2 found\)"):
        open_device(index=3, binding=fake)
    assert fake.shutdowns == 1
    assert nvml._init_refs.get(fake, 0) == 0


def test_uuid_preferred_and_index_fallback(fake):
    dev = open_device(index=1, uuid="GPU-abc", binding=fake)
    assert dev._handle == ("handle", "uuid")
    other = open_device(index=1, uuid="GPU-nope", binding=fake)
    assert other._handle == ("handle", 1)
    assert fake.inits == 1  # one nvmlInit shared by both devices
    dev.close()
    assert fake.shutdowns == 0
    other.close()
    assert fake.shutdowns == 1


def test_latency_recorded(fake):
    dev = open_device(binding=fake)
    for _ in range(1200):
        dev.read_clocks()
    lat = dev.latency_ns
    assert len(lat["nvmlDeviceGetClockInfo"]) == 1000  # bounded: the last 1000 calls
    assert all(isinstance(x, int) and x >= 0 for x in lat["nvmlDeviceGetClockInfo"])
    assert len(lat["nvmlDeviceGetCurrentClocksEventReasons"]) == 1000


def test_real_binding_without_driver_is_a_clear_error():
    # binding=None: engine.nvml imports the installed pynvml itself (the only place that does).
    try:
        dev = open_device()
    except NvmlUnavailable as exc:
        assert str(exc).startswith("NVML")
        assert "\n" not in str(exc)
    else:  # a machine with a GPU: reads must work and never raise
        assert "sm_clock_mhz" in dev.read_clocks()
        dev.close()


# -- several GPUs through one binding (issue #9: device_map over GPUs) ----------------------------


class TwoGpuNvml(FakeNvml):
    """Two GPUs at different clocks; each handle answers for its own GPU, and each can be lost alone."""

    def __init__(self, sm=(1980, 1410)) -> None:
        super().__init__(count=len(sm))
        self.sm = list(sm)
        self.lost_gpus: set[int] = set()

    def nvmlDeviceGetClockInfo(self, h, kind):
        self._hit("nvmlDeviceGetClockInfo")
        if h[1] in self.lost_gpus:
            raise GpuIsLost()
        return {1: self.sm[h[1]], 2: self.mem_mhz}[kind]

    def nvmlDeviceGetUUID(self, h):
        self._hit("nvmlDeviceGetUUID")
        return f"GPU-{h[1]}"


def test_two_gpus_read_their_own_clocks_with_one_init():
    fake = TwoGpuNvml(sm=(1980, 1410))
    d0, d1 = open_device(0, binding=fake), open_device(1, binding=fake)
    assert fake.inits == 1
    assert d0.read_clocks()["sm_clock_mhz"] == 1980
    assert d1.read_clocks()["sm_clock_mhz"] == 1410
    assert (d0.info()["uuid"], d1.info()["uuid"]) == ("GPU-0", "GPU-1")
    d0.close()
    assert fake.shutdowns == 0
    d1.close()
    assert fake.shutdowns == 1


def test_one_of_two_gpus_lost_leaves_the_other():
    from llm_moments.engine.core.sampler import MultiClockSource, NvmlClockSource

    fake = TwoGpuNvml()
    src = MultiClockSource({"cuda:0": NvmlClockSource(open_device(0, binding=fake)),
                            "cuda:1": NvmlClockSource(open_device(1, binding=fake))})
    assert src.read_fast()["devices"]["cuda:1"]["clock_mhz"] == 1410
    fake.lost_gpus = {1}
    fast = src.read_fast()
    assert fast["clock_mhz"] == 1980 and fast["devices"]["cuda:0"]["sm_clock_mhz"] == 1980
    assert fast["devices"]["cuda:1"]["clock_mhz"] is None
    assert src.status.startswith("cuda:1: GPU lost")
    src.close()
    assert fake.shutdowns == 1


# -- driver-buffered clock samples, PCIe and NVLink (issue #10, item 6) ---------------------------------


NotFound = _err("NVMLError_NotFound", 6)


class BufferedNvml(FakeNvml):
    """nvmlDeviceGetSamples over a scripted buffer of (wall µs, MHz); PCIe and NVLink counters."""

    NVMLError_NotFound = NotFound
    NVML_PROCESSOR_CLK_SAMPLES = 5
    NVML_PCIE_UTIL_TX_BYTES = 0
    NVML_PCIE_UTIL_RX_BYTES = 1

    def __init__(self, buffer=None, supported: bool = True) -> None:
        super().__init__()
        self.buffer = list(buffer or [])
        self.supported = supported
        self.asked: list[int] = []
        self.nvlink = {138: 1_000, 139: 5_000}   # KiB counters
        self.nvlink_return = 0
        self.field_ts_us = 1_000_000

    def nvmlDeviceGetSamples(self, h, kind, last_seen):
        self._hit("nvmlDeviceGetSamples")
        assert kind == 5
        self.asked.append(last_seen)
        if not self.supported:
            raise NotSupported()
        new = [SimpleNamespace(timeStamp=ts, sampleValue=SimpleNamespace(uiVal=mhz))
               for ts, mhz in self.buffer if ts > last_seen]
        if not new:
            raise NotFound()
        return 1, new   # NVML_VALUE_TYPE_UNSIGNED_INT

    def nvmlDeviceGetPcieThroughput(self, h, counter):
        self._hit("nvmlDeviceGetPcieThroughput")
        return {0: 1200, 1: 34000}[counter]

    def nvmlDeviceGetFieldValues(self, h, ids):
        self._hit("nvmlDeviceGetFieldValues")
        return [SimpleNamespace(fieldId=i, nvmlReturn=self.nvlink_return, valueType=3, timestamp=self.field_ts_us,
                                value=SimpleNamespace(ullVal=self.nvlink[i])) for i in ids]


def _now_us() -> int:
    import time

    return time.time_ns() // 1000


def test_buffered_clock_samples_are_put_on_perf_counter_time():
    import time

    now = _now_us()
    fake = BufferedNvml([(now - 3000, 1410), (now - 2000, 1500), (now - 1000, 1600)])
    dev = open_device(binding=fake)
    before = time.perf_counter_ns()
    got = dev.read_clock_samples()
    after = time.perf_counter_ns()
    assert dev.buffered is True and dev.buffer_time == "wall"
    assert [mhz for _, mhz in got] == [1410.0, 1500.0, 1600.0]
    # 1 ms apart, ending about 1 ms before the read, on the perf_counter clock
    assert [got[i + 1][0] - got[i][0] for i in range(2)] == [1_000_000, 1_000_000]
    assert before - 1_000_000 - 5_000_000 < got[-1][0] < after
    # the next read asks only for what is newer; nothing new is an empty list, not an error
    assert dev.read_clock_samples() == [] and fake.asked[-1] == now - 1000
    fake.buffer.append((now + 500, 1700))
    assert [mhz for _, mhz in dev.read_clock_samples()] == [1700.0]
    assert dev.status is None and dev.latency_ns["nvmlDeviceGetSamples"]


def test_buffered_samples_unsupported_fall_back_to_polling_said_once():
    fake = BufferedNvml(supported=False)
    dev = open_device(binding=fake)
    assert dev.read_clock_samples() is None
    assert dev.buffered is False and "does not buffer clock samples" in dev.buffered_reason
    for _ in range(3):
        assert dev.read_clock_samples() is None
    assert fake.calls["nvmlDeviceGetSamples"] == 1      # not asked again
    assert dev.read_clocks()["sm_clock_mhz"] == 1980      # polling carries on
    assert dev.status is None


def test_a_binding_without_get_samples_is_not_buffered():
    dev = open_device(binding=FakeNvml())
    assert dev.read_clock_samples() is None and dev.buffered is False
    assert "nvmlDeviceGetSamples" in dev.buffered_reason


def test_a_driver_clock_that_is_not_the_wall_clock_is_aligned_by_its_newest_sample():
    import time

    fake = BufferedNvml([(5_000, 1400), (6_000, 1450)])   # µs since boot, say
    dev = open_device(binding=fake)
    got = dev.read_clock_samples()
    assert dev.buffer_time == "estimated"
    assert abs(got[-1][0] - time.perf_counter_ns()) < 1e9 and got[1][0] - got[0][0] == 1_000_000


def test_buffered_samples_when_the_gpu_is_lost():
    now = _now_us()
    fake = BufferedNvml([(now - 1000, 1500)])
    dev = open_device(binding=fake)
    assert dev.read_clock_samples()
    fake.lost = True
    assert dev.read_clock_samples() is None
    assert dev.status.startswith("GPU lost")
    assert dev.read_links() == {"pcie_tx_kbps": None, "pcie_rx_kbps": None, "nvlink_tx_kbps": None,
                                "nvlink_rx_kbps": None}


def test_pcie_and_nvlink_throughput():
    fake = BufferedNvml()
    dev = open_device(binding=fake)
    first = dev.read_links()
    assert first == {"pcie_tx_kbps": 1200, "pcie_rx_kbps": 34000, "nvlink_tx_kbps": None, "nvlink_rx_kbps": None}
    fake.nvlink = {138: 2_000, 139: 5_000}             # +1000 KiB TX in 0.5 s
    fake.field_ts_us += 500_000
    second = dev.read_links()
    assert second["nvlink_tx_kbps"] == pytest.approx(2048.0) and second["nvlink_rx_kbps"] == 0.0


def test_no_pcie_no_nvlink_is_null_and_not_asked_again():
    fake = BufferedNvml()
    fake.not_supported = {"nvmlDeviceGetPcieThroughput"}
    fake.nvlink_return = 3   # NVML_ERROR_NOT_SUPPORTED for the field: no NVLink on this GPU
    dev = open_device(binding=fake)
    for _ in range(3):
        out = dev.read_links()
    assert out == {"pcie_tx_kbps": None, "pcie_rx_kbps": None, "nvlink_tx_kbps": None, "nvlink_rx_kbps": None}
    assert fake.calls["nvmlDeviceGetFieldValues"] == 1
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 2   # TX and RX, once each
