"""The compare screen of a live ``moments compare``, driven by fake records (no model, no child).

The records are what the engine child sends (fakes in tests/test_compare_live.py: the analysis is made
by the engine's own code from fake steps, so the screen shows real verdicts: ``bf16`` runs the blocks
at 0.7× (faster), ``drop`` lacks blocks.2 and blocks.3 (absent), ``compiled`` has no per-layer timing).
The source is the real CompareLiveSource with its child left unstarted; the app is the real MomentsApp
(it opens on the compare screen, ``c`` toggles it). Last, the command's checks before the screen opens.

Update the snapshots after a deliberate UI change with:

    .venv/bin/python -m pytest tests/test_tui_compare.py --snapshot-update
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_compare_live import VARIANTS, args_for, compare_record, compare_session, compare_steps
from tui_fakes import plain, run, table_lines

from llm_moments.engine.cli import build_parser
from llm_moments.engine.output.sanitize import visible
from llm_moments.tui.app import MomentsApp
from llm_moments.tui.compare_live import CompareLiveSource
from llm_moments.tui.render import palette
from llm_moments.tui.screens.compare import CompareScreen
from llm_moments.tui.widgets.compare_summary import CompareSummary
from llm_moments.tui.widgets.compare_table import HEAD_ROWS, RATIO_W, CompareTable, fmt_ratio
from llm_moments.tui.widgets.header import HeaderBar
from llm_moments.tui.widgets.layer_table import LayerTable


def compare_args(*variants: str) -> Any:
    specs = variants or tuple(f"{l}: {o}" for l, o in VARIANTS)
    argv = ["compare", "--model", "tiny-gpt2", "--no-calibrate"]
    for spec in specs:
        argv += ["--variant", spec]
    return build_parser()[0].parse_args(argv)


class FedCompareSource(CompareLiveSource):
    """The real source, its child never started: the test puts the child's records in its buffer."""

    def __init__(self, records: list[dict[str, Any]]):
        super().__init__(compare_args())
        self.records = records

    def start(self) -> None:
        for r in self.records:
            self._put(r)


def app_for(records: list[dict[str, Any]] | None = None) -> MomentsApp:
    return MomentsApp(FedCompareSource(compare_session() if records is None else records), theme="dark",
                      clock=lambda: 0.0)


async def first_frame(pilot) -> None:
    pilot.app.refresh_frame()
    await pilot.pause()
    pilot.app.refresh_frame()
    await pilot.pause()


SIZES = {"80x24": (80, 24), "160x48": (160, 48)}


@pytest.mark.parametrize("size", list(SIZES))
def test_snapshot(snap_compare, size):
    assert snap_compare(app_for(), terminal_size=SIZES[size], run_before=first_frame)


def _table_text(table: CompareTable) -> list[str]:
    return [table.render_line(y).text for y in range(table.scrollable_content_region.height)]


def test_the_screen_opens_on_the_compare_and_shows_the_engine_figures():
    async def body():
        app = app_for()
        async with app.run_test(size=(160, 48)) as pilot:
            await first_frame(pilot)
            assert isinstance(app.screen, CompareScreen)
            summary = plain(app.screen.query_one(CompareSummary))
            assert "round 11 of 16 · ratios as of round 10" in summary
            assert "this round: base → bf16 → drop → compiled (ABAB/BABA" in summary
            assert "bf16  --dtype bfloat16 · output: 87.5 % of 48 tokens agree · own weights (12.4 MB)" in summary
            assert "blocks 2-3 dropped (2 kept)" in summary
            assert "no per-layer timing" in summary
            lines = _table_text(app.screen.query_one(CompareTable))
            assert lines[0].startswith("decode steps") and "bf16 / base" in lines[0]
            rows = {line.split()[0]: line for line in lines[2:] if line.strip()}
            assert "faster" in rows["blocks.0"] and "absent" in rows["blocks.2"]
            assert "no per-layer timing" in rows["blocks.0"]   # the compiled variant's cell
            assert "faster" in rows["step"]
            # coloured by verdict, from the theme: faster green (success), absent and within-noise muted
            table = app.screen.query_one(CompareTable)
            colors = palette(app)
            y = next(i for i, line in enumerate(lines) if line.startswith("blocks.2"))
            table.cursor = 0
            segs = {seg.text.strip(): seg.style for seg in list(table.render_line(y)) if seg.text.strip()}
            assert segs["faster"].color.triplet.hex == colors["success"].lower()
            assert segs["absent"].color.triplet.hex == colors["foreground-muted"].lower()
            assert segs["no per-layer timing"].color.triplet.hex == colors["warning"].lower()
            await pilot.press("n")                              # the other kind
            await pilot.pause()
            assert _table_text(app.screen.query_one(CompareTable))[0].startswith("prefill steps")
            await pilot.press("c")                              # back to the main screen
            await pilot.pause()
            assert not isinstance(app.screen, CompareScreen)
    run(body())


