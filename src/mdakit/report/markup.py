"""Small HTML builders for a self-contained page: every text goes through :func:`html.escape`,
images are inline ``data:`` URIs, the style sheet is inline, and there is no script."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#263238;color:#fff;padding:1em 2em}header h1{margin:0;font-size:1.5em}
header p{margin:.3em 0 0;color:#cfd8dc}
nav{margin:0 -2em;padding:.5em 2em;background:#eceff1;border-top:1px solid #cfd8dc;border-bottom:1px solid #cfd8dc}
nav a{margin-right:1em;color:#1565c0}
main{padding:0 2em 2em}section{background:#fff;border:1px solid #e0e0e0;border-radius:6px;margin:1.2em 0;
padding:.5em 1.5em 1em}h2{border-bottom:1px solid #eee;padding-bottom:.3em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.25em .6em;
text-align:right}th{background:#f5f5f5}td.l,th.l{text-align:left}caption{caption-side:bottom;font-size:.85em;
color:#555;text-align:left;padding-top:.3em}figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}p.note{color:#8a6d3b;background:#fcf8e3;padding:.4em .8em;border-radius:4px}
code{background:#f3f3f3;padding:0 .2em}.side{display:flex;flex-wrap:wrap;gap:0 2em;align-items:flex-start}
.side>div:last-child{flex:1 1 420px}ul{margin:.6em 0;padding-left:1.4em}li{margin:.25em 0}
"""


def esc(value: Any) -> str:
    """Escaped text.

    >>> esc("<b>&")
    '&lt;b&gt;&amp;'
    """
    return html.escape(str(value), quote=True)


def pct(value: float | None) -> str:
    """A share as a percentage with two decimals (``n/a`` when missing).

    >>> pct(0.99654), pct(None)
    ('99.65%', 'n/a')
    """
    return "n/a" if value is None else f"{100 * value:.2f}%"


def num(value: Any) -> str:
    """Integers with thousands separators, floats with four significant digits, other values as text.

    >>> num(12082), num(0.123456), num(True), num(None)
    ('12,082', '0.1235', 'True', 'n/a')
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def ratio(part: float, whole: float) -> str:
    """``part`` as a percentage of ``whole``.

    >>> ratio(1, 4)
    '25.0%'
    """
    return "n/a" if not whole else f"{100 * part / whole:.1f}%"


@dataclass
class Cell:
    """A table cell: already formatted text, left-aligned when ``left``."""

    text: str
    left: bool = False


_NUMERIC = re.compile(r"^([-+]?[\d.,]+(e[-+]?\d+)?%?|n/a)$")


def _cell(value: Any, tag: str) -> str:
    cell = value if isinstance(value, Cell) else Cell(num(value), isinstance(value, str) and not _NUMERIC.match(value))
    cls = ' class="l"' if cell.left else ""
    return f"<{tag}{cls}>{esc(cell.text)}</{tag}>"


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], caption: str = "") -> str:
    """A table; numbers are formatted by :func:`num` and right-aligned, other text left-aligned.

    >>> table(["a"], [[1]])
    '<table><thead><tr><th class="l">a</th></tr></thead><tbody><tr><td>1</td></tr></tbody></table>'
    """
    head = "".join(_cell(h, "th") for h in headers)
    body = "".join("<tr>" + "".join(_cell(v, "td") for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kv_table(pairs: Iterable[tuple[str, Any]], caption: str = "") -> str:
    """A two-column key/value table.

    >>> "<td>3</td>" in kv_table([("n", 3)])
    True
    """
    return table(["", "value"], ([Cell(k, True), v] for k, v in pairs), caption)


def figure(uri: str, caption: str, alt: str = "") -> str:
    """An inline image (``uri`` is a ``data:`` URI) with its caption."""
    if not uri.startswith("data:"):
        raise ValueError("only inline data: URIs keep the page self-contained")
    return f'<figure><img src="{esc(uri)}" alt="{esc(alt or caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def para(text: str, note: bool = False) -> str:
    """A paragraph (a highlighted note when ``note``).

    >>> para("x", note=True)
    '<p class="note">x</p>'
    """
    return f'<p class="note">{esc(text)}</p>' if note else f"<p>{esc(text)}</p>"


def bullets(texts: Iterable[str]) -> str:
    """A bulleted list.

    >>> bullets(["a", "<b>"])
    '<ul><li>a</li><li>&lt;b&gt;</li></ul>'
    """
    return "<ul>" + "".join(f"<li>{esc(t)}</li>" for t in texts) + "</ul>"


def side_by_side(left: str, right: str) -> str:
    """Two blocks in a row (the right one takes the remaining width; they stack on a narrow screen).

    >>> side_by_side("<p>a</p>", "<p>b</p>")
    '<div class="side"><div><p>a</p></div><div><p>b</p></div></div>'
    """
    return f'<div class="side"><div>{left}</div><div>{right}</div></div>'


def heading(text: str, level: int = 3) -> str:
    return f"<h{level}>{esc(text)}</h{level}>"


@dataclass
class Section:
    """One ``<section>`` of the page: its anchor id, title and body HTML."""

    id: str
    title: str
    body: str

    def render(self) -> str:
        return f'<section id="{esc(self.id)}"><h2>{esc(self.title)}</h2>{self.body}</section>'


def page(title: str, subtitle: str, sections: Sequence[Section], front: Section | None = None) -> str:
    """The whole document: header, the ``front`` section (what a reader wants first), a table of
    contents and the sections.

    >>> html = page("t", "", [Section("s", "S", "")], Section("f", "F", ""))
    >>> html.index('<section id="f">') < html.index("<nav>") < html.index('<section id="s">')
    True
    """
    lead = front.render() if front is not None else ""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in ([front] if front else []) + list(sections))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><link rel=\"icon\" href=\"data:,\"><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><main>{lead}<nav>{nav}</nav>"
            + "".join(s.render() for s in sections) + "</main></body></html>\n")
