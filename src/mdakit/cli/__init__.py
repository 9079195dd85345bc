"""The ``mdakit`` command line: a thin typer layer over the library.

Every command takes ``--json`` and then prints exactly one JSON document on stdout; progress and
logs go to stderr. A user error prints one line on stderr and exits with code 2 (``--debug`` shows
the traceback).

The commands live by topic (:mod:`~mdakit.cli.models`, :mod:`~mdakit.cli.parts`,
:mod:`~mdakit.cli.inside`, :mod:`~mdakit.cli.decoupling`, :mod:`~mdakit.cli.data`); their shared
options are in :mod:`~mdakit.cli.options`, their tables in :mod:`~mdakit.cli.tables` and what they
print in :mod:`~mdakit.cli.output`. A command's docstring is its ``--help`` text. Commands import
the library modules beyond what ``import mdakit`` loads where they run, so ``mdakit --help`` starts
without them.

>>> run(["info", "/nonexistent"])
2
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated

import typer

from mdakit.cli import decoupling, inside, models, parts
from mdakit.cli.data import data_app
from mdakit.cli.options import finite_numbers
from mdakit.cli.output import run_app, show_tracebacks

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Take trained CNN classifiers apart by class and put the parts together again.")

COMMANDS: dict[str, Callable[..., None]] = {
    "train": models.train_cmd,
    "eval": models.eval_cmd,
    "info": models.info_cmd,
    "import": models.import_cmd,
    "disassemble": parts.disassemble_cmd,
    "masks": parts.masks_cmd,
    "assemble": parts.assemble_cmd,
    "analyze": inside.analyze_cmd,
    "decouple": decoupling.decouple_cmd,
    "settle": decoupling.settle_cmd,
    "compress": parts.compress_cmd,
    "export": parts.export_cmd,
    "paths": decoupling.paths_cmd,
    "detect": decoupling.detect_cmd,
    "routes": inside.routes_cmd,
    "patterns": inside.patterns_cmd,
    "report": inside.report_cmd,
}
"""Every verb and its command, in the order ``mdakit --help`` lists them."""

for _name, _command in COMMANDS.items():
    app.command(_name)(finite_numbers(_command))
app.add_typer(data_app, name="data")


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    show_tracebacks(debug)


def run(argv: list[str]) -> int:
    """Run the CLI on ``argv`` and return the exit code (0 ok, 2 user error).

    >>> run(["info", "--bogus-flag"])
    2
    """
    return run_app(app, argv)


def main() -> None:
    """Console entry point."""
    sys.exit(run(sys.argv[1:]))


__all__ = ["COMMANDS", "app", "main", "run"]
