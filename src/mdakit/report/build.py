"""One self-contained HTML page for models, parts, assemblies, analyses and benchmark results.

Every number on the page is read from the files named (cards, ``assembly.json``, analysis and result
JSON) or computed here from the models and their data (routes, similarity, patterns); none is typed in.
Every model file the page reads is verified before any section is built (:func:`verify_files`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from mdakit.errors import OptionError
from mdakit.files import check_output, write_file
from mdakit.report.context import Context, ReportOptions
from mdakit.report.file_sections import analysis_body, assembly_body, results_body
from mdakit.report.items import Item, collect
from mdakit.report.markup import Section, heading, page, table
from mdakit.report.model_sections import model_body, part_body
from mdakit.report.summary import summary_section

BODIES = {"model": model_body, "decoupled": model_body, "part": part_body, "assembly": assembly_body,
          "analysis": analysis_body, "results": results_body}
TITLES = {"model": "Model", "decoupled": "Decoupled model", "part": "Part", "assembly": "Assembly",
          "analysis": "Analysis", "results": "Results"}


def section_id(item: Item, taken: set[str]) -> str:
    """A unique HTML id for an item's section.

    >>> section_id(Item("part", Path("runs/demo/part-0")), {"part-part-0"})
    'part-part-0-2'
    """
    base = f"{item.kind}-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", item.path.name).strip("-") or "root")
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate)
    return candidate


def verify_files(items: Sequence[Item], ctx: Context) -> None:
    """Load, and so verify, every model file the sections of ``items`` read, before any is built: each
    model and part, each assembly's ``assembly.json`` and parts (and a padded one's merged network) and,
    when computing, each part's original where it exists (a moved original only leaves its routes out).

    A truncated or corrupt file raises :class:`~mdakit.errors.MdakitError` naming it.
    """
    for item in items:
        if item.kind == "assembly":
            ctx.assembly(item.path)
        elif item.kind in ("model", "decoupled", "part"):
            _, card = ctx.model(item.path)
            source = card.provenance.get("disassembled_from")
            if ctx.options.compute and item.kind == "part" and source and Path(source).exists():
                ctx.model(source)


def build_sections(items: Sequence[Item], ctx: Context) -> list[Section]:
    """An overview section (the contents), then one section per item."""
    taken = {"summary", "overview"}
    sections = [Section(section_id(item, taken), f"{TITLES[item.kind]}: {item.path}", BODIES[item.kind](item, ctx))
                for item in items]
    rows = [[TITLES[item.kind], str(item.path), f"#{s.id}"] for item, s in zip(items, sections)]
    overview = heading("Contents", 3) + table(["kind", "directory", "section"], rows)
    return [Section("overview", "Overview", overview), *sections]


def build_report(paths: Sequence[str | Path], options: ReportOptions | None = None) -> tuple[str, list[str]]:
    """The HTML page for ``paths`` and its section ids: the summary first (when any item is a model, part
    or assembly), then the contents and the details.

    >>> html, ids = build_report(["runs/demo"])  # doctest: +SKIP
    """
    options = options or ReportOptions()
    options.validate()
    items = collect(paths)
    ctx = Context(options)
    verify_files(items, ctx)
    front = summary_section(items, ctx)
    sections = build_sections(items, ctx)
    title = "mdakit report: " + ", ".join(str(p) for p in paths)
    subtitle = f"{len(items)} director{'y' if len(items) == 1 else 'ies'}; computed on {options.device}"
    ids = ([front.id] if front is not None else []) + [s.id for s in sections]
    return page(title, subtitle, sections, front), ids


def write_report(paths: Sequence[str | Path], out: str | Path, options: ReportOptions | None = None,
                 force: bool = False) -> tuple[Path, list[str]]:
    """Build the page and write it to ``out`` atomically (nothing is written when anything fails).

    >>> path, ids = write_report(["runs/demo"], "runs/demo/report.html")  # doctest: +SKIP
    """
    out = Path(out)
    check_output(out, force, paths)
    if out.is_dir():
        raise OptionError(f"{out} is a directory; {{0}} names the HTML file to write", "out")
    text, ids = build_report(paths, options)
    write_file(out, force, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return out, ids
