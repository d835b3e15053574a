"""llm-moments: a live monitor of a language model's inference, layer by layer.

This file is the package ``llm_moments``: setuptools maps the repository's root to it and its
folders ``engine/``, ``tui/`` and ``themes/`` to ``llm_moments.engine``, ``llm_moments.tui`` and
``llm_moments.themes`` (``[tool.setuptools.package-dir]`` in pyproject.toml), so one distinctive
import name is installed and a user's own ``engine/`` or ``tui/`` can never shadow ours.

    from llm_moments import Monitor

``Monitor`` is imported on first use, so ``moments --help`` and ``moments report`` never import torch.
"""

from typing import Any

from llm_moments.engine import __version__
from llm_moments.engine.errors import MomentsError

__all__ = ["MomentsError", "Monitor", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Monitor":
        from llm_moments.engine.session.monitor import Monitor

        return Monitor
    raise AttributeError(f"module 'llm_moments' has no attribute {name!r}")
