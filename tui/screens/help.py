"""Every key, on one screen (``?``)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]llm-moments[/b] — each layer's moment (its time inside one step) beside the clock cycles it took.

[b]Main screen[/b]
  ↑ ↓ j k  PgUp PgDn   move in the layer table
  enter / double click open the layer's detail screen (history, histogram, sub-layers, slowest moments);
                       there, b (live): ops mode, each operator the layer runs timed for 8 steps
                       (op, calls, time, share of the layer; the layer runs several times slower meanwhile)
  s                    sort by the next column (order, last, mean, p50, p99, cycles, share, GFLOP/s, roof%)
  S                    reverse the sort;   click a column title: sort by it
  space / p            pause: the table and step views freeze, clocks keep moving (replay: pause playback)
  r                    start / stop recording this session to a file (live sessions)
  m                    narrow terminals: heatmap in place of the table
  h                    heatmap colour scale: all layers (log) / each layer's own range
  v                    heatmap values: moments / gaps (time before each top-level layer since the
                       previous one ended: launch gaps, Python between layers)
  f                    roofline: each layer's achieved FLOP/s against its arithmetic intensity, under
                       the machine's roof (a: sub-layers too)
  o                    outlier moments: step, layer, time against its median, clock, throttle reasons
  d                    the diff of two recordings (moments replay A --compare B)
  c                    moments compare: each variant's p50, ratio [interval], verdict per layer.  There:
                       n step kind, l clock-normalized, v variant the table shows, ←/→ more, c / esc back
  w                    all ranks of a sharded session: per layer each rank's p50 / latest moment, skew,
                       culprit rank (slowest compute: moment − collective waits); a row per rank with its
                       clock and step p50 against the worst rank.  There: m heatmap layers × ranks,
                       l p50 / latest, h heat scale, esc back
  t                    next theme (dark, light, high contrast)
  x                    save an SVG screenshot in the current folder
  ?                    this help;   q / ctrl+c   quit (the recording is closed properly)

[b]Refresh[/b]  numbers redraw twice a second (--refresh HZ, 0.1 to 20), only the cells that changed;
  keys are answered at once whatever the rate. --lean, for very slow links: 16 colours, no animation,
  numbers once a second. When the terminal cannot keep up (a slow SSH link), the rate backs off by
  itself and the status line says so, until it catches up.

[b]Replay[/b]
  .  step one step (pauses)    [ ]  back / forward 10 steps    { }  100 steps
  g / G  start / end           + -  speed ×2 / ÷2

[b]Marks[/b]
  [b]![/b]  the newest moment is an outlier against the layer's own history (robust, by MAD)
  [b]▲[/b]  among the slowest top-level layers
  —  no timing: the layer's hooks did not fire

[b]Columns[/b]  last / mean / p50 / p99 moment in ms (over the last 256 steps); cycles = moment × clock
  (GPU SM clock from NVML, or the CPU clock — labelled nominal when that is all there is);
  share = the layer's part of the step time; GFLOP/s achieved and roof% = of the attainable roof at the
  layer's arithmetic intensity, m / c = memory- / compute-bound (work counted from the modules' shapes);
  gap ms = mean time before a top-level layer since the previous one ended (wide terminals).
"""


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,question_mark,q", "app.pop_screen", "close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 100; max-width: 95%; height: 90%; border: round $primary;
                                  background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll() as scroll:
            # on the border, so it shows however far the text runs below a short terminal
            scroll.border_title = "keys"
            scroll.border_subtitle = "esc or ? to close · ↑ ↓ scroll"
            yield Static(HELP)
