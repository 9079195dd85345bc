"""The exception type that means "the user asked for something that cannot be done", and its typed cases.

The CLI turns it into one line on stderr and exit code 2 (a typed case lets it word the line for the
command line); anything else is a bug and keeps its traceback.
"""

from collections.abc import Callable
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


class UserBuiltModuleError(MdakitError):
    """A model file saved from a user-built ``nn.Module``, which only that module can rebuild.

    ``what`` names the file (a path, or ``part 0 (path)``); ``hint`` says what to do in Python.

    >>> str(UserBuiltModuleError("runs/part"))
    'runs/part was saved from a user-built module, which only that module can rebuild: pass it as into='
    """

    def __init__(self, what: str | Path = "this model", hint: str = "pass it as into=", why: str | None = None) -> None:
        super().__init__(what, hint, why)
        self.what, self.hint, self.why = str(what), hint, why

    def __str__(self) -> str:
        why = f" (mdakit could not record its structure: {self.why})" if self.why else ""
        return f"{self.what} was saved from a user-built module, which only that module can rebuild{why}: {self.hint}"


class OptionError(MdakitError):
    """A bad or missing setting, worded around the settings it names; ``options`` are parameter names.

    ``template`` holds ``{0}``, ``{1}``, ... where the names go, so the library says ``per_class`` and
    the command line ``--per-class`` (:meth:`worded`).

    >>> err = OptionError("{0} must be at least 2, got 1", "per_class")
    >>> str(err), err.worded(lambda name: "--" + name.replace("_", "-"))
    ('per_class must be at least 2, got 1', '--per-class must be at least 2, got 1')
    """

    def __init__(self, template: str, *options: str) -> None:
        super().__init__(template, *options)
        self.template = template
        self.options = options

    def worded(self, name: Callable[[str], str]) -> str:
        """The message with each option named by ``name(option)`` (plain replacement: the rest of the
        message may hold any text, braces included)."""
        text = self.template
        for i, option in enumerate(self.options):
            text = text.replace(f"{{{i}}}", name(option))
        return text

    def __str__(self) -> str:
        return self.worded(str)
