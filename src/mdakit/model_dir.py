"""Model directories as the file system shows them, known without torch: their file names, and
whether a path is one (:mod:`mdakit.artifacts` reads and writes them, :mod:`mdakit.assembly.files`
the assembled ones).

The command line checks a path here first, so a wrong one is refused before torch is imported.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

from mdakit.errors import MdakitError

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
ASSEMBLY_FILE = "assembly.json"
DETECTOR_ASSEMBLY_FILE = "detector-assembly.json"
"""The file that marks an assembled-model directory (:mod:`mdakit.assembly.files`)."""
MASKS_JSON = "masks.json"
"""The file that marks a masks directory (:mod:`mdakit.component_masks`)."""


def require_model_dir(path: str | Path) -> Path:
    """``path`` as a :class:`~pathlib.Path`, refused with :class:`MdakitError` when it is no directory.

    >>> require_model_dir("/nonexistent")
    Traceback (most recent call last):
    mdakit.errors.MdakitError: /nonexistent is not a model directory (expected card.json and model.safetensors inside)
    """
    path = Path(path)
    if not path.is_dir():
        raise MdakitError(f"{path} is not a model directory (expected {CARD_FILE} and {WEIGHTS_FILE} inside)")
    return path


def is_detector_assembly(path: str | Path) -> bool:
    """Whether ``path`` holds an assembly of detector parts (read it with
    :func:`mdakit.detection.assembly.load_detector_assembly`).

    >>> is_detector_assembly("/nonexistent")
    False
    """
    return (Path(path) / DETECTOR_ASSEMBLY_FILE).is_file()


def is_assembled(path: str | Path) -> bool:
    """Whether ``path`` is an assembled-model directory (read it with :func:`mdakit.assembly.load_assembled`).

    >>> is_assembled("/nonexistent")
    False
    """
    return (Path(path) / ASSEMBLY_FILE).is_file()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_digest(card: dict[str, Any]) -> str:
    """A SHA-256 of a card's own fields (not its weights' checksum or summary), to tie a summary to its card.

    >>> card_digest({"arch": "lenet5", "summary": {}}) == card_digest({"arch": "lenet5"})
    True
    """
    own = {k: v for k, v in card.items() if k not in ("weights", "summary")}
    return hashlib.sha256(json.dumps(own, sort_keys=True).encode()).hexdigest()


def saved_summary(path: str | Path) -> tuple[dict[str, Any], tuple[list[dict[str, Any]], dict[str, int]]] | None:
    """The raw card of a model directory and the layer table and size its save recorded, without torch.

    None when the card records no summary (a file from an older mdakit) or anything looks wrong (an
    unreadable card, a card changed since the save, weights that do not match its checksum): the caller
    then loads the model, which says what is wrong.

    >>> saved_summary("/nonexistent") is None
    True
    """
    card_path, weights = Path(path) / CARD_FILE, Path(path) / WEIGHTS_FILE
    try:
        raw = json.loads(card_path.read_text())
        summary, expected = raw["summary"], raw["weights"]["sha256"]
        layers, size = summary["layers"], {k: int(summary[k]) for k in ("params", "nonzero_params", "macs")}
        if not isinstance(layers, list) or summary["card_sha256"] != card_digest(raw) \
                or file_sha256(weights) != expected:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return raw, (layers, size)
