"""``moments report --format md|html``: the Markdown document and the self-contained HTML page.

Recordings come from real sessions of tiny random-weight models through the Monitor (a fake clock,
a roof given as a dict), so the documents are built from what the engine really writes.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from conftest import Block, FakeClock, generate
from torch import nn

from llm_moments.engine.core.recording import load
from llm_moments.engine.output.html import render_html
from llm_moments.engine.output.markdown import render_markdown
from llm_moments.engine.output.svg import HEATMAP_STEPS
from llm_moments.engine.session.monitor import Monitor

ROOF = {"peak_flops": 2.0e10, "peak_bytes_per_s": 8.0e9, "source": "test"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# -- recordings --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_path(tiny_gpt2, tmp_path_factory) -> Path:
    """Tiny GPT-2 at sublayer depth: 2 batches × (1 prefill + 11 decodes) = 24 steps."""
    path = tmp_path_factory.mktemp("doc") / "gpt2.jsonl"
    info = {"name": "tiny-gpt2", "architecture": "GPT2LMHeadModel", "parameters": 123_456, "dtype": "float32",
            "random_weights": True, "generative": True}
    torch.manual_seed(0)
    with Monitor(tiny_gpt2, depth="sublayers", record=path, clock_source=FakeClock(1000.0), roof=ROOF,
                 model_info=info):
        for _ in range(2):
            generate(tiny_gpt2, torch.randint(3, 64, (1, 6)), 12)
    return path


@pytest.fixture
def gpt2(gpt2_path):
    return load(gpt2_path)


class Odd(nn.Module):
    """A plain model with a layer whose name holds HTML: it must show escaped, never as markup."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.blocks = nn.ModuleList(Block(8) for _ in range(2))
        self.add_module("<b>&head", nn.Linear(8, 16))

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return getattr(self, "<b>&head")(x)


@pytest.fixture(scope="module")
def odd_path(tmp_path_factory) -> Path:
    """No clock (cycles null) and an empty roof: 20 encode steps."""
    path = tmp_path_factory.mktemp("doc") / "odd.jsonl"
    torch.manual_seed(0)
    model = Odd().eval()
    with Monitor(model, record=path, clock_source=FakeClock(None), roof={}), torch.inference_mode():
        for _ in range(20):
            model(torch.randint(0, 16, (2, 5)))
    return path


# -- an HTML checker ---------------------------------------------------------------------------------


