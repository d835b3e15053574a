"""Renderers, no torch: units, text tables, markdown, HTML, SVG charts and exports."""
