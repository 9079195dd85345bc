"""The "look inside" blocks of a model's or part's section: routes, sharing between classes and
contribution patterns, computed from the model and its training data."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from mdakit.figures import data_uri, figure_bytes
from mdakit.report.contrib import ClassAttribution
from mdakit.report.decision import RouteMap, first_misclassified, probe_image, route_map
from mdakit.report.markup import Cell, figure, heading, para, table
from mdakit.report.patterns import contribution_patterns, pattern_figure
from mdakit.report.sharing import kept_filters, similarity, similarity_figure


def inline(fig: Figure, caption: str, fmt: str = "png") -> str:
    """A figure inlined as a data URI."""
    return figure(data_uri(figure_bytes(fig, fmt), fmt), caption)


def _label(att: ClassAttribution, c: int) -> str:
    return f"{c} {att.class_name(c)}"


def routes_block(att: ClassAttribution, classes: Sequence[int], top: int, probe: bool) -> str:
    """The classes' routes (SVG), and, when ``probe``, the first misclassified test image's route
    against its class's, with where it leaves it."""
    index = first_misclassified(att, att.source.test, classes) if probe and att.source.test is not None else None
    result: RouteMap = route_map(att, classes, top,
                                 probe_image(att.source.test, index) if index is not None else None)
    names = ", ".join(_label(att, c) for c in classes)
    parts = [heading("Decision routes"),
             inline(result.figure(), f"Routes of classes {names}: kept channels (nodes) and kernels (links) per "
                    f"class colour; rings of several colours are channels the classes share; columns wider than "
                    f"{top} show their {top} channels of most contribution and one node for the rest.", "svg")]
    if probe and index is None:
        parts.append(para("Every test image of these classes is classified correctly: no misclassified route to show."))
    if result.comparison is not None:
        comparison = result.comparison
        rows = [[Cell(name, True), info["own"], info["reference"], info["shared"], len(info["off_route"]),
                 f"{info['jaccard']:.2f}"] for name, info in comparison["columns"].items()]
        parts.append(table(["column", "input's channels", "class's channels", "shared", "off route", "Jaccard"], rows,
                           f"{result.probe.label}; it leaves its class's route at {comparison['leaves_at']}"))
    return "".join(parts)


def sharing_block(att: ClassAttribution) -> str:
    """Kept filters per layer and class, and the class-similarity matrix."""
    classes = att.classes
    kept = kept_filters(att.masks)
    widths = {layer.name: layer.out_size for layer in att.graph.layers}
    rows = [[Cell(name, True), widths[name], *counts] for name, counts in kept.items()]
    labels = [_label(att, c) for c in classes]
    matrix = similarity(att.masks)
    settings = att.settings
    caption = (f"{len(att.samples[classes[0]])} training samples per class; thresholds α/β conv "
               f"{settings.alpha_conv:.3g}/{settings.beta_conv:.3g}, linear {settings.alpha_linear:.3g}/"
               f"{settings.beta_linear:.3g}")
    parts = [heading("Kept filters per class"), table(["layer", "filters", *labels], rows, caption)]
    if len(classes) > 1:
        parts += [heading("Class similarity"),
                  inline(similarity_figure(matrix, labels, "Similarity of the classes' components"),
                         "Mean over layers (logits left out) of the Jaccard similarity of the classes' kept filters."),
                  table(["", *labels], [[Cell(label, True), *(f"{v:.3f}" for v in row)]
                                        for label, row in zip(labels, matrix)])]
    return "".join(parts)


def patterns_block(att: ClassAttribution, classes: Sequence[int], per_class: int = 5) -> str:
    """Contribution patterns of the last conv layer (else the last attributed layer), with the cosine
    similarity of total-contribution patterns within and between classes for every layer."""
    sub = ClassAttribution(att.source, att.graph, list(classes), att.rows, att.samples, att.sums, att.settings,
                           att.masks)
    patterns = contribution_patterns(sub, per_class=per_class)
    convs = [e for e in patterns["layers"] if e["kind"] == "conv"]
    shown = (convs or patterns["layers"])[-1]
    rows = [[Cell(e["layer"], True), e["unit"], _cos(e["total_cosine_within_class"]),
             _cos(e["total_cosine_between_classes"])] for e in patterns["layers"]]
    return "".join([
        heading("Contribution patterns"),
        inline(pattern_figure(patterns, shown), f"Layer {shown['layer']}: relative contribution of unit "
               f"{shown['unit']} and total contribution per input channel, for {per_class} samples of one class "
               "and for each class (Fig. 2–3 of the contribution paper)."),
        table(["layer", "unit shown", "cosine within class", "cosine between classes"], rows,
              "Mean cosine similarity of the samples' total-contribution patterns u (Eq. 5)."),
    ])


def _cos(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


