"""Every string from a recording is data, never control (issue #8): a recording whose every text field
holds terminal escape sequences, Rich markup and HTML goes through every output — ``moments report``
(text, json, md, html), ``moments diff``, ``moments export`` (csv, json, chrome), the headless summary,
errors on stderr, and every screen of the UI — and nothing of it is obeyed: no ESC / C1 / bidi
character reaches a terminal, no markup is read (``[bold red]`` shows as written), no HTML is live.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from rich.console import Console
from tui_fakes import FakeSource, make_cpu_sample, make_gpu_sample, make_header, make_step, plain, run, settle

from llm_moments.engine.analysis.diff import compare
from llm_moments.engine.analysis.report import analyze
from llm_moments.engine.cli import error
from llm_moments.engine.cli import main as engine_main
from llm_moments.engine.core.recording import load
from llm_moments.engine.output.export import CSV_COLUMNS
from llm_moments.engine.output.markdown import md_code, md_text, render_markdown
from llm_moments.engine.output.sanitize import csv_text, visible
from llm_moments.engine.output.text import render_diff, render_text
from llm_moments.tui.app import MomentsApp
from llm_moments.tui.screens.detail import LayerDetailScreen
from llm_moments.tui.screens.diff import DiffScreen
from llm_moments.tui.screens.help import HelpScreen
from llm_moments.tui.screens.outliers import OutliersScreen
from llm_moments.tui.screens.roofline import RooflineScreen
from llm_moments.tui.state import ViewState
from llm_moments.tui.widgets.status_line import StatusLine

HOSTILE = [
    "\x1b]2;pwned\x07",              # OSC 2: the window title
    "\x1b]52;c;ZXZpbA==\x07",        # OSC 52: the clipboard
    "\x1b[2J",                       # clear the screen
    "\x1bPq#0;2;0;0;0\x1b\\",        # DCS (sixel) ... ST
    "\x9b31m",                       # C1 CSI: red
    "layer[/]",                      # a closing tag with nothing open: MarkupError if read as markup
    "[bold red]x[/]",                # markup that would style
    "<script>alert(1)</script>",     # live HTML in a rendered Markdown report
    "=HYPERLINK(\"http://x\")",     # a spreadsheet formula
    "\u202etxt.exe",                 # RIGHT-TO-LEFT OVERRIDE
]
BAD = "\x1b]2;pwned\x07[bold red]x[/]<script>alert(1)</script>\u202e"  # every trick in one field
# what a terminal must never receive; C1 controls and bidi / format characters included
FORBIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
LAYERS = [(f"blocks.{i}.{h}", None, 0.2 + 0.1 * i) for i, h in enumerate(HOSTILE)]
LAYERS += [(f"sub{HOSTILE[0]}{HOSTILE[5]}", 1, 0.1), (HOSTILE[8], None, 0.05)]
N_STEPS = 40
SPIKE = 36  # every layer far slower in this step: every name shows in the outlier lists


def hostile_records(device: str = "cuda") -> list[dict]:
    h = make_header(device=device, layers=LAYERS, name=BAD)
    h["model"]["architecture"] = BAD
    h["model"]["dtype"] = BAD
    h["device"]["name"] = BAD
    h["clock"]["source"] = BAD
    h["clock"]["name"] = BAD
    h["timer"] = BAD
    h["depth"] = BAD
    h["started_at"] = BAD
    n = len(LAYERS)
    h["work"] = {"columns": ["a", "b", "w", "c", "d", "last_only"], "layers": [[1e6, 0.0, 4e5, 1e3, 0.0, 0.0]] * n}
    h["roof"] = {"peak_flops": 1e11, "peak_bytes_per_s": 1e10, "source": BAD}
    out = [h]
    for i in range(N_STEPS):
        spike = {j: 40.0 for j in range(n)} if i == SPIKE else None
        step = make_step(i, layers=LAYERS, throttle=[BAD, HOSTILE[1]], spike=spike,
                         clock_mhz=1980.0 if device == "cuda" else 2400.0)
        out.append(step)
        t = step["t_ns"] + 1
        out.append(make_gpu_sample(t, throttle=[BAD, "sw_power_cap"]) if device == "cuda" else make_cpu_sample(t))
        if i in (3, SPIKE):
            out.append({"type": "status", "t_ns": t, "level": "warning", "message": BAD + HOSTILE[3]})
    out.append({"type": "footer", "t_ns": N_STEPS * 50_000_000, "steps": N_STEPS, "reason": "error",
                "error": BAD + HOSTILE[2]})
    return out


@pytest.fixture(scope="module")
def rec_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "hostile.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in hostile_records()), encoding="utf-8")
    return path


def assert_inert(text: str) -> None:
    """Terminal text: no control / format character but newline and tab, markup shown as written."""
    bad = sorted({f"U+{ord(c):04X}" for c in FORBIDDEN.findall(text)})
    assert not bad, f"control characters reached the output: {bad}"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = engine_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- the rule ------------------------------------------------------------------------------------------


def test_visible_shows_controls_and_format_characters_and_keeps_text():
    assert visible("\x1b]2;pwned\x07") == "\\x1b]2;pwned\\x07"
    assert visible("\x9b31m") == "\\x9b31m"
    assert visible("a\tb\nc\rd") == "a\\tb\\nc\\rd"
    assert visible("a\nb", newlines=True) == "a\nb"
    assert visible("\u202etxt\u2066\u200b\ufeff") == "\\u202etxt\\u2066\\u200b\\ufeff"
    assert visible("tag\U000e0041") == "tag\\U000e0041"       # invisible tag characters
    assert visible("x\ud800") == "x\\ud800"                   # a lone surrogate from JSON
    for ok in ("model.layers.0.mlp", "résumé 中文 ×µ—…", "[bold]<b>&", ""):
        assert visible(ok) == ok
    assert visible(None) == "None"
    assert csv_text("=1+1") == "'=1+1" and csv_text("@x") == "'@x" and csv_text("layer") == "layer"


def test_markdown_escaping_of_text_and_code():
    assert md_text("<script>a</script>") == "&lt;script&gt;a&lt;/script&gt;"
    assert md_text("[x](javascript:1) *b* _i_ `c` | ~s~") == \
        "\\[x\\](javascript:1) \\*b\\* \\_i\\_ \\`c\\` \\| \\~s\\~"
    assert md_code("a``b") == "```a``b```"
    assert md_code("`x") == "`` `x ``"
    assert md_code("a|b") == "`a\\|b`" and md_code("a|b", in_table=False) == "`a|b`"


# -- the CLI -------------------------------------------------------------------------------------------


def test_report_text_and_the_headless_summary_are_inert(rec_path, capsys):
    code, out, err = cli(capsys, "report", str(rec_path))
    assert code == 0, err
    assert_inert(out + err)
    assert "[bold red]x[/]" in out and "layer[/]" in out   # shown as written, not read as markup
    assert "\\x1b]2;pwned\\x07" in out and "\\x9b31m" in out and "\\u202e" in out
    assert "<script>alert(1)</script>" in out               # plain text on a terminal: harmless
    rec = load(rec_path)
    data = analyze(rec)
    for color in (False, True):
        text = render_text(data.summary, rec.header, color=color, outliers=(data.outliers, data.outliers_total))
        if color:  # the colours are the renderer's own CSI sequences; nothing of the recording's
            assert "\x1b]" not in text and "\x1bP" not in text and "\x1b[2J" not in text and "\x9b" not in text
        else:
            assert_inert(text)
        assert "[bold red]x[/]" in text
    assert any(o["layer"] == LAYERS[5][0] for o in data.outliers)  # the outlier table held hostile names


def test_report_json_keeps_the_data_and_is_inert(rec_path, capsys):
    code, out, _ = cli(capsys, "report", str(rec_path), "--format", "json")
    assert code == 0
    assert_inert(out)
    doc = json.loads(out)
    assert doc["model"]["name"] == BAD                        # data round-trips exactly
    assert [l["name"] for l in doc["layers"]] == [n for n, _, _ in LAYERS]


def test_report_markdown_escapes_every_field(rec_path, capsys):
    code, out, _ = cli(capsys, "report", str(rec_path), "--format", "md")
    assert code == 0
    assert_inert(out)
    assert "&lt;script&gt;" in out        # text fields; in code spans (layer names) it stays as written
    html = MarkdownIt("commonmark").enable("table").render(out)
    assert "<script" not in html and "&lt;script&gt;" in html
    assert "<strong>x" not in html and "<em>" not in html.replace("<em>RANDOM", "")
    # every field from the recording shows, as written, in the rendered document: model, architecture,
    # dtype, device, clock, timer, depth, started_at, roof source, footer error, status messages
    # (warnings), throttle reasons, layer names
    assert html.count("\\x1b]2;pwned\\x07[bold red]x[/]&lt;script&gt;alert(1)&lt;/script&gt;\\u202e") >= 9
    assert "\\x1b[2J" in html                                  # the footer's error
    assert "\\x1bPq#0;2;0;0;0\\x1b\\" in html                  # a status message
    assert "<code>blocks.6.[bold red]x[/]</code>" in html        # a layer name: a code span, as written
    assert "<code>blocks.7.&lt;script&gt;alert(1)&lt;/script&gt;</code>" in html
    rec = load(rec_path)
    assert render_markdown(rec) == out


def test_report_html_is_escaped_and_inert(rec_path, capsys, tmp_path):
    target = tmp_path / "r.html"
    code, _, err = cli(capsys, "report", str(rec_path), "--format", "html", "-o", str(target))
    assert code == 0, err
    page = target.read_text(encoding="utf-8")
    assert_inert(page)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\\x1b]2;pwned\\x07" in page


def test_diff_text_md_json_are_inert(rec_path, tmp_path, capsys):
    other = tmp_path / f"b[bold red]{HOSTILE[0]}.jsonl"  # a file name is shown too
    recs = hostile_records()
    recs[0] = copy.deepcopy(recs[0])
    recs[0]["layers"] = recs[0]["layers"][:-1] + [{"name": "only-in-b" + BAD, "parent": 1}]
    other.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    for fmt in ("text", "md", "json"):
        code, out, err = cli(capsys, "diff", str(rec_path), str(other), "--format", fmt)
        assert code == 0, err
        assert_inert(out + err)
        if fmt == "text":
            assert "[bold red]x[/]" in out and "layer[/]" in out
        if fmt == "md":
            html = MarkdownIt("commonmark").enable("table").render(out)
            assert "<script" not in html
    # the renderer itself, with hostile file names and a Rich table title
    d = compare(load(rec_path), load(other))
    text = render_diff(d, BAD, str(other))
    assert_inert(text)
    assert "[bold red]x[/]" in text


def test_export_csv_json_chrome_are_valid_and_inert(rec_path, tmp_path, capsys):
    for fmt, suffix in (("csv", ".csv"), ("json", ".json"), ("chrome", ".trace.json")):
        target = tmp_path / f"out{suffix}"
        code, _, err = cli(capsys, "export", str(rec_path), "--format", fmt, "-o", str(target))
        assert code == 0, err
        text = target.read_text(encoding="utf-8")
        assert_inert(text)
        if fmt == "csv":
            rows = list(csv.reader(io.StringIO(text)))
            assert rows[0] == CSV_COLUMNS and len(rows) == 1 + N_STEPS * len(LAYERS)
            layer = rows[0].index("layer")
            names = {r[layer] for r in rows[1:]}
            assert "'" + HOSTILE[8] in names                       # a formula is text in a spreadsheet
            assert "blocks.0.\\x1b]2;pwned\\x07" in names
            assert not any(c.startswith(("=", "+", "-", "@")) for r in rows[1:]
                           for c in (r[1], r[6], r[layer], r[layer + 1]))
        else:
            doc = json.loads(text)                                 # valid JSON, strings kept exactly
            if fmt == "json":
                assert doc["header"]["model"]["name"] == BAD
            else:
                assert {e["name"] for e in doc["traceEvents"]} >= {n for n, _, _ in LAYERS}


def test_errors_on_stderr_are_inert(tmp_path, capsys):
    assert error("cannot read " + BAD) == 2
    err = capsys.readouterr().err
    assert_inert(err)
    assert "\\x1b]2;pwned\\x07" in err
    # a file whose schema line is hostile: the reader's one-line refusal quotes it
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"type": "header", "schema": "moments/9" + BAD, "layers": []}) + "\n")
    code, out, err = cli(capsys, "report", str(bad))
    assert code != 0
    assert_inert(out + err)
    # a cut-off recording with hostile names: the warnings on stderr
    cut = tmp_path / f"cut{HOSTILE[0]}.jsonl"
    lines = [json.dumps(r) for r in hostile_records()[:6]]
    cut.write_text("\n".join(lines) + "\n" + lines[-1][: len(lines[-1]) // 2], encoding="utf-8")
    code, out, err = cli(capsys, "report", str(cut))
    assert code == 0 and "warning" in err
    assert_inert(out + err)


# -- the UI --------------------------------------------------------------------------------------------


def screen_output(app) -> tuple[str, str]:
    """(the screen's text, the exact bytes the terminal would get) for the whole screen."""
    compositor = app.screen._compositor
    text = "\n".join(strip.text for strip in compositor.render_strips())
    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=app.size.width)
    raw = compositor.render_full_update().render_segments(console)
    return text, raw


