"""HTML reports with plots: self-contained files (images embedded), readable offline."""

from segflow.report._html import css_color, render

__all__ = ["css_color", "render"]
