"""Clock panel: SM / memory clock with history, utilization, power, temperature, throttle reasons.

On CPU it shows the CPU clock and load, labelled with where the clock comes from (often only the
nominal MHz of /proc/cpuinfo: no cycle counter on these machines).
"""

from __future__ import annotations

from textual.content import Content

from ..render import fmt_mhz, na, safe_markup, spark, visible
from ..state import ViewState
from .quiet import QuietStatic

# Reasons that mean "slower than it could be"; gpu_idle is merely the GPU waiting for work.
BENIGN_REASONS = {"gpu_idle"}


class ClockPanel(QuietStatic):
    DEFAULT_CSS = """
    ClockPanel { border: round $primary; border-title-color: $foreground; padding: 0 1; height: 100%; }
    """

    def on_mount(self) -> None:
        self.set_title("clock")

    def show(self, state: ViewState) -> None:
        self.update(self.content(state, max(8, self.content_size.width)), layout=False)

    def content(self, state: ViewState, width: int) -> Content:
        h = state.header
        if h is None:
            return Content("no session yet")
        source = h.get("clock", {}).get("source", "unavailable")
        latest = state.samples[-1] if state.samples else {}
        if source == "nvml" or "sm_clock_mhz" in latest:
            return self._gpu(state, latest, h, width)
        return self._cpu(state, latest, h, source, width)

    def _gpu(self, state: ViewState, s: dict, h: dict, width: int) -> Content:
        self.set_title("GPU clock (NVML)")
        info = h.get("clock", {})
        hist = state.clock_history("sm_clock_mhz", last=width)
        lo = min(hist) if hist else None
        hi = info.get("sm_clock_max_mhz") or (max(hist) if hist else None)
        parts: list = [
            ("SM  ", "bold"), f"{na(s.get('sm_clock_mhz'))} / {fmt_mhz(info.get('sm_clock_max_mhz'))}\n",
            (spark(hist, width, lo=lo, hi=hi), "$primary"), "\n",
            ("MEM ", "bold"), f"{na(s.get('mem_clock_mhz'))} / {fmt_mhz(info.get('mem_clock_max_mhz'))}\n",
            ("util ", "bold"),
            f"GPU {na(s.get('gpu_util_pct'), unit='%')}  mem {na(s.get('mem_util_pct'), unit='%')}\n",
            ("power ", "bold"), f"{na(s.get('power_w'), unit=' W')}  ", ("temp ", "bold"),
            f"{na(s.get('temp_c'), unit=' °C')}\n",
        ]
        reasons = s.get("throttle_reasons")
        parts.append(("throttle ", "bold"))
        if reasons is None:
            parts.append("n/a")
        elif not reasons:
            parts.append(("none", "$success"))
        else:
            for r in reasons:
                parts.append((visible(r), "$text-muted" if r in BENIGN_REASONS else "bold reverse $error"))
                parts.append(" ")
        return Content.assemble(*parts)

    def _cpu(self, state: ViewState, s: dict, h: dict, source: str, width: int) -> Content:
        label = {"cpu-nominal": "nominal, /proc/cpuinfo", "cpufreq": "cpufreq, measured",
                 "unavailable": "unknown"}.get(source, source)
        self.set_title(f"CPU mode · clock {safe_markup(label)}")  # a border title reads markup
        hist = state.clock_history("cpu_clock_mhz", last=width)
        load = state.clock_history("cpu_util_pct", last=width)
        return Content.assemble(
            ("CPU clock ", "bold"), f"{fmt_mhz(s.get('cpu_clock_mhz'))}\n",
            (spark(hist, width), "$primary"), "\n",
            ("CPU load ", "bold"), f"{na(s.get('cpu_util_pct'), unit='%')}  ",
            ("process ", "bold"), f"{na(s.get('process_cpu_pct'), unit='%')}\n",
            (spark(load, width, lo=0, hi=100), "$secondary"), "\n",
            ("cycles = moment × ", "$text-muted"), (f"{visible(source)} clock", "$text-muted"),
        )
