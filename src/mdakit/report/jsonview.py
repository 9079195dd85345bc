"""Any JSON document (benchmark results, analyses, card metrics) as nested HTML tables."""

from __future__ import annotations

from typing import Any

from mdakit.report.markup import heading, kv_table, num, para, table

MAX_ROWS = 60
MAX_DEPTH = 3


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _short(value: Any) -> bool:
    """A scalar, or a list of at most 12 scalars (shown inline)."""
    return _scalar(value) or (isinstance(value, list) and len(value) <= 12 and all(_scalar(v) for v in value))


def _text(value: Any) -> str:
    return ", ".join(num(v) for v in value) if isinstance(value, list) else num(value)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A record with nested dicts of short values flattened one level (``outer.inner``).

    >>> _flat({"a": 1, "b": {"c": 2, "d": {"e": 3}}})
    {'a': 1, 'b.c': 2}
    """
    out: dict[str, Any] = {}
    for key, value in row.items():
        if _short(value):
            out[key] = value
        elif isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items() if _short(v)})
    return out


def records_table(rows: list[dict[str, Any]], caption: str = "") -> str:
    """A list of records as one table (first :data:`MAX_ROWS` rows).

    >>> "<th class=\\"l\\">b</th>" in records_table([{"a": 1}, {"b": 2}])
    True
    """
    flat = [_flat(r) for r in rows[:MAX_ROWS]]
    keys = list(dict.fromkeys(k for r in flat for k in r))
    note = f" (first {MAX_ROWS} of {len(rows)} rows)" if len(rows) > MAX_ROWS else ""
    body = [[(r[k] if _scalar(r[k]) else _text(r[k])) if k in r else "" for k in keys] for r in flat]
    return table(keys, body, caption + note)


def render(value: Any, depth: int = 0) -> str:
    """Scalars of a dict as a key/value table, nested dicts and record lists below, as headings.

    >>> out = render({"n": 2, "rows": [{"x": 1}]})
    >>> "<h4>rows</h4>" in out and "<td>2</td>" in out
    True
    """
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return records_table(value)
        return para(_text(value[:MAX_ROWS]))
    if not isinstance(value, dict):
        return para(num(value))
    parts = []
    short = [(k, v if _scalar(v) else _text(v)) for k, v in value.items() if _short(v)]
    if short:
        parts.append(kv_table(short))
    for key, inner in value.items():
        if _short(inner):
            continue
        if depth >= MAX_DEPTH:
            parts.append(para(f"{key}: nested further; see the file", note=True))
            continue
        parts.append(heading(key, min(6, 4 + depth)) + render(inner, depth + 1))
    return "".join(parts)
