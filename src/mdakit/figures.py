"""Matplotlib figures without pyplot's global state (every PNG / SVG mdakit draws), and their bytes or data URIs."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
          "#7f7f7f")
MIME = {"png": "image/png", "svg": "image/svg+xml"}


def new_figure(width: float = 7.0, height: float = 4.0) -> Figure:
    """A figure on its own Agg canvas.

    >>> new_figure(2, 1).get_size_inches().tolist()
    [2.0, 1.0]
    """
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_bytes(fig: Figure, fmt: str = "png", dpi: int = 110) -> bytes:
    """The figure rendered as ``png`` or ``svg``.

    >>> figure_bytes(new_figure(1, 1))[:4]
    b'\\x89PNG'
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi, metadata={"Date": None} if fmt == "svg" else None)
    return buffer.getvalue()


def save_figure(fig: Figure, stem: Path, formats: tuple[str, ...] = ("png", "svg")) -> list[Path]:
    """Write ``stem.png`` / ``stem.svg``; returns the paths."""
    paths = []
    for fmt in formats:
        path = stem.parent / f"{stem.name}.{fmt}"
        path.write_bytes(figure_bytes(fig, fmt))
        paths.append(path)
    return paths


def data_uri(data: bytes, fmt: str) -> str:
    """An inline ``data:`` URI for image bytes.

    >>> data_uri(b"abc", "png")
    'data:image/png;base64,YWJj'
    """
    return f"data:{MIME[fmt]};base64,{base64.b64encode(data).decode('ascii')}"
