"""Route maps: a model's class routes, optionally one test image's route against its class's, as a
figure plus JSON (``mdakit routes``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch.utils.data import Dataset

from mdakit.data import labels_of
from mdakit.errors import MdakitError, OptionError
from mdakit.evaluate import predict_logits
from mdakit.figures import save_figure
from mdakit.files import write_directory
from mdakit.report.contrib import ClassAttribution, sample_sums
from mdakit.report.route_plot import draw_routes
from mdakit.report.routes import Route, channel_scores, columns, compare, input_route, route_from_masks, shown_channels


@dataclass
class RouteMap:
    """Everything one route picture shows."""

    cols: list[tuple[str, int]]
    routes: list[Route]
    shown: dict[str, list[int]]
    title: str
    probe: Route | None = None
    comparison: dict[str, Any] | None = None
    probe_info: dict[str, Any] = field(default_factory=dict)

    def figure(self) -> Figure:
        """Draw it (:func:`~mdakit.report.route_plot.draw_routes`)."""
        return draw_routes(self.cols, self.routes, self.shown, self.probe, self.comparison, self.title)

    def to_dict(self) -> dict[str, Any]:
        names = [name for name, _ in self.cols]
        return {"title": self.title, "columns": [{"name": n, "width": w, "shown": self.shown[n]} for n, w in self.cols],
                "routes": [r.to_dict(names) for r in self.routes],
                "input": None if self.probe is None else {**self.probe_info, "route": self.probe.to_dict(names),
                                                          "comparison": self.comparison}}


def route_map(att: ClassAttribution, classes: Sequence[int] | None = None, top: int = 12,
              probe: tuple[torch.Tensor, int, str] | None = None, title: str = "") -> RouteMap:
    """The routes of ``classes`` (default: all attributed), wide columns cut to ``top`` channels.

    ``probe`` is ``(image, true class, label)``: that image's route, walking back from the logit the
    model predicts for it, is compared with its true class's route.
    """
    chosen = list(att.classes if classes is None else classes)
    unknown = [c for c in chosen if c not in att.masks.per_class]
    if unknown:
        raise MdakitError(f"class {unknown[0]} was not attributed (attributed: {att.classes})")
    if top < 1:
        raise OptionError(f"{{0}} must be at least 1, got {top}", "top")
    cols = columns(att.graph)
    routes = [route_from_masks(att.graph, att.masks.per_class[c], f"class {c} ({att.class_name(c)})") for c in chosen]
    shown = shown_channels(routes, cols, channel_scores(att.graph, [att.sums[c] for c in chosen]), top)
    result = RouteMap(cols, routes, shown, title or f"Decision routes of {att.source.label}")
    if probe is not None:
        image, true_class, label = probe
        if true_class not in chosen:
            raise MdakitError(f"{label} is of class {true_class}, which is not among the chosen classes {chosen}")
        with torch.no_grad():
            att.source.model.eval()
            logits = att.source.model(image[None].to(next(att.source.model.parameters()).device)).cpu()[0]
        row = int(logits.argmax())
        predicted = att.source.card.logit_classes[row]
        sums = sample_sums(att.graph, image[None], att.settings)[0]
        name = f"{label}: class {true_class} ({att.class_name(true_class)}), predicted {predicted} " \
               f"({att.class_name(predicted)})"
        result.probe = input_route(att.graph, sums, row, att.settings, name)
        result.comparison = compare(result.probe, routes[chosen.index(true_class)], [n for n, _ in cols])
        result.probe_info = {"label": label, "true_class": true_class, "predicted_class": predicted,
                             "correct": predicted == true_class}
    return result


def probe_image(test: Dataset, index: int) -> tuple[torch.Tensor, int, str]:
    """``(image, class, label)`` of test image ``index`` (a probe for :func:`route_map`)."""
    if not 0 <= index < len(test):
        raise OptionError(f"{{0}} {index} is out of range: the test split has {len(test)} images", "image_index")
    image, target = test[index]
    return image, int(target), f"test image {index}"


def first_misclassified(att: ClassAttribution, test: Dataset, classes: Sequence[int]) -> int | None:
    """Index of the first test image of ``classes`` that the model gets wrong (all logits), if any."""
    labels = labels_of(test)
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) == 0:
            continue
        logits, _ = predict_logits(att.source.model, torch.utils.data.Subset(test, idx.tolist()))
        predicted = torch.tensor(att.source.card.logit_classes)[logits.argmax(1)]
        wrong = torch.nonzero(predicted != c).flatten()
        if len(wrong):
            return int(idx[wrong[0]])
    return None


def write_route_map(result: RouteMap, out: str | Path, force: bool = False) -> list[Path]:
    """Write ``routes.png``, ``routes.svg`` and ``routes.json`` into the directory ``out`` (atomically)."""
    fig = result.figure()

    def write(tmp: Path) -> None:
        save_figure(fig, tmp / "routes")
        (tmp / "routes.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")

    write_directory(out, force, write)
    return [Path(out) / name for name in ("routes.png", "routes.svg", "routes.json")]
