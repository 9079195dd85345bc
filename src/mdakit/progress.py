"""Progress bars on stderr: lively on a terminal, a line every few seconds in logs."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, enabled: bool = True, total: int | None = None) -> tqdm:
    """A tqdm bar on stderr that updates at most every 5 s when stderr is not a terminal.

    >>> list(progress(range(3), "count", enabled=False))
    [0, 1, 2]
    """
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, file=sys.stderr,
                mininterval=0.1 if interactive else 5.0, dynamic_ncols=interactive)
