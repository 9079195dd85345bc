"""What the command line prints: one JSON document or a human rendering on stdout, one line per user error.

Progress and logs go to stderr (``err_console``), so ``--json`` output stays one parseable document.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

try:  # typer 0.2x ships its own copy of click, whose exceptions are the ones raised
    from typer._click import exceptions as click_exceptions
except ImportError:
    from click import exceptions as click_exceptions

from mdakit.errors import MdakitError, OptionError, OutputExistsError, UserBuiltModuleError
from mdakit.files import check_output

out_console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
_state = {"debug": False}


def show_tracebacks(debug: bool) -> None:
    """Whether a user error also prints its traceback (``mdakit --debug``)."""
    _state["debug"] = debug


def emit(as_json: bool, payload: dict[str, Any], human: Any = None) -> None:
    """Print ``payload`` as one JSON document under ``--json``, else ``human`` (a table or a line), if any.

    >>> emit(True, {"out": Path("runs/x")})
    {
      "out": "runs/x"
    }
    """
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    elif human is not None:
        out_console.print(human)


def pct(x: float) -> str:
    """A share as a percentage with two decimals.

    >>> pct(0.98765)
    '98.77%'
    """
    return f"{100 * x:.2f}%"


def check_out(out: str | Path, force: bool, *inputs: str | Path) -> None:
    """Refuse, before any work starts, an output that exists (without ``--force``), cannot be written, or is
    one of the command's ``inputs`` (:func:`mdakit.files.check_output`; the library checks again when it
    writes)."""
    check_output(out, force, inputs)


def error_line(exc: MdakitError) -> str:
    """The one line a user error prints, worded for the command line.

    >>> error_line(OutputExistsError("runs/part"))
    'mdakit: error: runs/part already exists; choose another --out or pass --force'
    """
    if isinstance(exc, OutputExistsError):
        return f"mdakit: error: {exc.path} already exists; choose another --out or pass --force"
    if isinstance(exc, OptionError):
        return f"mdakit: error: {exc.worded(flag)}"
    if isinstance(exc, UserBuiltModuleError):
        why = f" (mdakit could not record its structure: {exc.why})" if exc.why else ""
        return (f"mdakit: error: {exc.what} was saved from a user-built nn.Module, which the command line cannot "
                f"rebuild{why}; open it in Python with mdakit.load(path, into=<that module>)")
    return f"mdakit: error: {exc}"


def flag(option: str) -> str:
    """The command-line flag of a library parameter name.

    >>> flag("per_class")
    '--per-class'
    """
    return "--" + option.replace("_", "-")


def run_app(app: typer.Typer, argv: list[str]) -> int:
    """Run ``app`` on ``argv`` and return the exit code: 0 ok, 2 user error (one line on stderr).

    A value the parser refuses (``--epochs abc``, an unknown command) is a user error too, in the same one
    line; asking for help (``--help``, a bare group) prints the help.
    """
    _state["debug"] = "--debug" in argv
    try:
        result = app(args=argv, prog_name="mdakit", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as exc:
        if exc.format_message():  # the rich help formatter has printed the help already
            print(exc.format_message(), file=sys.stderr)
        return 2
    except click_exceptions.UsageError as exc:
        print(f"mdakit: error: {exc.format_message()}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("mdakit: aborted", file=sys.stderr)
        return 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except MdakitError as exc:
        if _state["debug"]:
            traceback.print_exc()
        print(error_line(exc), file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
