"""llm-moments engine: per-layer moment timing with clock cycles, recording and statistics.

Never imports Textual or the UI: usable alone from a script or the headless CLI. ``Monitor`` is
imported on first use, so `moments --help` and `moments report` do not pay for importing torch.
"""

from typing import Any

__version__ = "0.1.0"

from .errors import MomentsError  # noqa: E402

__all__ = ["Monitor", "MomentsError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Monitor":
        from .monitor import Monitor

        return Monitor
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
