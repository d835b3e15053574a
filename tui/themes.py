"""Themes are data files (TOML) turned into Textual themes; a broken file is a message, not a crash."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from textual.color import Color, ColorParseError
from textual.theme import Theme

BUILTIN = {"dark": "moments-dark", "light": "moments-light", "high-contrast": "moments-high-contrast"}
COLOR_KEYS = ("primary", "secondary", "accent", "foreground", "background", "surface", "panel",
              "success", "warning", "error", "boost")
REQUIRED_VARIABLES = ("heat-low", "heat-high")


class ThemeError(Exception):
    """A theme file that cannot be used; the message names the file and the problem."""


def parse_theme(data: dict[str, Any], where: str) -> Theme:
    unknown = set(data) - {"name", "dark", "variables", *COLOR_KEYS}
    if unknown:
        raise ThemeError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ThemeError(f"{where}: needs a name = \"...\"")
    if "primary" not in data:
        raise ThemeError(f"{where}: needs at least a primary colour")
    colors = {}
    for key in COLOR_KEYS:
        if key in data:
            colors[key] = _color(data[key], f"{where}: {key}")
    variables = data.get("variables", {})
    if not isinstance(variables, dict):
        raise ThemeError(f"{where}: [variables] must be a table")
    variables = {str(k): _color(v, f"{where}: variables.{k}") for k, v in variables.items()}
    heat = (("heat-low", colors.get("surface", "#202020")), ("heat-high", colors.get("accent", colors["primary"])))
    for key, default in heat:
        variables.setdefault(key, default)
    dark = data.get("dark", True)
    if not isinstance(dark, bool):
        raise ThemeError(f"{where}: dark must be true or false")
    return Theme(name=name.strip(), dark=dark, variables=variables, **colors)


def _color(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ThemeError(f"{where} must be a colour string such as \"#4EA8DE\"")
    try:
        Color.parse(value)
    except ColorParseError:
        raise ThemeError(f"{where}: {value!r} is not a colour") from None
    return value


THEME_CAP = 1 << 20  # bytes: a theme is a few lines of TOML


def load_theme_file(path: str | Path) -> Theme:
    from llm_moments.engine.core import files

    p = Path(path).expanduser()
    try:
        text = files.read_regular(p, THEME_CAP).decode("utf-8")
    except FileNotFoundError:
        raise ThemeError(f"theme file {p} does not exist") from None
    except IsADirectoryError:
        raise ThemeError(f"theme file {p} is a directory") from None
    except files.NotRegular:
        raise ThemeError(f"theme file {p} is not a regular file") from None
    except files.TooLarge:
        raise ThemeError(f"theme file {p} is larger than {files.human_bytes(THEME_CAP)}") from None
    except UnicodeDecodeError:
        raise ThemeError(f"cannot read theme file {p}: it is not UTF-8 text") from None
    except OSError as exc:
        raise ThemeError(f"cannot read theme file {p}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ThemeError(f"theme file {p} is not valid TOML: {exc}") from None
    return parse_theme(data, str(p))


def builtin_themes() -> list[Theme]:
    """The themes shipped in the ``themes`` package (present in a non-editable install too)."""
    out = []
    for entry in sorted(resources.files("llm_moments.themes").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            out.append(parse_theme(tomllib.loads(entry.read_text(encoding="utf-8")), f"themes/{entry.name}"))
    return out


def check(spec: str) -> None:
    """``--theme`` on the command line: a bad one raises ThemeError (the CLI says it in one line and
    exits 2, before anything loads). Inside the UI a bad theme is only a notice (``resolve``)."""
    if not spec.strip():
        raise ThemeError(f"--theme is empty: use {', '.join(BUILTIN)}, or a theme file (.toml)")
    resolve(spec, strict=True)


def resolve(spec: str | None, strict: bool = False) -> tuple[list[Theme], str, str | None]:
    """(themes to register, the one to use, a warning) for ``--theme`` = builtin name or a file.
    ``strict``: a broken file or an unknown name raises ThemeError instead of a warning."""
    themes = builtin_themes()
    if not spec:
        return themes, BUILTIN["dark"], None
    if spec in BUILTIN:
        return themes, BUILTIN[spec], None
    if spec in {t.name for t in themes}:
        return themes, spec, None
    if spec.endswith(".toml") or Path(spec).expanduser().exists():
        try:
            user = load_theme_file(spec)
        except ThemeError as exc:
            if strict:
                raise
            return themes, BUILTIN["dark"], f"{exc}; using the dark theme"
        return themes + [user], user.name, None
    unknown = f"unknown theme {spec!r} (built in: {', '.join(BUILTIN)}; or a .toml file)"
    if strict:
        raise ThemeError(unknown)
    return themes, BUILTIN["dark"], f"{unknown}; using the dark theme"
