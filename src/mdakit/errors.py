"""The exception type that means "the user asked for something that cannot be done", and its typed cases.

The CLI turns it into one line on stderr and exit code 2 (a typed case lets it word the line for the
command line); anything else is a bug and keeps its traceback.
"""

from pathlib import Path


class MdakitError(Exception):
    """A clear, user-facing error (bad input, missing file, unknown name).

    >>> str(MdakitError("unknown dataset 'foo'"))
    "unknown dataset 'foo'"
    """


class OutputExistsError(MdakitError):
    """An output that exists already and may not be replaced; ``path`` is the output.

    >>> err = OutputExistsError("runs/part")
    >>> str(err.path), str(err)
    ('runs/part', 'runs/part already exists (force=True replaces it)')
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.path = Path(path)

    def __str__(self) -> str:
        return f"{self.path} already exists (force=True replaces it)"
