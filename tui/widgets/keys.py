"""Keys that move a cursor in a table of layers (the layer table, the ranks table): one list."""

from textual.binding import Binding

CURSOR_BINDINGS = [
    Binding("up,k", "cursor(-1)", "up", show=False),
    Binding("down,j", "cursor(1)", "down", show=False),
    Binding("pageup", "cursor(-10)", show=False),
    Binding("pagedown", "cursor(10)", show=False),
    Binding("home", "cursor(-100000)", show=False),
    Binding("end", "cursor(100000)", show=False),
]
