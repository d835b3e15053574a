"""llm-moments engine: per-layer moment timing with clock cycles, recording and statistics.

Never imports Textual or the UI: usable alone from a script or the headless CLI.
"""

__version__ = "0.1.0"

from .errors import MomentsError  # noqa: E402
from .monitor import Monitor  # noqa: E402

__all__ = ["Monitor", "MomentsError", "__version__"]
