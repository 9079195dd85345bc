"""Model directories as the file system shows them, known without torch: their file names, and
whether a path is one (:mod:`mdakit.artifacts` reads and writes them, :mod:`mdakit.assembly.files`
the assembled ones).

The command line checks a path here first, so a wrong one is refused before torch is imported.
"""

from pathlib import Path

from mdakit.errors import MdakitError

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
ASSEMBLY_FILE = "assembly.json"
"""The file that marks an assembled-model directory (:mod:`mdakit.assembly.files`)."""


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


def is_assembled(path: str | Path) -> bool:
    """Whether ``path`` is an assembled-model directory (read it with :func:`mdakit.assembly.load_assembled`).

    >>> is_assembled("/nonexistent")
    False
    """
    return (Path(path) / ASSEMBLY_FILE).is_file()
