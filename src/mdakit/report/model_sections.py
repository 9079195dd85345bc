"""Report sections of model files: a trained model, a decoupled model and a disassembled part."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from mdakit.artifacts import ModelCard
from mdakit.attribution.base import available_methods, get_method
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.report.context import Context
from mdakit.report.contrib import settings_from_record
from mdakit.report.inside import patterns_block, routes_block, sharing_block
from mdakit.report.items import Item
from mdakit.report.jsonview import render
from mdakit.report.markup import Cell, heading, kv_table, num, para, pct, ratio, table


def _class_label(card: ModelCard, c: int) -> str:
    return f"{c} {card.class_names[c]}" if c < len(card.class_names) else str(c)


def card_block(card: ModelCard) -> str:
    """The card's identity: architecture, data, logits, training settings."""
    config = card.training.get("config", {})
    rows = [("architecture", card.arch or "user-built module"), ("dataset", card.dataset or "n/a"),
            ("input shape", " × ".join(map(str, card.input_shape))),
            ("logits", ", ".join(_class_label(card, c) for c in card.logit_classes))]
    rows += [(f"training {key.replace('_', ' ')}", value) for key, value in config.items() if value is not None]
    result = card.training.get("result", {})
    if "seconds" in result:
        rows.append(("training time (s)", float(result["seconds"])))
    return heading("Card") + kv_table(rows)


def size_rows(label: str, size: dict[str, int], reference: dict[str, int] | None = None) -> list[Any]:
    """A table row of parameters, non-zero parameters and MACs (with ratios to ``reference``)."""
    if reference is None:
        return [Cell(label, True), size["params"], size["nonzero_params"], size["macs"], "", ""]
    return [Cell(label, True), size["params"], size["nonzero_params"], size["macs"],
            ratio(size["params"], reference["params"]), ratio(size["macs"], reference["macs"])]


SIZE_HEADERS = ["model", "params", "non-zero params", "MACs", "params ratio", "MACs ratio"]


def _guarded(title: str, block: Callable[[], str]) -> str:
    """A computed block, or a note saying why it could not be computed."""
    try:
        return block()
    except MdakitError as exc:
        return heading(title) + para(f"Not computed: {exc}", note=True)


def model_body(item: Item, ctx: Context) -> str:
    """A trained (or decoupled) model: card, accuracy, size, and what each class relies on."""
    _, card = ctx.model(item.path)
    m = card.metrics
    parts = [card_block(card), heading("Accuracy and size")]
    rows = [("test accuracy (all logits)", pct(m.get("test_accuracy"))),
            ("validation accuracy", pct(m.get("val_accuracy")))]
    if "original_test_accuracy" in m:
        rows.append(("test accuracy of the model before decoupling", pct(m["original_test_accuracy"])))
    parts.append(kv_table(rows))
    if "params" in m:
        parts.append(table(SIZE_HEADERS, [size_rows("model", m)], "MACs of one input (FlopCounterMode flops / 2)"))
    per_class = m.get("per_class_test_accuracy", {})
    if per_class:
        parts.append(table(["class", "test accuracy"], [[Cell(_class_label(card, int(c)), True), pct(v)]
                                                         for c, v in per_class.items()]))
    if item.kind == "decoupled":
        extra = {k: v for k, v in m.items() if k not in ("test_accuracy", "val_accuracy", "original_test_accuracy",
                                                         "per_class_test_accuracy")}
        gated = [layer for e in card.edits if e.get("kind") == "decoupled" for layer in e.get("layers", [])]
        parts += [heading("Decoupling"), render({**extra, "gated layers": gated})]
        return "".join(parts)
    if ctx.options.compute:
        classes = list(card.logit_classes[: ctx.options.max_classes])

        def inside() -> str:
            att = ctx.attribution(item.path, classes)
            shown = classes[: ctx.options.route_classes]
            return sharing_block(att) + routes_block(att, shown, ctx.options.top, probe=True) + \
                patterns_block(att, shown)

        parts.append(_guarded("What each class relies on", inside))
    return "".join(parts)


