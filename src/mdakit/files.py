"""Writing an output directory all or nothing: into a temporary sibling, renamed over the target at the end."""

from __future__ import annotations

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
