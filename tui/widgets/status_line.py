"""One line that tells the truth about the session: CPU mode, NVML missing, hooks not firing,
engine errors, cut-off recordings. Never hidden behind zeros."""

from __future__ import annotations

from textual.content import Content

from ..render import visible
from ..state import ViewState
from .header import overhead_text
from .quiet import QuietStatic

LEVEL_STYLE = {"error": "bold reverse $error", "warning": "bold $warning", "info": "$text-muted"}


class StatusLine(QuietStatic):
    DEFAULT_CSS = """
    StatusLine { height: 1; background: $panel; padding: 0 1; }
    """

    def show(self, state: ViewState, backoff: str | None = None) -> None:
        """``backoff``: the app lowered the frame rate for a terminal that cannot keep up (tui/wire.py)."""
        self.update(self.content(state, backoff), layout=False)

    @staticmethod
    def content(state: ViewState, backoff: str | None = None) -> Content:
        if state.error:
            return Content.assemble(("engine error", LEVEL_STYLE["error"]), f" {visible(state.error)}",
                                    " — the recording is kept" if state.recording_path else "")
        if state.no_layer_timing:
            return Content.assemble(("no per-layer timing", LEVEL_STYLE["error"]),
                                    " hooks did not fire: CUDA graphs or a compiled model replay skip them")
        if backoff:
            return Content.assemble(("slow terminal", LEVEL_STYLE["warning"]), f" · {backoff}")
        if state.statuses:
            s = state.statuses[-1]
            return Content.assemble((visible(s.level), LEVEL_STYLE.get(s.level, "")), f" {visible(s.message)}")
        if state.header is not None:
            d = state.header.get("device", {})
            cost = overhead_text(state)
            cost_part = (f" · {cost}", "$text-muted") if cost else ""
            if d.get("kind") == "cpu":
                src = state.header.get("clock", {}).get("source")
                return Content.assemble(("CPU mode", "bold"),
                                        f" · no GPU in use · cycles from the {visible(src)} clock", cost_part,
                                        ("   ? help", "$text-muted"))
            if cost:
                return Content.assemble((cost, "$text-muted"), ("   ? help", "$text-muted"))
            return Content.assemble(("? help", "$text-muted"))
        return Content(visible(state.loading or ""))