def _widths(model: nn.Module, card: ModelCard) -> dict[str, int]:
    return {layer.name: layer.out_size for layer in trace(model, card.input_shape).layers}


def part_body(item: Item, ctx: Context) -> str:
    """A disassembled part: accuracy beside the original's (all and restricted logits), size, steps, routes."""
    model, card = ctx.model(item.path)
    m, prov = card.metrics, card.provenance
    settings = prov.get("settings", {})
    names = ", ".join(_class_label(card, c) for c in card.logit_classes)
    parts = [card_block(card), heading("Accuracy"), table(["model", "test accuracy"], [
        [Cell("part (its own logits)", True), pct(m.get("part_accuracy"))],
        [Cell("original, all logits (orig.)", True), pct(m.get("original_accuracy"))],
        [Cell("original, restricted to the part's logits (reference)", True),
         pct(m.get("original_restricted_accuracy"))]],
        f"{num(m.get('test_images'))} test images of classes {names}; part cut from {prov.get('disassembled_from')} "
        f"by {prov.get('method')} attribution")]
    if "part_size" in m:
        parts += [heading("Size and cost"), table(SIZE_HEADERS, [size_rows("original", m["original_size"]),
                                                                   size_rows("part", m["part_size"],
                                                                             m["original_size"])])]
    steps = m.get("steps", {})
    if steps:
        parts.append(table(["step", "seconds", "peak RSS (MB)"],
                           [[Cell(k, True), v.get("seconds"), v.get("peak_rss_mb")] for k, v in steps.items()],
                           "Time and peak resident memory of each disassembly step"))
    parts.append(heading("Attribution settings") + render({k: v for k, v in settings.items() if k != "calibration"}))
    calibration = settings.get("calibration")
    if calibration:
        parts.append(table(["threshold factor", "held-out accuracy"],
                           [[t["factor"], pct(t["holdout_accuracy"])] for t in calibration.get("trials", [])],
                           f"Calibration on {num(calibration.get('holdout_images'))} images of "
                           f"{calibration.get('holdout')}; reference {pct(calibration.get('reference_accuracy'))}, "
                           f"tolerance {num(calibration.get('tolerance_points'))} points; chosen factor "
                           f"{num(calibration.get('chosen_factor'))}"))
    if ctx.options.compute and _exposes_sums(prov.get("method")):
        parts.append(_guarded("Routes of the part's classes", lambda: _part_routes(model, card, ctx)))
    elif ctx.options.compute:
        parts.append(para(f"Routes are drawn for contribution masks; this part was cut with {prov.get('method')}.",
                          note=True))
    return "".join(parts)


def _exposes_sums(method: str | None) -> bool:
    """Whether routes can be drawn for a part cut by ``method``: a registered method that exposes its sums.

    >>> _exposes_sums("contribution"), _exposes_sums("nad"), _exposes_sums(None)
    (True, False, False)
    """
    return method in available_methods() and get_method(method).exposes_sums


def _part_routes(model: nn.Module, card: ModelCard, ctx: Context) -> str:
    prov = card.provenance
    settings = prov.get("settings", {})
    method = prov["method"]
    att = ctx.attribution(prov["disassembled_from"], list(card.logit_classes), settings_from_record(settings, method),
                          settings.get("samples", ctx.options.samples), settings.get("seed", ctx.options.seed), method)
    union = att.masks.union()
    widths = _widths(model, card)
    rows = [[Cell(layer.name, True), layer.out_size, int(union[layer.name].outputs.sum()), widths.get(layer.name)]
            for layer in att.graph.layers]
    return (sharing_block(att) + routes_block(att, att.classes, ctx.options.top, probe=False)
            + table(["layer", "original filters", "kept by the classes' routes", "filters in the part"], rows,
                    "Routes recomputed on the original model with the part's recorded samples, seed and thresholds"))