class Page(HTMLParser):
    """Checks that tags nest and close, and collects every <svg> element's tags."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.svgs: list[list[tuple[str, dict]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "svg":
            self.svgs.append([])
        if self.svgs and "svg" in self.stack + [tag]:
            self.svgs[-1].append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if self.svgs and "svg" in self.stack:
            self.svgs[-1].append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> Page:
    p = Page()
    p.feed(page)
    p.close()
    assert not p.errors, p.errors[:5]
    assert p.stack == [], f"unclosed: {p.stack}"
    return p


def tags(svg: list[tuple[str, dict]], tag: str, cls: str | None = None) -> list[dict]:
    return [a for t, a in svg if t == tag and (cls is None or a.get("class") == cls)]


# -- Markdown ----------------------------------------------------------------------------------------


def test_markdown_has_the_session_every_layer_and_the_tables(gpt2):
    md = render_markdown(gpt2)
    assert md.startswith("# moments report: tiny-gpt2")
    assert "**RANDOM WEIGHTS**" in md and "GPT2LMHeadModel" in md
    for fact in ("**device:** cpu", "**clock:** fake", "**depth:** sublayers", "**steps:** 24: prefill 2, decode 22",
                 "**roof:** 20.0 GFLOP/s, 8.00 GB/s (test)"):
        assert fact in md
    table = [l for l in md.splitlines() if l.startswith("| `") or l.startswith("| ↳ `")]
    assert len(table) == len(gpt2.layer_names) == 14  # wte, wpe, 2 × (block + 4 sub-layers), ln_f, lm_head
    for name, row in zip(gpt2.layer_names, table):
        assert f"`{name}`" in row
    assert "| layer | runs | mean ms | p50 ms | p99 ms | cycles | share % | GFLOP/s | GB/s | FLOP/B | bound | " \
           "% of roof | floor ms |" in md
    head_row = next(r for r in table if "`lm_head`" in r)
    assert head_row.count("|") == 14 and ("memory" in head_row or "compute" in head_row)
    assert "## Step time by kind" in md and "| prefill | 2 |" in md and "| decode | 22 |" in md
    assert "Coverage:" in md and "## Outlier moments" in md and "## Warnings" in md
    assert "nan" not in md.lower()


def test_markdown_lists_an_outlier_with_its_step_layer_and_clock(gpt2):
    j = gpt2.layer_names.index("transformer.h.1")
    gpt2.steps[-1]["layer_ms"][j] = 500.0
    md = render_markdown(gpt2)
    rows = [l for l in md.split("## Outlier moments")[1].split("## Warnings")[0].splitlines() if l.startswith("| ")]
    assert rows[0].startswith("| step | kind | layer | ms | median ms |")
    first = rows[1]  # after the header (the alignment row starts "|:"): the largest excess first
    assert first.startswith(f"| {gpt2.steps[-1]['index']} | decode | `transformer.h.1` | 500.0 |")
    assert "| 1000 |" in first  # the clock at that step (fake: 1000 MHz)
    assert len(rows) - 1 <= 20


def test_markdown_without_roof_clock_or_random_weights_and_with_odd_names(odd_path):
    rec = load(odd_path)
    md = render_markdown(rec)
    assert "RANDOM WEIGHTS" not in md
    assert "`<b>&head`" in md  # inline code: Markdown shows it as written
    assert "GFLOP/s" in md and "% of roof" not in md and "No roofline: the recording's header has no roof" in md
    assert "n/a" in md  # cycles without a clock
    assert "| encode | 20 |" in md


def test_markdown_without_work_coefficients(gpt2):
    gpt2.header.pop("work")
    md = render_markdown(gpt2)
    assert "GFLOP/s" not in md and "No work columns: the recording's header has no work coefficients" in md


# -- HTML --------------------------------------------------------------------------------------------


def test_html_is_one_well_formed_page_with_four_pictures(gpt2):
    page = render_html(gpt2)
    p = parse(page)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert '<th class="n">mean ms</th>' in page and '<td class="n">' in page  # numbers right-aligned
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched: works offline
    assert "RANDOM WEIGHTS" in page
    assert len(p.svgs) == 4
    share, hist, heat, roof = p.svgs
    names, parents = gpt2.layer_names, [l["parent"] for l in gpt2.header["layers"]]
    top = [n for n, par in zip(names, parents) if par is None]
    # (1) one bar per top-level layer, each with an exact tooltip
    assert len(tags(share, "rect", "bar")) == len(top) == 6
    text = "".join(p.text)
    assert "transformer.h.0: " in text and "% of step time, mean" in text
    # (2) the histogram's bars hold every step
    counts = [int(n) for n in re.findall(r"(?:prefill|decode): (\d+) steps? in", text)]
    assert sum(counts) == len(gpt2.steps) == 24
    assert {a["fill"] for a in tags(hist, "rect", "bar")} == {"#dd6b20", "#3182ce"}
    # (3) heatmap: top-level rows × step columns
    assert len(tags(heat, "rect", "cell")) == len(top) * min(len(gpt2.steps), HEATMAP_STEPS)
    assert len(tags(heat, "rect", "kind")) == 2  # the two prefills marked
    # (4) roofline: one point per top-level layer with FLOPs (the embeddings have none), sub-layers lighter
    assert len(tags(roof, "circle", "pt top")) == 4
    assert len(tags(roof, "circle", "pt sub")) == 8
    assert len(tags(roof, "polyline", "roof")) == 1
    assert "Not on the chart" in page and "<code>transformer.wte</code>" in page
    for label in ("lm_head", "transformer.ln_f", "arithmetic intensity (FLOP / byte)", "compute 20.0 GFLOP/s"):
        assert label in text
    assert "nan" not in text.lower().split()


def test_html_escapes_names_and_says_when_there_is_no_roofline(odd_path):
    rec = load(odd_path)
    page = render_html(rec)
    p = parse(page)
    assert "&lt;b&gt;&amp;head" in page and "<b>&head" not in page
    assert len(p.svgs) == 3  # no roofline picture
    assert "No roofline: the recording&#39;s header has no roof" in page  # escaped (Jinja2 autoescape)
    assert len(tags(p.svgs[2], "rect", "cell")) == 4 * 20  # embed, 2 blocks, the odd head × 20 steps


def test_heatmap_takes_the_last_steps_and_leaves_unrun_layers_grey(gpt2):
    many = [dict(s) for s in gpt2.steps] * 20  # 480 steps
    for i, s in enumerate(many):
        s["index"] = i
    many[-1] = dict(many[-1], layer_ms=[None] * len(gpt2.layer_names))
    gpt2.steps = many
    heat = parse(render_html(gpt2)).svgs[2]
    cells = tags(heat, "rect", "cell")
    assert len(cells) == 6 * HEATMAP_STEPS
    assert sum(c["fill"] == "#edf2f7" for c in cells) == 6  # the step where nothing ran


def test_html_and_markdown_of_a_recording_without_steps(gpt2_path, tmp_path):
    lines = Path(gpt2_path).read_text().splitlines()
    path = tmp_path / "empty.jsonl"
    path.write_text(lines[0] + "\n" + json.dumps({"type": "footer", "steps": 0, "reason": "interrupted"}) + "\n")
    rec = load(path)
    page = render_html(rec)
    assert len(parse(page).svgs) == 0 and "No steps recorded" in page
    assert "No steps recorded" in render_markdown(rec)


def test_cli_writes_the_html_report(gpt2_path, tmp_path):
    from llm_moments.engine.cli import main

    out = tmp_path / "out.html"
    assert main(["report", str(gpt2_path), "--format", "html", "-o", str(out)]) == 0
    assert len(parse(out.read_text(encoding="utf-8")).svgs) == 4
    md = tmp_path / "out.md"
    assert main(["report", str(gpt2_path), "--format", "md", "-o", str(md)]) == 0
    assert md.read_text(encoding="utf-8").startswith("# moments report: tiny-gpt2")
