"""Helpers shared by the HTML reports: templates, figures and images as data URIs."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow._io import atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TEMPLATES = Path(__file__).parent / "templates"


def new_figure(width: float = 6.0, height: float = 3.2) -> Figure:
    """A matplotlib Figure on the Agg canvas (no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_uri(fig: Figure) -> str:
    """PNG data URI of a figure."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def jpeg_uri(rgb: np.ndarray, quality: int = 80) -> str:
    """JPEG data URI of an RGB uint8 image."""
    from segflow.data.visual import encode_jpeg

    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(rgb, quality)).decode("ascii")


def css_color(rgb: tuple[int, int, int] | list[int]) -> str:
    """``#rrggbb`` for an RGB triple."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def render(template: str, out: Path, **context: Any) -> Path:
    """Render ``templates/<template>`` with autoescaping and write it atomically to ``out``."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"])
    )
    env.filters["css_color"] = css_color
    html = env.get_template(template).render(**context)
    atomic_write_text(out, html)
    return out
