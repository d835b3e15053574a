"""The Textual app: wiring only. A source feeds records, the state folds them, screens draw them.

The source is drained and folded on a fast timer (``DRAIN_HZ``), so the state is always fresh and the
engine never waits; the numbers are drawn at ``refresh_hz`` (2 Hz by default: as fast as a person
reads them, and few bytes over SSH, issue #11). A key (cursor, sort, a screen) draws at once, from the
newest state, whatever the rate. When the terminal cannot take what is written (a slow link: the
driver's writes block, tui/wire.py), the rate backs off by itself and the status line says so.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.app import App, ScreenStackError
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen

from llm_moments.engine.errors import MomentsError

from . import themes as theme_files
from .render import visible
from .screens.compare import CompareScreen
from .screens.detail import LayerDetailScreen
from .screens.diff import DiffScreen
from .screens.help import HelpScreen
from .screens.main import MainScreen
from .screens.outliers import OutliersScreen
from .screens.ranks import RanksScreen
from .screens.record import RecordDialog
from .screens.roofline import RooflineScreen
from .sources import Source
from .state import ViewState
from .widgets.heatmap import Heatmap
from .widgets.layer_table import LayerTable
from .wire import BackOff, set_colors


class MomentsApp(App):
    TITLE = "llm-moments"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        # q is not a priority binding, so that a screen's own q (help: close) comes first
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
        Binding("question_mark", "help", "help"),
        Binding("space,p", "toggle_pause", "pause"),
        Binding("s", "sort", "sort"),
        Binding("S", "reverse_sort", "reverse", show=False),
        Binding("r", "record", "record"),
        Binding("t", "next_theme", "theme"),
        Binding("x", "screenshot", "screenshot"),
        Binding("f", "roofline", "roofline"),
        Binding("o", "outliers", "outliers"),
        Binding("d", "diff", "diff", show=False),
        Binding("w", "ranks", "ranks", show=False),
        Binding("c", "compare", "compare", show=False),
        Binding("m", "toggle_heatmap", "heatmap", show=False),
        Binding("h", "heatmap_scale", "heat scale", show=False),
        Binding("v", "heatmap_values", "moments / gaps", show=False),
        Binding("full_stop", "replay_step", "step", show=False),
        Binding("left_square_bracket", "replay_seek(-10)", show=False),
        Binding("right_square_bracket", "replay_seek(10)", show=False),
        Binding("left_curly_bracket", "replay_seek(-100)", show=False),
        Binding("right_curly_bracket", "replay_seek(100)", show=False),
        Binding("g", "replay_seek(-1000000000)", show=False),
        Binding("G", "replay_seek(1000000000)", show=False),
        Binding("plus", "replay_speed(2.0)", show=False),
        Binding("minus", "replay_speed(0.5)", show=False),
    ]

    DRAIN_HZ = 10.0      # the source is drained and folded this often, whatever the refresh rate
    SLOW_HZ = 4.0        # the step panel and heatmap (hundreds of cells) at most this often
    REFRESH_HZ = 2.0     # numbers a person can read; --refresh
    LEAN_REFRESH_HZ = 1.0

    def __init__(self, source: Source, theme: str | None = None, refresh_hz: float | None = None,
                 screenshot_dir: str | Path = ".", clock: Callable[[], float] = time.time,
                 compare: tuple[Any, str, str] | None = None, lean: bool = False,
                 monotonic: Callable[[], float] = time.monotonic):
        super().__init__()
        self.compare = compare  # (engine.diff.Diff, name of A, name of B) for replay --compare
        self.source = source
        self.state = ViewState(mode=source.mode, primary_rank=getattr(source, "primary_rank", None))
        self.lean = lean
        self.refresh_hz = refresh_hz or (self.LEAN_REFRESH_HZ if lean else self.REFRESH_HZ)
        self.backoff = BackOff(self.refresh_hz)
        if lean:  # very slow links: 16 colours (short colour codes), no animation
            self.animation_level = "none"
            set_colors(self.console, "standard")
        self.screenshot_dir = Path(screenshot_dir)
        self._clock = clock
        self._monotonic = monotonic
        self._themes, self._theme_name, self._theme_warning = theme_files.resolve(theme)
        self._shown: tuple[int, Any] | None = None
        self._slow_shown: tuple[int, Any] | None = None
        self._drawn_at = self._slow_at = -1e9
        self.frames = 0
        self.main: MainScreen | None = None

    # -- life cycle -------------------------------------------------------------------------------
    def on_mount(self) -> None:
        for theme in self._themes:
            self.register_theme(theme)
        self.theme = self._theme_name
        self.main = MainScreen()
        self.push_screen(self.main)
        if getattr(self.source, "is_compare", False):   # `moments compare` opens on its compare screen
            self.push_screen(CompareScreen())
        if self._theme_warning:
            self.notify(visible(self._theme_warning), severity="warning", timeout=8, markup=False)
        self.source.start()
        self.call_after_refresh(self.refresh_frame)
        self._timer = self.set_interval(1 / max(self.DRAIN_HZ, self.refresh_hz), self._tick)

    def on_unmount(self) -> None:
        if self.main is not None:
            self.main.ready = False
        self.source.stop()

    def _tick(self) -> None:
        """The timer: fold what arrived; draw when a frame is due at the (backed-off) refresh rate."""
        self.state.apply(self.source.drain())
        now = self._monotonic()
        self._watch_terminal(now)   # a new rate is in the frame's key: the status line says it
        if now - self._drawn_at >= 1 / self.backoff.hz - self._slack():
            self._draw(now)
        elif self._slow_shown != self._shown:
            self._draw(now, slow_only=True)   # the slow panels skipped the last change: draw them when due

    def refresh_frame(self) -> None:
        """One frame now (a key, a test): drain the source, fold, draw whatever changed, slow panels too."""
        self.state.apply(self.source.drain())
        self._draw(self._monotonic(), force_slow=True)

    def _slow_period(self) -> float:
        """The step panel and heatmap: with every frame up to SLOW_HZ, every other frame when lean."""
        return max(1 / self.SLOW_HZ, (2 if self.lean else 1) / self.backoff.hz)

    def _watch_terminal(self, now: float) -> bool:
        """Back off when the terminal cannot keep up with the writes (tui/wire.py); True on a change."""
        driver = self._driver
        meter = getattr(driver, "write_meter", None)
        if meter is None:
            return False
        return self.backoff.update(meter.busy(now), getattr(driver, "queued_writes", lambda: 0)(), now)

    def _draw(self, now: float, force_slow: bool = False, slow_only: bool = False) -> None:
        """Draw only what changed since the last frame; the slow panels at their own rate."""
        note = self.source.note()
        if self.main is None or not self.main.ready or not self.screen_stack:
            return   # not mounted yet, or a tick that came while the app shuts down (no screens left)
        if isinstance(self.screen, RanksScreen):   # the merged view alone: the main screen is hidden
            key = (self.state.version, note, self.theme, self.size, "ranks")
            if key != self._shown and self.screen.ready:
                self._shown = key
                try:
                    self.screen.show(self.state, note)
                except NoMatches:  # the screen is being torn down while a tick was due
                    return
                self._drawn_at = now
                self.frames += 1
            return
        # the layout (wide or not) changes on the screen's own resize event, which may come a tick later
        key = (self.state.version, note, self.theme, self.size, self.main.wide, self.backoff.hz)
        slow = key != self._slow_shown and (force_slow or now - self._slow_at >= self._slow_period() - self._slack())
        if (slow_only or key == self._shown) and not slow:
            return
        frozen = self.state.paused and self.state.mode != "replay"
        try:
            self.main.show(self.state, note, frozen, slow=slow, fast=not slow_only, backoff=self.backoff.note)
        except NoMatches:  # the screen is being torn down (quit) while a tick was due
            return
        if slow:
            self._slow_shown, self._slow_at = key, now
        if not slow_only:
            self._shown, self._drawn_at = key, now
            if isinstance(self.screen, self._FOLLOWING) and not frozen:
                self.screen.show(self.state)
        self.frames += 1

    # screens over the main one that draw from the state on every frame
    _FOLLOWING = (LayerDetailScreen, RooflineScreen, OutliersScreen, CompareScreen)

    def _slack(self) -> float:
        """A tick that comes a little early still counts: the timer runs at DRAIN_HZ, frames at refresh_hz."""
        return 0.5 / max(self.DRAIN_HZ, self.refresh_hz)

    @property
    def _background_screens(self) -> list[Screen]:
        """The screens that show through the top one. Textual counts the screen under the top one
        even when the top one is opaque (detail, roofline, …): it then lays that screen out and
        repaints, on the top screen, every region that changes below it, which is all of the main
        screen's frames over SSH (issue #11). An opaque screen hides everything below it."""
        try:
            top = self.screen
        except ScreenStackError:
            return []
        if not isinstance(top, ModalScreen) and top.styles.background.a == 1:
            return []
        return super()._background_screens

    def redraw(self) -> None:
        """A key changed what is shown: draw it now, from the newest state."""
        self._shown = self._slow_shown = None
        self.refresh_frame()

    # -- actions ----------------------------------------------------------------------------------
    async def action_quit(self) -> None:
        self.notify("stopping the session…", timeout=30)
        await asyncio.to_thread(self.source.stop)
        self.exit()

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
        else:
            self.push_screen(HelpScreen())

    def action_roofline(self) -> None:
        if not isinstance(self.screen, RooflineScreen):
            self.push_screen(RooflineScreen())

    def action_outliers(self) -> None:
        if not isinstance(self.screen, OutliersScreen):
            self.push_screen(OutliersScreen())

    def action_diff(self) -> None:
        if self.compare is None:
            self.notify("no comparison: start with `moments replay A.jsonl --compare B.jsonl`", severity="warning")
        elif not isinstance(self.screen, DiffScreen):
            self.push_screen(DiffScreen(*self.compare))

    def action_compare(self) -> None:
        if isinstance(self.screen, CompareScreen):
            self.pop_screen()
        elif getattr(self.source, "is_compare", False):
            self.push_screen(CompareScreen())
            self._shown = None
        else:
            self.notify("no compare here: `moments compare --variant 'A:' --variant 'B: OPTIONS'` runs one",
                        severity="warning", timeout=4)

    def action_ranks(self) -> None:
        if isinstance(self.screen, RanksScreen):
            self.pop_screen()
        elif self.state.ranks is None:
            self.notify("one rank only: the merged view is for sharded sessions (moments run --tp N, "
                        "or replay / watch of run.jsonl rank files)", severity="warning", timeout=4)
        else:
            self.push_screen(RanksScreen())
            self._shown = None

    def action_toggle_pause(self) -> None:
        if self.state.mode == "replay":
            self.state.paused = self.source.toggle_pause()
        else:
            self.state.paused = not self.state.paused
        self.state.version += 1
        self.redraw()

    def action_sort(self) -> None:
        self.state.cycle_sort()
        self.redraw()

    def action_reverse_sort(self) -> None:
        self.state.sort_reverse = not self.state.sort_reverse
        self.state.version += 1
        self.redraw()

    def on_layer_table_sort_requested(self, message: LayerTable.SortRequested) -> None:
        if self.state.sort_key == message.key:
            self.state.sort_reverse = not self.state.sort_reverse
        self.state.sort_key = message.key
        self.state.version += 1
        self.redraw()

    def on_layer_table_selected(self, message: LayerTable.Selected) -> None:
        self.push_screen(LayerDetailScreen(message.index))

    def action_record(self) -> None:
        if not self.source.can_record:
            self.notify(f"recording is for live sessions; this is a {self.state.mode}", severity="warning")
            return
        if self.state.recording_path:
            path = self.state.recording_path
            self.source.stop_recording()
            self.state.recording_path = None
            self.state.version += 1
            self.notify(f"recording closed: {visible(path)}", markup=False)
            return
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self._clock()))
        name = next(n for n in (f"moments-{stamp}{f'-{i}' if i else ''}.jsonl" for i in range(1000))
                    if not os.path.lexists(n))  # a name that is free now; the file is created exclusively
        self.push_screen(RecordDialog(name), self._start_recording)

    def _start_recording(self, path: str | None) -> None:
        if not path:
            return
        if os.path.lexists(os.path.expanduser(path)):  # the UI never replaces a file (no --force here)
            self.notify(visible(f"not recording: {path} already exists; give another name"),
                        severity="error", timeout=8, markup=False)
            return
        try:
            real = self.source.start_recording(path)
        except MomentsError as exc:
            self.notify(visible(exc), severity="error", timeout=8, markup=False)
            return
        self.state.recording_path = real
        self.state.version += 1
        self.notify(f"recording to {visible(real)}", markup=False)

    def action_next_theme(self) -> None:
        names = [t.name for t in self._themes]
        i = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(i + 1) % len(names)]
        self.notify(f"theme: {self.theme}", timeout=2)
        self.redraw()

    def action_screenshot(self) -> None:
        """An SVG of the screen in ``screenshot_dir``: moments-YYYYmmdd-HHMMSS.svg, else -1, -2, ... on
        the end of the name: a new file, created exclusively, never an existing one or a symlink's
        target."""
        from llm_moments.engine.core import files

        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self._clock()))
        try:
            svg = self.export_screenshot()
            fd, path = files.create_unique(self.screenshot_dir, f"moments-{stamp}", ".svg")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(svg)
        except OSError as exc:
            self.notify(f"screenshot not saved: {visible(exc)}", severity="error", markup=False)
            return
        self.notify(f"screenshot saved: {visible(path)}", markup=False)

    def action_toggle_heatmap(self) -> None:
        if self.main is not None:
            self.main.toggle_heatmap()
            self.redraw()

    def action_heatmap_values(self) -> None:
        """The heatmap's values: moments, or the gap before each top-level layer."""
        for heatmap in self.query(Heatmap) if self.main is None else self.main.query(Heatmap):
            heatmap.toggle_values()
        self.redraw()

    def action_heatmap_scale(self) -> None:
        for heatmap in self.query(Heatmap) if self.main is None else self.main.query(Heatmap):
            heatmap.toggle_scale()
        self.redraw()

    # -- replay -----------------------------------------------------------------------------------
    def _replay(self) -> Any:
        if self.state.mode != "replay":
            self.notify("step and seek are for replays", severity="warning", timeout=2)
            return None
        return self.source

    def action_replay_step(self) -> None:
        if (src := self._replay()) is not None:
            src.step(1)
            self.state.paused = True
            self.redraw()

    def action_replay_seek(self, delta: int) -> None:
        if (src := self._replay()) is not None:
            src.seek(delta)
            self.redraw()

    def action_replay_speed(self, factor: float) -> None:
        if (src := self._replay()) is not None:
            src.speed = min(64.0, max(1 / 16, src.speed * factor))
            self.notify(f"speed ×{src.speed:g}", timeout=2)
            self.redraw()
