"""Report sections read from files only: assemblies, analyses (``mdakit analyze``) and benchmark results."""

from __future__ import annotations

from pathlib import Path

from mdakit.assembly import ASSEMBLY_FILE
from mdakit.figures import data_uri
from mdakit.report.context import Context
from mdakit.report.items import Item, read_json
from mdakit.report.jsonview import render
from mdakit.report.markup import Cell, figure, heading, kv_table, num, para, pct, table

MAX_FILES = 30


def images_block(path: Path) -> str:
    """Every PNG in ``path``, inlined."""
    return "".join(figure(data_uri(p.read_bytes(), "png"), p.name) for p in sorted(path.glob("*.png")))


def assembly_body(item: Item, ctx: Context) -> str:
    """An assembled model: its logits, accuracy beside the originals', cross-part confusion, sizes, fit."""
    raw = read_json(item.path / ASSEMBLY_FILE)
    m = raw.get("metrics", {})
    parts = [heading("Layout"), kv_table([("layout", raw.get("layout")), ("rescaling", raw.get("rescale")),
                                          ("architecture", raw.get("arch")), ("logits", len(raw.get("logits", [])))])]
    logits = raw.get("logits", [])
    scale, shift = raw.get("scale", []), raw.get("shift", [])
    parts.append(table(["logit", "part", "dataset", "class", "scale", "shift"],
                       [[i, logit.get("part"), Cell(str(logit.get("dataset")), True),
                         Cell(str(logit.get("name")), True), scale[i] if i < len(scale) else None,
                         shift[i] if i < len(shift) else None]
                        for i, logit in enumerate(logits)]))
    if m:
        entries = m.get("parts", [])
        rows = [[Cell(str(e.get("source")), True), Cell(str(e.get("dataset")), True),
                 Cell(", ".join(map(str, e.get("classes", []))), True), e.get("num_images"), pct(e.get("accuracy")),
                 pct(e.get("original_accuracy")), *(pct(s) for s in e.get("into_parts", [])),
                 e.get("size", {}).get("params"), e.get("size", {}).get("macs")] for e in entries]
        rows.append([Cell("assembled", True), "", "", m.get("num_images"), pct(m.get("accuracy")),
                     pct(m.get("original_accuracy")), *("" for _ in entries), m.get("size", {}).get("params"),
                     m.get("size", {}).get("macs")])
        headers = ["part", "dataset", "classes", "test images", "accuracy", "orig.",
                   *(f"→ part {j}" for j in range(len(entries))), "params", "MACs"]
        parts += [heading("Accuracy, size and cost"),
                  table(headers, rows, "Argmax over all logits of the assembled model; orig. = the original models on "
                                       "the parts' classes (mean over parts for the assembly); → part j = share of the "
                                       "part's images classified into part j's classes")]
    else:
        parts.append(para("assembly.json holds no metrics (it was saved without an evaluation).", note=True))
    fit = {k: v for k, v in raw.get("fit", {}).items() if k not in ("samples", "scale", "shift")}
    if fit:
        parts += [heading("Rescaling fit"), render(fit)]
    return "".join(parts)


def analysis_body(item: Item, ctx: Context) -> str:
    """An ``mdakit analyze`` directory: summary numbers, its figures, the misclassification analysis (NAD §4)."""
    summary = read_json(item.path / "summary.json")
    parts = [heading("Summary"), render(summary), images_block(item.path)]
    mis = item.path / "misclassification.json"
    if mis.is_file():
        overall = read_json(mis).get("overall", {})
        parts += [heading("Misclassification"),
                  kv_table([(k, num(v)) for k, v in overall.items() if not isinstance(v, dict | list)])]
    return "".join(parts)


def results_body(item: Item, ctx: Context) -> str:
    """A benchmark results directory: every JSON file as tables (up to :data:`MAX_FILES`), every PNG."""
    files = sorted(item.path.glob("*.json"))
    parts = []
    for path in files[:MAX_FILES]:
        parts += [heading(path.name), render(read_json(path))]
    if len(files) > MAX_FILES:
        parts.append(para(f"{len(files) - MAX_FILES} more JSON files in {item.path} are not shown.", note=True))
    return "".join(parts) + images_block(item.path)
