"""What a report is about: model, part, decoupled-model, assembly, analysis and results directories,
and run directories that hold several of them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mdakit.artifacts import CARD_FILE, read_card
from mdakit.assembly import is_assembled
from mdakit.errors import MdakitError

KINDS = ("model", "decoupled", "part", "assembly", "analysis", "results")
ANALYSIS_FILES = ("accuracy.json", "similarity.json", "hit_rate.json", "misclassification.json")


@dataclass(frozen=True)
class Item:
    """One directory the report shows, and what kind it is."""

    kind: str
    path: Path


def _is_results(path: Path) -> bool:
    """A directory with JSON files of its own that are not model or masks files (benchmark results)."""
    return any(p.name not in (CARD_FILE, "masks.json") for p in path.glob("*.json"))


def classify(path: str | Path) -> str | None:
    """The kind of directory ``path`` is, or ``None`` (e.g. a run directory holding several).

    >>> classify("/nonexistent") is None
    True
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if is_assembled(path) and (path / "part-0").is_dir():  # benchmark results may hold an assembly.json too
        return "assembly"
    if (path / CARD_FILE).is_file():
        card, _ = read_card(path)
        if card.provenance.get("disassembled_from"):
            return "part"
        return "decoupled" if any(e.get("kind") == "decoupled" for e in card.edits) else "model"
    if (path / "summary.json").is_file() and any((path / name).is_file() for name in ANALYSIS_FILES):
        return "analysis"
    return "results" if _is_results(path) else None


def collect(paths: Sequence[str | Path]) -> list[Item]:
    """Classify each path; a directory of none of the kinds contributes its subdirectories that are.
    Models come first, then parts, assemblies, analyses and results (by name within a kind).

    Anything missing or unrecognised raises :class:`MdakitError` (before any work is done).
    """
    if not paths:
        raise MdakitError("name at least one model, part, assembly, analysis, results or run directory")
    items: list[Item] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise MdakitError(f"{path} does not exist")
        kind = classify(path)
        if kind is not None:
            items.append(Item(kind, path))
            continue
        children = [Item(k, child) for child in sorted(path.iterdir()) if not child.name.startswith(".")
                    and (k := classify(child)) is not None] if path.is_dir() else []
        if not children:
            raise MdakitError(f"{path} is not a model, part, assembly, analysis or results directory, "
                              "nor a run directory holding any")
        items.extend(children)
    unique = list(dict.fromkeys(items))
    return sorted(unique, key=lambda item: (KINDS.index(item.kind), str(item.path)))


def read_json(path: Path) -> dict:
    """A JSON file that must exist and parse (else :class:`MdakitError`)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise MdakitError(f"{path} is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MdakitError(f"{path} is not valid JSON (truncated or corrupt): {exc}") from exc
