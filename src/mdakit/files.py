"""Writing outputs: a directory all or nothing (built in a temporary sibling, renamed over the target at
the end), and strict JSON (NaN and infinities written as ``null``)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mdakit.errors import OutputExistsError


def write_directory(path: str | Path, force: bool, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary sibling of ``path``, then put it in place of ``path``.

    An existing ``path`` is refused unless ``force``; if ``write`` raises, nothing is left behind and
    an existing ``path`` is untouched.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "result"
    >>> write_directory(out, False, lambda tmp: (tmp / "a.txt").write_text("hi")).joinpath("a.txt").read_text()
    'hi'
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        write(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def finite(value: Any) -> Any:
    """``value`` with NaN / infinite floats replaced by ``None`` (strict JSON) and keys as strings, recursively.

    >>> finite({"a": [1.0, float("nan")], 2: (float("inf"),)})
    {'a': [1.0, None], '2': [None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented strict JSON (:func:`finite`; other objects as their ``str``).

    >>> import tempfile
    >>> write_json(tempfile.mkdtemp() + "/x.json", {"a": float("nan")}).read_text()
    '{\\n  "a": null\\n}\\n'
    """
    path = Path(path)
    path.write_text(json.dumps(finite(payload), indent=2, allow_nan=False, default=str) + "\n")
    return path
