"""llm_moments.engine.core.sampler: CPU clock sources on fake /proc and /sys trees, Sampler on a scripted source."""

from __future__ import annotations

import threading
import time

import pytest

from llm_moments.engine.core import sampler as sampler_mod
from llm_moments.engine.core.nvml import NvmlUnavailable
from llm_moments.engine.core.sampler import CpuClockSource, Sampler, make_clock_source

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9654
cpu MHz\t\t: 2400.000

processor\t: 1
model name\t: AMD EPYC 9654
cpu MHz\t\t: 2600.000
"""


def _proc(tmp_path, text=CPUINFO):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cpuinfo").write_text(text)
    return proc


def _cpufreq(tmp_path, khz):
    root = tmp_path / "sys"
    for i, value in enumerate(khz):
        d = root / f"devices/system/cpu/cpu{i}/cpufreq"
        d.mkdir(parents=True)
        (d / "scaling_cur_freq").write_text(f"{value}\n")
    return root


# -- CPU clock source ----------------------------------------------------------------------------


def test_cpu_nominal_from_cpuinfo(tmp_path):
    src = CpuClockSource(proc_root=str(_proc(tmp_path)), sys_root=str(tmp_path / "nosys"))
    assert src.name == "cpu-nominal"
    assert src.read_fast() == {"cpu_clock_mhz": 2500.0, "clock_mhz": 2500.0}
    info = src.info()
    assert info["name"] == "AMD EPYC 9654"
    assert info["nominal_mhz"] == 2500.0 and info["clock_from"] == "/proc/cpuinfo"
    assert info["cores"] >= 1
    slow = src.read_slow()
    assert set(slow) == {"cpu_util_pct", "process_cpu_pct"}
    assert src.status is None


def test_cpu_nominal_is_read_once(tmp_path):
    proc = _proc(tmp_path)
    src = CpuClockSource(proc_root=str(proc), sys_root=str(tmp_path / "nosys"))
    (proc / "cpuinfo").write_text(CPUINFO.replace("2400.000", "1000.000"))
    assert src.read_fast()["clock_mhz"] == 2500.0


def test_cpufreq_is_live(tmp_path):
    sys_root = _cpufreq(tmp_path, [3000000, 2000000])  # kHz
    src = CpuClockSource(proc_root=str(_proc(tmp_path)), sys_root=str(sys_root))
    assert src.name == "cpufreq"
    assert src.read_fast() == {"cpu_clock_mhz": 2500.0, "clock_mhz": 2500.0}
    (sys_root / "devices/system/cpu/cpu1/cpufreq/scaling_cur_freq").write_text("1000000\n")
    assert src.read_fast()["clock_mhz"] == 2000.0
    assert src.info()["clock_from"] == "cpufreq"


def test_cpu_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(sampler_mod, "_psutil_freq", lambda: None)
    src = CpuClockSource(proc_root=str(tmp_path / "none"), sys_root=str(tmp_path / "none"))
    assert src.name == "unavailable"
    assert src.read_fast() == {"cpu_clock_mhz": None, "clock_mhz": None}
    assert src.status


def test_cpu_psutil_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(sampler_mod, "_psutil_freq", lambda: 3200.0)
    src = CpuClockSource(proc_root=str(tmp_path / "none"), sys_root=str(tmp_path / "none"))
    assert src.name == "cpu-nominal"
    assert src.read_fast()["clock_mhz"] == 3200.0
    assert src.info()["clock_from"] == "psutil"


# -- make_clock_source ---------------------------------------------------------------------------


def test_make_clock_source_cpu():
    src = make_clock_source("cpu")
    assert src.name in {"cpufreq", "cpu-nominal", "unavailable"}
    assert "clock_mhz" in src.read_fast()


def test_make_clock_source_cuda_without_nvml(monkeypatch):
    def unavailable(index=0, uuid=None, binding=None):
        raise NvmlUnavailable("NVML not available: the NVIDIA driver is not loaded (test)")

    monkeypatch.setattr(sampler_mod, "open_device", unavailable)
    monkeypatch.setattr(sampler_mod, "_cuda_uuid", lambda index: None)
    src = make_clock_source("cuda:0")
    assert src.name == "unavailable"
    assert src.status == "NVML not available: the NVIDIA driver is not loaded (test)"
    fast = src.read_fast()
    assert fast["clock_mhz"] is None and "sm_clock_mhz" in fast
    assert all(v is None for v in src.read_slow().values())
    # The sampler runs on it and reports the status once.
    seen = []
    s = Sampler(src, t0_ns=0, on_status=seen.append)
    s._tick(now_ns=1)
    s._tick(now_ns=2)
    assert seen == [src.status]


def test_make_clock_source_cuda_uses_uuid(monkeypatch):
    got = {}

    def fake_open(index=0, uuid=None, binding=None):
        got.update(index=index, uuid=uuid)
        raise NvmlUnavailable("NVML not available: test")

    monkeypatch.setattr(sampler_mod, "open_device", fake_open)
    monkeypatch.setattr(sampler_mod, "_cuda_uuid", lambda index: "GPU-xyz")
    make_clock_source("cuda:1")
    assert got == {"index": 1, "uuid": "GPU-xyz"}


def test_make_clock_source_unknown_device():
    src = make_clock_source("mps")
    assert src.name == "unavailable" and "mps" in src.status


def test_make_clock_source_real_cuda_never_raises():
    src = make_clock_source("cuda")  # on this machine: no GPU, so a status; with one, NVML
    assert src.name in {"nvml", "unavailable"}
    assert "clock_mhz" in src.read_fast()
    src.close()


# -- Sampler on a scripted source ----------------------------------------------------------------


class ScriptedSource:
    """Clocks from a list (repeating the last), slow reads counted."""

    name = "fake"

    def __init__(self, clocks=(1000.0,), reasons=None):
        self.clocks = list(clocks)
        self.reasons = list(reasons) if reasons else None
        self.fast_calls = self.slow_calls = 0
        self.status = None

    def read_fast(self):
        i = min(self.fast_calls, len(self.clocks) - 1)
        r = self.reasons[min(self.fast_calls, len(self.reasons) - 1)] if self.reasons else []
        self.fast_calls += 1
        return {"clock_mhz": self.clocks[i], "throttle_reasons": r}

    def read_slow(self):
        self.slow_calls += 1
        return {"util_pct": self.slow_calls}


def test_rate_validation():
    src = ScriptedSource()
    for bad in (0, -1, 20.5, 100, float("nan"), True, "10"):
        with pytest.raises(ValueError, match="clock_hz"):
            Sampler(src, clock_hz=bad)
    for bad in (0, 10.5, 50):
        with pytest.raises(ValueError, match="util_hz"):
            Sampler(src, util_hz=bad)
    Sampler(src, clock_hz=20, util_hz=10)  # the limits themselves are allowed


def test_deterministic_ticks_and_slow_rate():
    src = ScriptedSource(clocks=[1000, 1100, 1200, 1300, 1400, 1500])
    s = Sampler(src, clock_hz=10, util_hz=5, t0_ns=1_000)
    ms = 1_000_000
    samples = [s._tick(now_ns=1_000 + i * 100 * ms) for i in range(6)]
    assert [x["t_ns"] for x in samples] == [i * 100 * ms for i in range(6)]
    assert [x["clock_mhz"] for x in samples] == [1000, 1100, 1200, 1300, 1400, 1500]
    # util at 5 Hz with clocks at 10 Hz: every other tick reads slow; others repeat the value.
    assert [x["util_pct"] for x in samples] == [1, 1, 2, 2, 3, 3]
    assert src.slow_calls == 3
    assert all(set(x) == {"type", "t_ns", "source", "clock_mhz", "throttle_reasons",
                          "util_pct"} for x in samples)
    assert samples[0]["type"] == "sample" and samples[0]["source"] == "fake"
    assert s.latest() is samples[-1]


def test_clock_between():
    src = ScriptedSource(
        clocks=[1000, 1100, 1200, 1300, 1400],
        reasons=[[], ["sw_power_cap"], ["hw_thermal"], ["sw_power_cap"], []],
    )
    s = Sampler(src, t0_ns=0)
    for t in (0, 100, 200, 300, 400):
        s._tick(now_ns=t)
    # Samples inside: mean of their clocks, union of reasons in first-seen (newest-first) order.
    mhz, n, reasons = s.clock_between(100, 300)
    assert (mhz, n) == (1200.0, 3)
    assert sorted(reasons) == ["hw_thermal", "sw_power_cap"]
    assert s.clock_between(400, 400) == (1400.0, 1, [])
    # No sample inside: the nearest one, count 0.
    assert s.clock_between(110, 140) == (1100, 0, ["sw_power_cap"])
    assert s.clock_between(160, 190) == (1200, 0, ["hw_thermal"])
    assert s.clock_between(500, 900) == (1400, 0, [])  # after the newest
    assert s.clock_between(-50, -10) == (1000, 0, [])  # before the oldest


def test_clock_between_empty_and_none_clocks():
    s = Sampler(ScriptedSource(clocks=[None]), t0_ns=0)
    assert s.clock_between(0, 10) == (None, 0, [])
    s._tick(now_ns=5)
    assert s.clock_between(0, 10) == (None, 1, [])


def test_history_is_bounded():
    s = Sampler(ScriptedSource(), t0_ns=0, history=3)
    for t in range(10):
        s._tick(now_ns=t)
    assert [x["t_ns"] for x in s.samples()] == [7, 8, 9]


def test_thread_rate_and_monotonic_time():
    got = []
    s = Sampler(ScriptedSource(), clock_hz=20, util_hz=10, on_sample=got.append)
    s.start()
    assert s.latest() is not None  # a sample is taken right at start
    time.sleep(0.5)
    s.stop()
    n = len(got)
    assert 5 <= n <= 14  # 20 Hz for 0.5 s is ~11; generous bounds for a busy machine
    ts = [x["t_ns"] for x in got]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    time.sleep(0.12)
    assert len(got) == n  # stopped means stopped
    assert not s.running


def test_callback_exception_does_not_kill_thread():
    calls = []
    first_two = threading.Event()

    def bad(sample):
        calls.append(sample)
        if len(calls) >= 2:
            first_two.set()
        raise RuntimeError("consumer bug")

    s = Sampler(ScriptedSource(), clock_hz=20, on_sample=bad).start()
    assert first_two.wait(2.0)
    assert s.running
    s.stop()
    assert s.callback_errors >= 2


def test_failing_source_is_a_status_not_a_crash():
    class Broken(ScriptedSource):
        def read_fast(self):
            if self.fast_calls:
                raise OSError("device vanished")
            return super().read_fast()

    seen = []
    s = Sampler(Broken(), t0_ns=0, on_status=seen.append)
    first = s._tick(now_ns=1)
    second = s._tick(now_ns=2)
    assert set(first) == set(second)  # same keys, missing ones None
    assert second["clock_mhz"] is None
    assert len(seen) == 1 and "device vanished" in seen[0]


def test_stop_is_idempotent_and_no_restart():
    s = Sampler(ScriptedSource())
    s.stop()  # before start: fine
    s.start()
    s.stop()
    s.stop()
    with pytest.raises(RuntimeError):
        s.start()
    with Sampler(ScriptedSource()) as t:
        assert t.running
    assert not t.running


# -- several GPUs: one tick reads every device ------------------------------------------------------


class DeviceSource(ScriptedSource):
    def info(self):
        return {"name": f"gpu at {self.clocks[0]}"}

    def close(self):
        self.closed = True


def test_multi_source_sample_keeps_the_primary_at_top_level():
    from llm_moments.engine.core.sampler import MultiClockSource

    a, b = DeviceSource(clocks=[1980.0]), DeviceSource(clocks=[1410.0], reasons=[["hw_thermal"]])
    src = MultiClockSource({"cuda:0": a, "cuda:1": b})
    assert src.devices == ["cuda:0", "cuda:1"] and src.name == "fake"
    s = Sampler(src, clock_hz=10, util_hz=5, t0_ns=0)
    x = s._tick(now_ns=0)
    # the one-GPU fields, as before, are the primary device's ...
    assert x["clock_mhz"] == 1980.0 and x["throttle_reasons"] == [] and x["util_pct"] == 1
    # ... and every device's fast and slow fields are under devices
    assert x["devices"] == {"cuda:0": {"clock_mhz": 1980.0, "throttle_reasons": [], "util_pct": 1},
                            "cuda:1": {"clock_mhz": 1410.0, "throttle_reasons": ["hw_thermal"], "util_pct": 1}}
    assert a.fast_calls == b.fast_calls == 1  # one read of each device per tick (rate ≤ 20 Hz each)
    info = src.info()
    assert info["name"] == "gpu at 1980.0" and info["devices"]["cuda:1"]["name"] == "gpu at 1410.0"
    src.close()
    assert a.closed and b.closed


def test_clock_between_per_device():
    from llm_moments.engine.core.sampler import MultiClockSource

    src = MultiClockSource({"cuda:0": ScriptedSource(clocks=[1000, 1100, 1200]),
                            "cuda:1": ScriptedSource(clocks=[500, 600, 700], reasons=[[], ["sw_power_cap"], []])})
    s = Sampler(src, t0_ns=0)
    for t in (0, 100, 200):
        s._tick(now_ns=t)
    assert s.clock_between(0, 100) == (1050.0, 2, [])
    assert s.clock_between(0, 100, "cuda:1") == (550.0, 2, ["sw_power_cap"])
    assert s.clock_between(160, 190, "cuda:1") == (700, 0, [])       # nearest sample, its device's clock
    assert s.clock_between(0, 200, "cuda:7") == (None, 3, [])        # a device no sample has


def test_multi_source_survives_a_raising_device():
    from llm_moments.engine.core.sampler import MultiClockSource

    class Broken(ScriptedSource):
        def read_fast(self):
            if self.fast_calls:
                raise RuntimeError("boom")
            return super().read_fast()

    src = MultiClockSource({"cuda:0": ScriptedSource(clocks=[1000]), "cuda:1": Broken(clocks=[900])})
    assert src.read_fast()["devices"]["cuda:1"]["clock_mhz"] == 900
    assert src.read_fast()["devices"]["cuda:1"] == {"clock_mhz": None, "throttle_reasons": None}


def test_make_clock_sources(monkeypatch):
    from llm_moments.engine.core.sampler import MultiClockSource, make_clock_sources

    def no_nvml(index=0, uuid=None, binding=None):
        raise NvmlUnavailable("NVML not available: test")

    monkeypatch.setattr(sampler_mod, "open_device", no_nvml)
    one = make_clock_sources(["cuda:0"])
    assert not isinstance(one, MultiClockSource) and one.name == "unavailable"
    two = make_clock_sources(["cuda:0", "cuda:1", "cuda:1"])
    assert isinstance(two, MultiClockSource) and two.devices == ["cuda:0", "cuda:1"]
    assert two.status == "cuda:0: NVML not available: test"
    assert make_clock_sources(["cpu"]).name in ("cpufreq", "cpu-nominal", "unavailable")
