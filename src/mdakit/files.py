"""Writing outputs: checked before any work starts, then written all or nothing.

An output is checked first (:func:`check_output`: not an input, not existing unless replaced, its
folder creatable), so a long job never finds out at the end that it cannot save. A directory is built
in a hidden temporary sibling (``.NAME.PID-XXXX.tmp``) and renamed over the target at the end; a single
file likewise. Siblings left by a killed writer (its process gone) are removed by the next write to the
same output. Outputs get the user's umask, not the owner-only mode of temporary files. JSON is strict
(NaN and infinities written as ``null``).
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mdakit.errors import MdakitError, OptionError, OutputExistsError


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _replaces(out: Path, source: Path) -> bool:
    """Whether writing ``out`` would replace ``source`` (``out`` is it or a folder holding it)."""
    out, source = out.resolve(), source.resolve()
    return out == source or out in source.parents


def check_output(path: str | Path, force: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse an output that cannot or may not be written, before any work starts.

    Refused: an output that is one of ``inputs`` or a folder holding one, an existing output
    unless ``force``, and an output whose folder cannot be created or written (checked by creating and
    removing a probe directory, so read-only folders and pseudo-filesystems are caught as they are).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> check_output(d / "new/part").name
    'part'
    >>> check_output(d, force=True, inputs=[d])
    Traceback (most recent call last):
    ...
    mdakit.errors.OptionError: out is also an input of this command; writing it would replace that input
    """
    path = Path(path)
    if any(_replaces(path, Path(source)) for source in inputs):
        raise OptionError("{0} is also an input of this command; writing it would replace that input", "out")
    if path.exists() and not force:
        raise OutputExistsError(path)
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise MdakitError(f"cannot write {path}: {folder} is not a directory")
    try:
        Path(tempfile.mkdtemp(prefix=".mdakit-probe.", dir=folder)).rmdir()
    except OSError as exc:
        raise MdakitError(f"cannot write {path}: {folder} is not writable ({exc.strerror or exc})") from exc
    return path


_PARTIAL = re.compile(r"\.(?P<pid>\d+)-[^.]+\.(tmp|old)$")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        pass
    return True


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove the hidden temporaries a killed write of ``path`` left beside it; return what was removed.

    A temporary is stale when the process that made it (its name holds the PID) is gone. A write killed
    between moving the previous output aside and putting the new one in place leaves no output: the
    previous one is then moved back rather than removed.

    >>> d = Path(tempfile.mkdtemp())
    >>> (d / ".out.999999999-x1.tmp").mkdir()
    >>> [p.name for p in remove_stale_partials(d / "out")]
    ['.out.999999999-x1.tmp']
    """
    prefix = f".{path.name}."
    removed = []
    for entry in path.parent.glob(f"{glob.escape(prefix)}*"):
        match = _PARTIAL.search(entry.name[len(prefix) - 1:])
        if match and not _process_alive(int(match["pid"])):
            if (entry / "previous").exists() and not path.exists():
                os.replace(entry / "previous", path)
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary(path: Path, suffix: str, directory: bool) -> Path:
    """A fresh hidden sibling of ``path`` whose name holds this process's PID."""
    prefix = f".{path.name}.{os.getpid()}-"
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


def _prepare(path: Path, force: bool) -> None:
    check_output(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MdakitError(f"cannot write {path}: {exc.strerror or exc}") from exc
    remove_stale_partials(path)


def write_directory(path: str | Path, force: bool, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary sibling of ``path``, then put it in place of ``path``.

    An existing ``path`` is refused unless ``force``; if ``write`` raises, nothing is left behind and
    an existing ``path`` is untouched.

    >>> out = Path(tempfile.mkdtemp()) / "result"
    >>> write_directory(out, False, lambda tmp: (tmp / "a.txt").write_text("hi")).joinpath("a.txt").read_text()
    'hi'
    """
    path = Path(path)
    _prepare(path, force)
    tmp = _temporary(path, ".tmp", directory=True)
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = _temporary(path, ".old", directory=True)
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MdakitError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def write_file(path: str | Path, force: bool, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path`` (all or nothing).

    ``path`` may not be a directory; an existing file is refused unless ``force``.

    >>> out = Path(tempfile.mkdtemp()) / "a.txt"
    >>> write_file(out, False, lambda tmp: tmp.write_text("hi")).read_text()
    'hi'
    """
    path = Path(path)
    if path.is_dir():
        raise OptionError(f"{path} is a directory; {{0}} names the file to write", "out")
    _prepare(path, force)
    tmp = _temporary(path, ".tmp", directory=False)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        raise MdakitError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
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
