"""The engine: measuring, analysis, outputs and running a model. Never imports Textual or the UI.

Subpackages by role, lower never importing upper (import-linter contracts in pyproject.toml):

- ``core``: the hot path and what feeds it — hooks, timers, clocks and the sampler, recording, work;
- ``analysis``: pure numpy over one step table — statistics, outliers, roofline placement, diff;
- ``output``: renderers without torch — units, text, markdown, HTML, SVG, exports;
- ``session``: running a model — presets, loading, inputs, the ``Monitor`` pipeline, the live child;
- ``cli``: the command line, one parser and one dispatcher.
"""

__version__ = "0.2.0"