def check_screen(app, where: str) -> str:
    text, raw = screen_output(app)
    assert_inert(text)
    # the terminal's bytes hold Textual's own CSI styling; none of the recording's sequences
    for seq in ("\x1b]2;", "\x1b]52;", "\x1bP", "\x1b[2J", "\x9b", "\u202e", "\x07"):
        assert seq not in raw, f"{where}: {seq!r} reached the terminal"
    return text


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_every_screen_draws_hostile_strings_as_text(device):
    recs = hostile_records(device)
    rec_diff = None

    async def body():
        nonlocal rec_diff
        from llm_moments.engine.core.recording import Recording

        r = Recording(path=Path("x"), header=recs[0], steps=[x for x in recs if x["type"] == "step"])
        rec_diff = compare(r, r)
        src = FakeSource(recs, note="note " + BAD)
        app = MomentsApp(src, clock=lambda: 0.0, compare=(rec_diff, "A" + BAD, "B" + HOSTILE[5]))
        async with app.run_test(size=(170, 48)) as pilot:
            await settle(pilot, app, 3)
            app.notify("hostile " + BAD, markup=False)
            main = check_screen(app, "main")
            assert "[bold red]x[/]" in main and "\\x1b]2;pwned\\x07" in main
            await pilot.press("m")
            await settle(pilot, app)
            check_screen(app, "main, heatmap")

            await pilot.press("home", "down", "down", "down", "down", "down", "down", "enter")  # blocks.6: markup
            await pilot.pause()
            assert isinstance(app.screen, LayerDetailScreen)
            detail = check_screen(app, "detail")
            assert "[bold red]x[/]" in plain(app.screen.query_one("#title"))
            assert "\\x1b]2;pwned\\x07" in detail
            await pilot.press("left")                               # blocks.5: layer[/]
            await pilot.pause()
            assert "layer[/]" in plain(app.screen.query_one("#title"))
            check_screen(app, "detail 5")
            await pilot.press("escape", "o")
            await pilot.pause()
            assert isinstance(app.screen, OutliersScreen)
            outliers = check_screen(app, "outliers")
            assert "layer[/]" in outliers
            await pilot.press("escape", "f")
            await pilot.pause()
            await pilot.pause()
            assert isinstance(app.screen, RooflineScreen)
            roof = check_screen(app, "roofline")
            assert "roof:" in roof
            await pilot.press("escape", "d")
            await pilot.pause()
            assert isinstance(app.screen, DiffScreen)
            diff = check_screen(app, "diff")
            assert "[bold red]x[/]" in diff
            await pilot.press("escape", "question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            check_screen(app, "help")

    run(body())


def test_status_line_shows_a_hostile_engine_error_as_text():
    state = ViewState()
    state.apply([make_header(device="cpu"), {"type": "error", "message": BAD}])
    content = StatusLine.content(state)
    assert_inert(content.plain)
    assert "[bold red]x[/]" in content.plain and "\\x1b]2;pwned\\x07" in content.plain
