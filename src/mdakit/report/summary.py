"""The report's front section: what was cut and joined, one sentence per model, part and assembly; then
each part's accuracy beside its original's restricted to the same classes, and its parameters and MACs
as a share of the original's, as one table and one chart.

Every number is read from the cards and ``assembly.json`` (the numbers their evaluations wrote); none
is computed here, and a number a file lacks is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from mdakit.artifacts import ModelCard
from mdakit.assembly import AssemblyCard
from mdakit.figures import COLORS, new_figure
from mdakit.report.context import Context
from mdakit.report.inside import inline
from mdakit.report.items import Item
from mdakit.report.markup import Cell, Section, bullets, pct, ratio, side_by_side, table

SIZE_KEYS = ("params", "macs")


@dataclass
class Row:
    """One line of the table and chart: a part (alone or in an assembly) or a whole assembly.

    ``reference`` is the original's accuracy restricted to the row's classes; ``size`` and
    ``original_size`` hold ``params`` and ``macs``. Any of them is ``None`` when no file holds it.
    """

    label: str
    classes: str
    accuracy: float | None
    reference: float | None
    size: dict[str, int] | None
    original_size: dict[str, int] | None

    def share(self, key: str) -> float | None:
        """``size[key]`` as a share of ``original_size[key]``.

        >>> Row("p", "0", None, None, {"macs": 1}, {"macs": 4}).share("macs")
        0.25
        >>> Row("p", "0", 0.9, 0.9, None, None).share("macs") is None
        True
        """
        if not self.size or not self.original_size or not self.original_size.get(key) or key not in self.size:
            return None
        return self.size[key] / self.original_size[key]


def class_list(card: ModelCard) -> str:
    """The names of the card's logit classes, in logit order.

    >>> class_list(ModelCard(None, [1, 2, 2], 3, class_names=["cat", "dog", "emu"], logit_classes=[2, 0]))
    'emu, cat'
    """
    names = card.class_names
    return ", ".join(names[c] if c < len(names) else str(c) for c in card.logit_classes)


def model_sentence(item: Item, card: ModelCard) -> str:
    """What a trained or decoupled model is.

    >>> from pathlib import Path
    >>> model_sentence(Item("model", Path("runs/m")), ModelCard("lenet5", [1, 28, 28], 10, dataset="mnist"))
    'runs/m: a lenet5 model of mnist with 10 logits.'
    """
    what = f"{item.path}: a {card.arch or 'user-built'} model of {card.dataset or 'unnamed data'} with " \
           f"{len(card.logit_classes)} logits"
    gated = [layer for e in card.edits if e.get("kind") == "decoupled" for layer in e.get("layers", [])]
    if item.kind == "decoupled":
        what += f", decoupled: gates on {len(gated)} layer{'s' if len(gated) != 1 else ''}"
    accuracy = card.metrics.get("test_accuracy")
    return what + (f"; test accuracy {pct(accuracy)}." if accuracy is not None else ".")


def part_sentence(item: Item, card: ModelCard) -> str:
    """What a part is: which classes were cut from which model, by which attribution.

    >>> import textwrap
    >>> from pathlib import Path
    >>> card = ModelCard("lenet5", [1, 28, 28], 10, dataset="mnist", logit_classes=[0, 1],
    ...                  provenance={"disassembled_from": "runs/m", "method": "contribution"})
    >>> from pathlib import Path
    >>> print(textwrap.fill(part_sentence(Item("part", Path("runs/p")), card), 100))
    runs/p: classes 0, 1 of mnist (2 of its 10 logits) cut from the lenet5 model runs/m by contribution
    attribution.
    """
    prov = card.provenance
    return (f"{item.path}: classes {class_list(card)} of {card.dataset or 'unnamed data'} "
            f"({len(card.logit_classes)} of its {card.num_classes} logits) cut from the {card.arch or 'user-built'} "
            f"model {prov.get('disassembled_from')} by {prov.get('method')} attribution.")


def assembly_sentence(item: Item, card: AssemblyCard) -> str:
    """What an assembly joined, and how.

    >>> import textwrap
    >>> from pathlib import Path
    >>> parts = [ModelCard("lenet5", [1, 28, 28], 10, dataset=d, logit_classes=[0, 1]) for d in ("mnist", "fmnist")]
    >>> print(textwrap.fill(assembly_sentence(Item("assembly", Path("runs/a")), AssemblyCard(parts, ["runs/p", None])),
    ...                     100))
    runs/a: 2 parts joined in the parallel layout (rescaling: none) into one classifier of 4 logits:
    part 0, classes 0, 1 of mnist from runs/p; part 1, classes 0, 1 of fmnist.
    """
    joined = "; ".join(f"part {p}, classes {class_list(c)} of {c.dataset or 'unnamed data'}"
                       + (f" from {source}" if source else "")
                       for p, (c, source) in enumerate(zip(card.part_cards, card.sources)))
    return (f"{item.path}: {len(card.part_cards)} parts joined in the {card.layout} layout (rescaling: "
            f"{card.rescale}) into one classifier of {len(card.logits)} logits: {joined}.")


def part_row(label: str, card: ModelCard, accuracy: float | None) -> Row:
    """A part's row: ``accuracy`` (alone or in an assembly) beside the numbers of its card."""
    m = card.metrics
    return Row(label, class_list(card), accuracy, m.get("original_restricted_accuracy"), m.get("part_size"),
               m.get("original_size"))


