"""Ask for a file name and start recording the running session there."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class RecordDialog(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = """
    RecordDialog { align: center middle; }
    RecordDialog > Vertical { width: 70; max-width: 95%; height: auto; border: round $primary;
                              background: $surface; padding: 1 2; }
    """

    def __init__(self, default_path: str) -> None:
        super().__init__()
        self.default_path = default_path

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Record the rest of this session to (enter: start, esc: cancel)")
            yield Input(value=self.default_path, id="path")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
