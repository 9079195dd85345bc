"""Drawing decision routes (Fig. 6): columns of channel nodes, each route's links in its own colour.

A node kept by several routes is drawn as concentric rings, one colour per route, so shared channels
show as shared; links shared by several routes run as parallel lines. Columns wider than ``top`` show
their best channels (:func:`~mdakit.report.routes.shown_channels`) and one square summary node for the
rest, which every link to or from a hidden channel goes through. An input's route is overlaid in black
(dashed links, ringed nodes); its off-route channels get a red cross and the column where it first
leaves the reference route a red line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mdakit.figures import COLORS, new_figure
from mdakit.report.routes import Route


class _Layout:
    """Node positions: column ``i`` at x = i, shown channels top to bottom, the summary node last."""

    def __init__(self, cols: Sequence[tuple[str, int]], shown: Mapping[str, list[int]]):
        self.cols = list(cols)
        self.index = {name: i for i, (name, _) in enumerate(cols)}
        self.y: dict[tuple[int, int], float] = {}
        self.summary: dict[int, float] = {}
        for i, (name, width) in enumerate(cols):
            hidden = width - len(shown[name])
            slots = len(shown[name]) + (1 if hidden else 0)
            for j, ch in enumerate(shown[name]):
                self.y[(i, ch)] = 1 - (j + 0.5) / slots
            if hidden:
                self.summary[i] = 0.5 / slots

    def pos(self, column: int, channel: int) -> tuple[float, float]:
        return float(column), self.y.get((column, channel), self.summary.get(column, 0.0))

    def segments(self, route: Route, dy: float = 0.0) -> list[tuple[tuple[float, float], tuple[float, float]]]:
        seen = set()
        for name, links in route.links.items():
            target = self.index[name]
            for c, s, k in links.tolist():
                (x0, y0), (x1, y1) = self.pos(c, s), self.pos(target, k)
                seen.add(((x0, y0 + dy), (x1, y1 + dy)))
        return sorted(seen)


def draw_routes(cols: Sequence[tuple[str, int]], routes: Sequence[Route], shown: Mapping[str, list[int]],
                probe: Route | None = None, comparison: Mapping[str, Any] | None = None, title: str = "") -> Figure:
    """The routes (and optionally one input's route with its comparison) as a figure.

    >>> import torch
    >>> r = Route("class 0", {"input": [0], "fc": [0]}, {"fc": torch.tensor([[0, 0, 0]])})
    >>> fig = draw_routes([("input", 1), ("fc", 2)], [r], {"input": [0], "fc": [0, 1]})
    >>> len(fig.axes)
    1
    """
    layout = _Layout(cols, shown)
    fig = new_figure(max(6.0, 1.7 * len(cols) + 1.5), 6.0)
    ax = fig.add_subplot()
    spread = 0.012
    for i, route in enumerate(routes):
        dy = (i - (len(routes) - 1) / 2) * spread
        ax.add_collection(LineCollection(layout.segments(route, dy), colors=COLORS[i % len(COLORS)],
                                         linewidths=1.1, alpha=0.55, zorder=1))
    if probe is not None:
        ax.add_collection(LineCollection(layout.segments(probe), colors="black", linewidths=0.9,
                                         linestyles="dashed", alpha=0.8, zorder=2))
    _draw_nodes(ax, layout, routes, shown)
    if probe is not None:
        _draw_probe(ax, layout, probe, comparison)
    for i, (name, width) in enumerate(cols):
        short = name if name == "input" else ".".join(name.split(".")[-2:])
        ax.text(i, -0.06, f"{short}\n{width} ch", ha="center", va="top", fontsize=8)
        for r, route in enumerate(routes):
            ax.text(i, -0.16 - 0.045 * r, f"{len(route.channels[name])} kept", ha="center", va="top", fontsize=7,
                    color=COLORS[r % len(COLORS)])
        if i in layout.summary:
            hidden = width - len(shown[name])
            ax.text(i + 0.08, layout.summary[i], f"+{hidden} more", va="center", fontsize=7, color="#555555")
    handles = [Line2D([], [], color=COLORS[i % len(COLORS)], lw=2, label=route.label) for i, route in enumerate(routes)]
    if probe is not None:
        handles.append(Line2D([], [], color="black", lw=1, ls="--", marker="o", mfc="none", label=probe.label))
        handles.append(Line2D([], [], color="red", lw=0, marker="x", label="off the class's route"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_xlim(-0.5, len(cols) - 0.5)
    ax.set_ylim(-0.2 - 0.045 * len(routes), 1.05)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    return fig


def _draw_nodes(ax: Any, layout: _Layout, routes: Sequence[Route], shown: Mapping[str, list[int]]) -> None:
    for i, (name, _) in enumerate(layout.cols):
        keepers = [set(route.channels[name]) for route in routes]
        points = [(ch, layout.pos(i, ch)) for ch in shown[name]]
        if i in layout.summary:
            hidden_kept = [bool(k - set(shown[name])) for k in keepers]
            x, y = layout.pos(i, -1)
            ax.scatter([x], [y], s=150, marker="s", c="#dddddd", edgecolors="#888888", zorder=3)
            for r in reversed(range(len(routes))):
                if hidden_kept[r]:
                    ax.scatter([x], [y], s=110 - 80 * r / max(len(routes), 1), marker="s",
                               c=COLORS[r % len(COLORS)], zorder=4)
        for ch, (x, y) in points:
            on = [r for r, k in enumerate(keepers) if ch in k]
            if not on:
                ax.scatter([x], [y], s=25, c="#eeeeee", edgecolors="#bbbbbb", zorder=3)
                continue
            for rank, r in enumerate(on):  # concentric rings: shared channels carry every route's colour
                ax.scatter([x], [y], s=170 - 130 * rank / len(on), c=COLORS[r % len(COLORS)],
                           edgecolors="white", linewidths=0.6, zorder=3 + rank)


def _draw_probe(ax: Any, layout: _Layout, probe: Route, comparison: Mapping[str, Any] | None) -> None:
    for name, chans in probe.channels.items():
        i = layout.index[name]
        xs, ys = zip(*(layout.pos(i, ch) for ch in chans)) if chans else ((), ())
        ax.scatter(xs, ys, s=190, facecolors="none", edgecolors="black", linewidths=1.0, zorder=10)
    if not comparison:
        return
    for name, info in comparison["columns"].items():
        i = layout.index[name]
        off = sorted({layout.pos(i, ch) for ch in info["off_route"]})
        if off:
            ax.scatter(*zip(*off), s=60, marker="x", c="red", linewidths=1.5, zorder=11)
    if comparison.get("leaves_at") is not None:
        i = layout.index[comparison["leaves_at"]]
        ax.axvline(i, color="red", lw=0.8, ls=":", zorder=0)
        ax.text(i, 1.03, "leaves the route here", color="red", ha="center", fontsize=8)