def test_the_main_table_receives_one_variant_only_and_says_which():
    """Base by default; ``v`` switches the main screen to bf16: its state restarts from bf16's buffered
    steps, every step it folds afterwards is bf16's, and its header says so."""
    async def body():
        app = app_for()
        async with app.run_test(size=(160, 48)) as pilot:
            await first_frame(pilot)
            state = app.state
            assert state.last_step["variant"] == "base" and state.steps_total == 12 * 3
            base_last = [s for s in compare_steps() if s["variant"] == "base"][-1]
            assert list(state.layer_view().last_ms) == pytest.approx(base_last["layer_ms"])
            assert plain(app.main.query_one(HeaderBar)).startswith("tiny-gpt2 · variant base (baseline)")
            await pilot.press("v")
            await pilot.pause()
            await first_frame(pilot)
            assert state.steps_total == 12 * 3 and state.header["variant"] == "bf16"
            assert state.header["model"]["dtype"] == "bfloat16"
            more = [dict(s, index=1000 + k) for k, s in enumerate(compare_steps(rounds=1))]
            seen: list[str] = []
            original = state._on_step
            state._on_step = lambda step: (seen.append(step["variant"]), original(step))
            for s in more:
                app.source._put(s)
            await first_frame(pilot)
            assert seen == ["bf16"] * 3 and state.steps_total == 12 * 3 + 3
            bf16_last = [s for s in more if s["variant"] == "bf16"][-1]
            assert list(state.layer_view().last_ms) == pytest.approx(bf16_last["layer_ms"])
            await pilot.press("c")
            await pilot.pause()
            app.redraw()
            await pilot.pause()
            header = plain(app.main.query_one(HeaderBar))
            assert header.startswith("tiny-gpt2 · variant bf16 ") and "bfloat16" in header
            table = "\n".join(table_lines(app.main.query_one(LayerTable)))
            assert "blocks.0" in table
    run(body())


def _cursor_lines(table, cursor_style) -> list[tuple[int, str]]:
    """The visible lines drawn in the cursor's colours, as (line, text)."""
    out = []
    for y in range(table.scrollable_content_region.height):
        strip = table.render_line(y)
        if any(seg.style is not None and seg.style.bgcolor == cursor_style.bgcolor for seg in strip):
            out.append((y, strip.text))
    return out


async def _end_then_back_to_the_top(pilot, table, heading: int, name_of) -> None:
    """``end``, then ``up`` row by row: after each key the cursor's row is drawn once, below the heading,
    on screen; back at the top the view is scrolled back and the first row is the first line under it."""
    height = table.scrollable_content_region.height
    cursor = table._styles()["cursor"]
    await pilot.press("end")
    await pilot.pause()
    rows = name_of(None)
    assert rows + heading > height                 # the table scrolls at this size
    for _ in range(rows + 2):                      # two more: up at the top stays there
        (y, text), = _cursor_lines(table, cursor)
        assert heading <= y < height
        assert name_of(True) in text.split()[:2]    # the layer table has a mark column first
        await pilot.press("up")
        await pilot.pause()
    assert int(table.scroll_offset.y) == 0
    (y, text), = _cursor_lines(table, cursor)
    assert y == heading and name_of(False) in text.split()[:2]


def test_the_cursor_back_at_the_top_is_below_the_heading_not_under_it():
    """A small terminal: the table scrolls; going back up shows the cursor's row every time (it was
    scrolled to under the heading: a region one row off), in the compare table and the layer table."""
    async def body():
        app = app_for()
        async with app.run_test(size=(80, 15)) as pilot:
            await first_frame(pilot)
            table = app.screen.query_one(CompareTable)
            assert table.has_focus
            await _end_then_back_to_the_top(
                pilot, table, HEAD_ROWS,
                lambda at: len(table.rows) if at is None else
                (table.rows[table.cursor].name if at else "step"))
        app = app_for()
        async with app.run_test(size=(80, 19)) as pilot:
            await first_frame(pilot)
            await pilot.press("c")                  # the main screen
            await pilot.pause()
            app.refresh_frame()
            await pilot.pause()
            layers = app.main.query_one(LayerTable)
            layers.focus()
            await pilot.pause()
            names = layers.view.names
            await _end_then_back_to_the_top(
                pilot, layers, 1,
                lambda at: len(names) if at is None else
                (names[layers.cursor_layer] if at else names[0]))
    run(body())


