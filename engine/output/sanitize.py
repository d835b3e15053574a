"""Every string from a recording, a model or a user is data, never control: the one rule for text that
reaches a terminal (CLI tables, ``moments diff``, stderr, the UI) or a document (Markdown, HTML, SVG, CSV).

``visible(text)`` keeps printable text as it is and shows each character that a terminal or a text
renderer would act on (rather than draw) as a Python-style escape, so it is seen, never obeyed:

- C0 controls U+0000–U+001F and DEL U+007F (ESC, BEL, CR, backspace, …): ``\\x1b``, ``\\x07``; tab,
  newline and carriage return as ``\\t``, ``\\n``, ``\\r`` (``newlines=True`` keeps ``\\n`` for multi-line
  messages);
- C1 controls U+0080–U+009F (a terminal may read U+009B as CSI, U+009D as OSC): ``\\x9b``;
- format characters (Unicode category Cf: the bidi overrides and isolates U+202A–U+202E,
  U+2066–U+2069, U+200E/U+200F/U+061C that reorder what is shown; zero-width spaces and joiners, the BOM,
  soft hyphen, the invisible tag characters U+E0000–U+E007F), line / paragraph separators U+2028,
  U+2029 and lone surrogates (from a JSON ``"\\ud800"``: they would not even encode): ``\\u202e``,
  ``\\U000e0041``.

Nothing else changes (a backslash stays a backslash: the escapes are for reading, not a reversible
encoding). Markup is a second, separate concern: Rich / Textual markup (``[bold]``) and HTML / Markdown
are escaped by each output where it builds its text (``rich.markup.escape``, ``Text`` objects, Jinja2
autoescape, ``markdown.md_text``).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any

__all__ = ["csv_text", "needs_escape", "visible"]

_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# quick test: C0, DEL, C1, and everything past Latin-1 that may be a format character
_SUSPECT = re.compile(r"[\x00-\x1f\x7f-\x9f\u00ad\u0600-\U0010ffff]")


@lru_cache(maxsize=4096)
def _hidden(ch: str) -> bool:
    o = ord(ch)
    if o < 0x20 or 0x7F <= o <= 0x9F:
        return True
    return unicodedata.category(ch) in ("Cf", "Zl", "Zp", "Cs")


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    o = ord(ch)
    if o <= 0xFF:
        return f"\\x{o:02x}"
    if o <= 0xFFFF:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def needs_escape(text: str) -> bool:
    return any(_hidden(ch) for ch in _SUSPECT.findall(text))


def visible(text: Any, *, newlines: bool = False) -> str:
    """``text`` (anything: ``str()`` of it) with every control / format character shown as an escape."""
    s = text if isinstance(text, str) else str(text)
    if not _SUSPECT.search(s):
        return s  # the common case: one regex scan, no copy
    return "".join(_escape(ch) if _hidden(ch) and not (newlines and ch == "\n") else ch for ch in s)


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: Any) -> str:
    """A text cell of a CSV export: :func:`visible`, and a leading ``'`` before ``= + - @`` so that a
    spreadsheet shows a hostile name as text instead of running it as a formula (OWASP's CSV injection
    rule). Numbers are written as numbers elsewhere and never pass through here."""
    s = visible(text)
    return "'" + s if s.startswith(_FORMULA) else s


# -- Markdown --------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#!])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def md_text(text: object) -> str:
    """Any text from the recording as Markdown that shows it literally: control and format characters
    made visible (sanitize.py), ``& < >`` as HTML entities (no raw HTML: an injected ``<script>`` stays
    text), and the characters that start emphasis, code, links, strikethrough, headings, images and
    table cells (``\\ ` * _ [ ] ~ # ! |``) backslash-escaped. One line (newlines shown as ``\\n``)."""
    t = _MD_SPECIAL.sub(r"\\\1", visible(text))
    return re.sub(r"[&<>]", lambda m: _HTML[m.group()], t)


md_cell = md_text  # a table cell: the same rule ('|' is escaped)


def md_code(text: object, in_table: bool = True) -> str:
    """A name as inline code: Markdown shows a code span as is (``<`` included, no HTML); control
    characters made visible, the fence longer than any run of backticks inside, ``|`` escaped in a table."""
    t = visible(text)
    if in_table:
        t = t.replace("|", "\\|")
    fence = "`" * (max((len(r) for r in re.findall("`+", t)), default=0) + 1)
    pad = " " if t[:1] in ("`", " ") or t[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{t}{pad}{fence}"
