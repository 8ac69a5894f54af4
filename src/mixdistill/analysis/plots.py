"""Figure helpers. Figures are made with ``matplotlib.figure.Figure`` and the Agg canvas directly, so
nothing here touches pyplot's global state or needs a display."""

from __future__ import annotations

from pathlib import Path

from mixdistill.files import save_figure_file

DPI = 110


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    return save_figure_file(fig, path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})


def class_colors(n: int):
    """``n`` distinguishable colours (tab10 / tab20, then a continuous map)."""
    from matplotlib import colormaps

    if n <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = colormaps["turbo"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]