def test_ratios_of_10_and_more_keep_the_columns_in_place():
    assert [fmt_ratio(r) for r in (0.8361, 9.9994, 9.9996, 12.345, 99.96, 123.4, 99999.4, 123456.0)] == \
        ["0.836", "9.999", "10.0", "12.3", "100", "123", "99999", "1e+05"]
    assert all(len(fmt_ratio(r)) <= RATIO_W - 1 for r in np.geomspace(1e-4, 1e9, 400))
    records = compare_session()
    analysis = next(r for r in records if r["type"] == "compare")["analysis"]
    for by_kind in analysis["by_kind"].values():
        cell = by_kind["layers"][1]["variants"]["bf16"]     # blocks.0, bf16: 12× slower
        cell.update(ratio=12.345, ci_low=10.123, ci_high=12.345, verdict="slower")

    async def body():
        app = app_for(records)
        async with app.run_test(size=(160, 48)) as pilot:
            await first_frame(pilot)
            return _table_text(app.screen.query_one(CompareTable))

    lines = run(body())
    head = lines[1]
    verdicts = [i for i in range(len(head)) if head.startswith("verdict", i)]
    assert len(verdicts) == 3                                      # bf16, drop, compiled: with intervals
    rows = {line.split()[0]: line for line in lines[2:] if line.strip()}
    slow = rows["blocks.0"]
    assert "12.3 " in slow and "[10.1–12.3]" in slow and len(slow) == len(head)
    assert slow[verdicts[0]:].startswith("slower") and slow[verdicts[1]:].startswith("within-noise")
    for name in ("step", "blocks.1"):
        assert rows[name][verdicts[0]:].startswith("faster"), rows[name]


HOSTILE = "[bold red]evil[/]"
ESCAPED = "esc\x1b[31mred"


def test_hostile_labels_and_names_show_literally():
    variants = [(HOSTILE, "--threads 1"), (ESCAPED, "--threads 2 [link=x]y[/link]")]
    records = compare_session(variants=variants, rounds=4, analysed=4)
    records[0]["layers"][1]["name"] = "[i]blocks.0[/i]\x07"
    # the analysis was made with the original names: rebuild it with the hostile one
    records = [r for r in records if r["type"] != "compare"]
    steps = [r for r in records if r["type"] == "step"]
    records.append(compare_record(records[0], steps, 4))

    async def body():
        app = app_for(records)
        async with app.run_test(size=(160, 48)) as pilot:
            await first_frame(pilot)
            summary = plain(app.screen.query_one(CompareSummary))
            lines = "\n".join(_table_text(app.screen.query_one(CompareTable)))
            for text in (summary, lines):
                assert "\x1b" not in text and "\x07" not in text
            assert HOSTILE in summary and visible(ESCAPED) in summary and "[link=x]y[/link]" in summary
            assert f"{visible(ESCAPED)} / {HOSTILE}" in lines
            assert visible("[i]blocks.0[/i]\x07") in lines
            await pilot.press("v")
            await pilot.pause()
            await first_frame(pilot)
            await pilot.press("c")
            await pilot.pause()
            app.redraw()
            await pilot.pause()
            header = plain(app.main.query_one(HeaderBar))
            assert header.startswith(f"tiny-gpt2 · variant {visible(ESCAPED)} ") and "\x1b" not in header
    run(body())


# -- the command: checks before the screen, headless without a terminal ---------------------------------


class _Tty:
    def isatty(self) -> bool:
        return True


def test_the_command_checks_every_spec_before_the_screen_and_runs_headless_without_a_terminal(monkeypatch,
                                                                                              capsys):
    from llm_moments.engine.errors import MomentsError
    from llm_moments.tui.compare_live import cmd_compare_live

    opened: list = []
    run_app = lambda source, theme: opened.append((source, theme)) or 0
    monkeypatch.setattr("sys.stdin", _Tty())
    monkeypatch.setattr("sys.stdout", _Tty())
    for bad, why in ((["--variant", "base:", "--variant", "b: --dtype nope"], "--variant b: argument --dtype"),
                     (["--variant", "base:"], "at least two --variant"),
                     (["--variant", "a:", "--variant", "b:", "--inputs", "-"], "needs --headless")):
        with pytest.raises(MomentsError, match=why):
            cmd_compare_live(args_for(*bad), run_app)
    assert opened == []
    assert cmd_compare_live(args_for("--variant", "base:", "--variant", "drop: --drop-layers 1"), run_app) == 0
    (source, theme), = opened
    assert isinstance(source, CompareLiveSource) and source.proc is None and theme is None
    assert "--variant=drop: --drop-layers 1" in source.argv

    monkeypatch.undo()
    headless: list = []
    monkeypatch.setattr("llm_moments.engine.cli.cmd_compare", lambda args: headless.append(args) or 0)
    assert cmd_compare_live(args_for("--variant", "a:", "--variant", "b:"), run_app) == 0
    assert len(headless) == 1 and len(opened) == 1
    assert "no terminal here: running headless" in capsys.readouterr().err