def originals_size(cards: Sequence[ModelCard]) -> dict[str, int] | None:
    """The size of the distinct models the parts were cut from, together (``None`` when a card lacks it).

    >>> card = ModelCard(None, [2], 3, provenance={"disassembled_from": "m"},
    ...                  metrics={"original_size": {"params": 10, "macs": 20}})
    >>> originals_size([card, card])
    {'params': 10, 'macs': 20}
    """
    sizes: dict[str, dict[str, int]] = {}
    for card in cards:
        source, size = card.provenance.get("disassembled_from"), card.metrics.get("original_size")
        if source is None or size is None:
            return None
        sizes[str(source)] = size
    return {key: sum(size[key] for size in sizes.values()) for key in SIZE_KEYS}


def assembly_rows(item: Item, card: AssemblyCard) -> list[Row]:
    """A row per part (its accuracy within the assembly) and one for the whole assembly."""
    m = card.metrics
    entries: list[dict[str, Any]] = m.get("parts", [])
    rows = [part_row(f"{item.path.name}: part {p}", part, entries[p].get("accuracy") if p < len(entries) else None)
            for p, part in enumerate(card.part_cards)]
    rows.append(Row(f"{item.path.name} (all parts)", f"{len(card.logits)} logits", m.get("accuracy"), None,
                    m.get("size"), originals_size(card.part_cards)))
    return rows


def summary_table(rows: Sequence[Row]) -> str:
    """The rows as a table, shares formatted as :func:`~mdakit.report.markup.ratio` does."""
    def share(row: Row, key: str) -> str:
        return "n/a" if row.share(key) is None else ratio(row.size[key], row.original_size[key])

    body = [[Cell(r.label, True), Cell(r.classes, True), pct(r.accuracy), pct(r.reference), share(r, "params"),
             share(r, "macs")] for r in rows]
    return table(["", "classes", "accuracy", "original, same classes", "params", "MACs"], body,
                 "accuracy: a part alone on its own logits; a part in an assembly and the whole assembly by the argmax "
                 "over all the assembly's logits. original, same classes: the model the part was cut from, its argmax "
                 "restricted to the part's classes. params, MACs: share of the original's (for a whole assembly, of "
                 "its distinct originals together).")


def _bars(ax: Any, series: Sequence[tuple[str, Sequence[float | None]]], limit: float) -> None:
    """Horizontal bars, one group per row (top to bottom), values in percent written at their ends."""
    height = 0.8 / len(series)
    count = len(series[0][1])
    for k, (label, values) in enumerate(series):
        shown = [(i + (k - (len(series) - 1) / 2) * height, 100 * v) for i, v in enumerate(values) if v is not None]
        ys, xs = [y for y, _ in shown], [x for _, x in shown]
        ax.barh(ys, xs, height=height, color=COLORS[k], label=label)
        for y, x in shown:
            ax.text(x + limit * 0.01, y, f"{x:.1f}", va="center", fontsize=7)
    ax.set_xlim(0, limit * 1.15)
    ax.set_ylim(count - 0.5, -0.5)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncols=1, fontsize=8, frameon=False)
    ax.tick_params(labelsize=8)


def summary_chart(rows: Sequence[Row]) -> Figure:
    """Accuracy beside the restricted original's (left) and parameters and MACs in percent of the
    original's (right), one group of bars per row.

    >>> fig = summary_chart([Row("p", "0, 1", 0.9, 0.95, {"params": 1, "macs": 2}, {"params": 4, "macs": 4})])
    >>> [len(ax.patches) for ax in fig.axes]
    [2, 2]
    """
    fig = new_figure(5.6, 1.4 + 0.4 * len(rows))
    accuracy_ax, size_ax = fig.subplots(1, 2, sharey=True)
    _bars(accuracy_ax, [("part or assembly", [r.accuracy for r in rows]),
                        ("original, same classes", [r.reference for r in rows])], 100)
    accuracy_ax.set_yticks(range(len(rows)), [r.label for r in rows])
    accuracy_ax.set_xlabel("test accuracy (%)", fontsize=8)
    shares = [[r.share(key) for r in rows] for key in SIZE_KEYS]
    largest = max([100 * s for values in shares for s in values if s is not None], default=100)
    _bars(size_ax, [("params", shares[0]), ("MACs", shares[1])], max(100, largest))
    size_ax.axvline(100, color="#555555", lw=0.8, ls="--")
    size_ax.set_xlabel("% of the original's", fontsize=8)
    return fig


def summary_section(items: Sequence[Item], ctx: Context) -> Section | None:
    """The front section for ``items`` (their files already verified into ``ctx``); ``None`` when no
    item is a model, part or assembly."""
    sentences, rows = [], []
    for item in items:
        if item.kind == "assembly":
            card = ctx.assembly(item.path)[1]
            sentences.append(assembly_sentence(item, card))
            rows += assembly_rows(item, card)
        elif item.kind == "part":
            card = ctx.model(item.path)[1]
            sentences.append(part_sentence(item, card))
            rows.append(part_row(item.path.name, card, card.metrics.get("part_accuracy")))
        elif item.kind in ("model", "decoupled"):
            sentences.append(model_sentence(item, ctx.model(item.path)[1]))
    if not sentences:
        return None
    body = bullets(sentences)
    if rows:
        chart = inline(summary_chart(rows), "Left: accuracy beside the original's on the same classes. Right: "
                                            "parameters and MACs in percent of the original's (dashed line).")
        body += side_by_side(summary_table(rows), chart)
    return Section("summary", "Summary", body)
