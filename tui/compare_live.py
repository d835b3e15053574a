"""The live ``moments compare``: its engine child, and the split of its records between two screens.

``CompareLiveSource`` is a LiveSource (tui/sources.py: a child process, records on its stdout, commands
on its stdin, the same hang-up and signal handling) whose child is engine/session/compare_stream.py,
started with every run and compare option derived from the parser's own definitions (``compare_argv``).

``CompareFeed`` splits what the child sends. The compare state (tui/compare_state.py) folds the header,
the ``compare`` records (the engine's analysis, redone every few rounds) and counts steps per variant.
The main screen's state gets the records of **one variant only** — its steps, its texts and its
monitor's cost; the session's samples, statuses, recording notes and footer — so its layer table,
heatmap and detail never mix variants, and the header it gets names the variant (after the model's
name). Choosing another variant (``v`` on the compare screen) restarts the main view: a ``reset``,
the header as that variant's (its label, its dtype), the newest clock samples, then that variant's
newest steps from a bounded buffer per variant.
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Callable, Iterable
from typing import Any

from llm_moments.engine.errors import MomentsError

from .compare_state import CompareState
from .sources import LiveSource

CHILD_MODULE = "llm_moments.engine.session.compare_stream"
BUFFER_STEPS = 4096          # steps kept for switching, all variants together
MIN_BUFFER_STEPS = 256       # per variant at least: the main table's statistics window
SAMPLES_KEPT = 600           # the clock panel's history (ViewState.samples holds as many)


class CompareFeed:
    """Records in (a drain of the child), the main screen's records out; the compare state on the side."""

    def __init__(self, state: CompareState | None = None):
        self.state = state if state is not None else CompareState()
        self._header: dict[str, Any] | None = None
        self._footer: dict[str, Any] | None = None
        self._steps: dict[str, collections.deque] = {}
        self._samples: collections.deque = collections.deque(maxlen=SAMPLES_KEPT)
        self._restart = False

    @property
    def shown(self) -> str | None:
        return self.state.shown

    def show_variant(self, label: str) -> bool:
        """Feed the main screen ``label``'s steps from the next drain on; False for an unknown label."""
        if label not in self.state.labels:
            return False
        if label != self.state.shown:
            self.state.shown = label
            self.state.version += 1
            self._restart = True
        return True

    def split(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._restarted() if self._restart else []
        state = self.state
        for r in records:
            rtype = r.get("type")
            if rtype in ("header", "compare", "compare_output", "step", "footer"):
                state.apply((r,))
            if rtype == "header":
                self._on_header(r)
                out.append(self._main_header())
                continue
            if rtype == "step":
                label = str(r.get("variant"))
                buf = self._steps.get(label)
                if buf is not None:
                    buf.append(r)
                if label == state.shown:
                    out.append(r)
                continue
            if rtype == "text" and r.get("variant") != state.shown:
                continue
            if rtype == "overhead" and state.shown not in r.get("variants", (state.shown,)):
                continue   # another model object's monitor: its cost is not this variant's
            if rtype == "sample":
                self._samples.append(r)
            elif rtype == "footer":
                self._footer = r
            # Everything else reaches the main state too; ``compare`` records it ignores, but they count
            # as a change there, which is what makes the app draw the compare screen's new figures.
            out.append(r)
        return out

    def _on_header(self, h: dict[str, Any]) -> None:
        self._header, self._footer = h, None
        labels = self.state.labels
        per = max(MIN_BUFFER_STEPS, BUFFER_STEPS // max(len(labels), 1))
        self._steps = {label: collections.deque(maxlen=per) for label in labels}
        self._samples.clear()
        self._restart = False

    def _main_header(self) -> dict[str, Any]:
        """The session's header as the shown variant's: its label (after the model's name, which the
        main screen's header shows first, so it is never cut off), and its dtype where it sets one."""
        assert self._header is not None
        h = dict(self._header)
        label = self.state.shown
        h["variant"] = label
        model = dict(h.get("model") or {})
        base = " (baseline)" if label == self.state.baseline else ""
        model["name"] = f"{model.get('name')} · variant {label}{base}"
        settings = (self.state.info.get(label) or {}).get("settings")
        dtype = settings.get("dtype") if isinstance(settings, dict) else None
        if dtype:
            model["dtype"] = str(dtype)
        h["model"] = model
        return h

    def _restarted(self) -> list[dict[str, Any]]:
        self._restart = False
        if self._header is None:
            return []
        out: list[dict[str, Any]] = [{"type": "reset"}, self._main_header(), *self._samples,
                                     *self._steps.get(self.state.shown or "", ())]
        if self._footer is not None:   # a reset forgets the end: the session is still over
            out.append(self._footer)
        return out

    def note(self) -> str | None:
        """The main screen's header: how to reach the others (the variant shown is in its first line)."""
        n = len(self.state.labels)
        return f"{n} variants · c: compare" if n else None


class CompareLiveSource(LiveSource):
    """A LiveSource running a compare; ``compare_state`` for the compare screen, ``drain`` for the main one."""

    is_compare = True

    def __init__(self, args: argparse.Namespace, python: str = sys.executable):
        from llm_moments.engine.session.compare_stream import compare_argv

        super().__init__(args, python)
        # -P: the current directory is not put on sys.path, so a folder there can never shadow ours.
        self.argv = [python, "-P", "-m", CHILD_MODULE, *compare_argv(args)]
        self.feed = CompareFeed()
        self.compare_state = self.feed.state

    def drain(self) -> list[dict[str, Any]]:
        return self.feed.split(super().drain())

    def show_variant(self, label: str) -> bool:
        return self.feed.show_variant(label)

    def note(self) -> str | None:
        return self.feed.note()

    def start_ops(self, layer: int, steps: int = 8) -> None:
        raise MomentsError("ops mode is for `moments run --ops LAYER`: a compare runs several variants")


def cmd_compare_live(args: argparse.Namespace, run_app: Callable[[Any, str | None], int]) -> int:
    """``moments compare`` on a terminal: the monitor opens on the compare screen. Without a terminal
    it runs headless (as ``moments run`` does). Every spec is checked before the screen opens: a bad
    one is one line and exit 2, as headless."""
    theme = getattr(args, "theme", None)
    if theme is not None:
        from . import themes

        try:
            themes.check(theme)
        except themes.ThemeError as exc:
            raise MomentsError(str(exc)) from None
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        from llm_moments.engine.cli import cmd_compare

        print("moments: no terminal here: running headless (use --headless to say so)", file=sys.stderr)
        return cmd_compare(args)
    if args.inputs == "-":
        raise MomentsError("--inputs - (stdin) needs --headless: the live monitor reads the keyboard")
    from llm_moments.engine.session.compare import check_compare_options

    check_compare_options(args)
    return run_app(CompareLiveSource(args), theme)
