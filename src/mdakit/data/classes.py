"""Class lists as users write them: ``"0,1,2"``, ranges ``"3-9"``, class names, or a list."""

from __future__ import annotations

from collections.abc import Sequence

from mdakit.errors import MdakitError


def parse_classes(spec: str | Sequence[int | str], class_names: Sequence[str]) -> list[int]:
    """Parse ``"0,1,2"``, ranges ``"3-9"``, class names, or a list, into class indices.

    Order is kept (it sets the order of a part's logits). Empty, duplicate or unknown entries raise
    :class:`MdakitError`.

    >>> parse_classes("0,3-5", [str(i) for i in range(10)])
    [0, 3, 4, 5]
    >>> parse_classes("Trouser,Bag", ["T-shirt/top", "Trouser", "Pullover", "Bag"])
    [1, 3]
    """
    items: list[int | str] = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    lookup = {n.lower(): i for i, n in enumerate(class_names)}
    out: list[int] = []
    for item in items:
        if isinstance(item, str):
            if item == "":
                continue
            if item.lower() in lookup and not item.isdigit():
                out.append(lookup[item.lower()])
                continue
            if "-" in item and all(p.strip().isdigit() for p in item.split("-", 1)):
                lo, hi = (int(p) for p in item.split("-", 1))
                if lo > hi:
                    raise MdakitError(f"class range {item!r} is empty (start above end)")
                if hi >= len(class_names):
                    raise MdakitError(f"class range {item!r} is out of range: this dataset has classes "
                                      f"0-{len(class_names) - 1}")
                out.extend(range(lo, hi + 1))
                continue
            if item.lstrip("-").isdigit():
                out.append(int(item))
                continue
            raise MdakitError(f"unknown class {item!r}; classes are 0-{len(class_names) - 1} "
                              f"or names like {', '.join(list(class_names)[:3])}")
        else:
            out.append(int(item))
    if not out:
        raise MdakitError("the class list is empty")
    bad = [c for c in out if not 0 <= c < len(class_names)]
    if bad:
        raise MdakitError(f"class {bad[0]} is out of range: this dataset has classes 0-{len(class_names) - 1}")
    dupes = sorted({c for c in out if out.count(c) > 1})
    if dupes:
        raise MdakitError(f"class {dupes[0]} is listed more than once")
    return out
