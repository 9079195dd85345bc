"""Commands that look inside models and parts: ``analyze``, ``routes``, ``patterns`` and ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mdakit.cli import tables
from mdakit.cli.options import (
    AlphaConv,
    AlphaLinear,
    BetaConv,
    BetaLinear,
    ClassesOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    ModelArg,
    SamplesOpt,
    SeedOpt,
    attribution_settings,
)
from mdakit.cli.output import check_out, emit
from mdakit.defaults import THRESHOLDS
from mdakit.errors import MdakitError

if TYPE_CHECKING:
    from mdakit.attribution.contribution import ContributionSettings


def analyze_cmd(target: Annotated[Path, typer.Argument(metavar="MASKS_OR_MODEL", help="Masks or model directory.")],
                out: Annotated[Path, typer.Option(help="Output directory (JSON + PNG per analysis).")],
                dataset: DatasetOpt = None,
                method: Annotated[str, typer.Option(help="Attribution method when given a model.")] = "contribution",
                classes: Annotated[str | None, typer.Option(help="At least four classes (default: all).")] = None,
                samples: SamplesOpt = 50,
                per_class: Annotated[int | None, typer.Option(help="Test images per class for the accuracy "
                                                                   "analysis (default: all).")] = None,
                mosaics: Annotated[int, typer.Option(help="2×2 mosaics for the hit rate.")] = 200,
                seed: SeedOpt = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
                as_json: JsonOpt = False) -> None:
    """Sub-architecture analyses (NAD §4): per-class accuracy, similarity, hit rate, misclassification."""
    from mdakit.analysis.run import analyze
    from mdakit.seeding import resolve_device

    check_out(out, force, target)
    summary = analyze(target, out, dataset, classes, method, samples, per_class, mosaics, seed, data_dir,
                      resolve_device(device), force, show_progress=True)
    title = f"analyses of {summary['source']} ({summary['method']}), written to {out}"
    emit(as_json, {"out": str(out), **summary}, tables.measures_table(title, tables.analysis_rows(summary)))


def _attribution(model_path: Path, classes: str, thresholds: ContributionSettings, samples: int, seed: int,
                 device: str, data_dir: Path | None) -> Any:
    """Contribution attribution of ``classes`` of the model at ``model_path``, on its own dataset."""
    from mdakit.report.contrib import attribute
    from mdakit.seeding import resolve_device
    from mdakit.workspace import Workspace

    source = Workspace.open(model_path, None, None, None, data_dir)
    settings = attribution_settings("contribution", thresholds)
    return attribute(source, source.classes(classes), settings, samples, seed, resolve_device(device))


def _routes_summary(result: Any, classes: list[int], files: list[Path], out: Path) -> dict[str, Any]:
    """What ``mdakit routes --json`` prints: the files, each route's kept channels, the probe's comparison."""
    probe = None if result.comparison is None else {**result.probe_info, "leaves_at": result.comparison["leaves_at"]}
    return {"out": str(out), "files": [str(f) for f in files], "classes": classes,
            "kept_channels": {r.label: {k: len(v) for k, v in r.channels.items()} for r in result.routes},
            "input": probe}


def routes_cmd(model_path: ModelArg, classes: ClassesOpt,
               out: Annotated[Path, typer.Option(help="Output directory (PNG, SVG, JSON).")],
               image_index: Annotated[int | None, typer.Option(
                   help="Also draw this test image's own route against its class's route.")] = None,
               top: Annotated[int, typer.Option(help="Channels drawn per column; the rest become one node.")] = 12,
               samples: SamplesOpt = 50, alpha_conv: AlphaConv = THRESHOLDS.alpha_conv,
               beta_conv: BetaConv = THRESHOLDS.beta_conv, alpha_linear: AlphaLinear = THRESHOLDS.alpha_linear,
               beta_linear: BetaLinear = THRESHOLDS.beta_linear, seed: SeedOpt = 0,
               device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
               as_json: JsonOpt = False) -> None:
    """Decision routes (contribution paper Fig. 6): each class's kept channels and kernels, in its colour."""
    from mdakit.attribution.contribution import ContributionSettings
    from mdakit.report.decision import probe_image, route_map, write_route_map

    check_out(out, force, model_path)
    thresholds = ContributionSettings(alpha_conv, beta_conv, alpha_linear, beta_linear)
    att = _attribution(model_path, classes, thresholds, samples, seed, device, data_dir)
    if image_index is not None and att.source.test is None:
        raise MdakitError("the model's dataset has no test split to take --image-index from")
    probe = probe_image(att.source.test, image_index) if image_index is not None else None
    result = route_map(att, None, top, probe)
    files = write_route_map(result, out, force=force)
    note = "" if result.comparison is None else f"; {result.probe.label} leaves at {result.comparison['leaves_at']}"
    emit(as_json, _routes_summary(result, att.classes, files, out),
         f"routes of classes {att.classes} written to {out}{note}")


def patterns_cmd(model_path: ModelArg, classes: ClassesOpt,
                 out: Annotated[Path, typer.Option(help="Output directory (PNG, JSON).")],
                 per_class: Annotated[int, typer.Option(help="Single samples drawn per class.")] = 5,
                 unit: Annotated[int | None, typer.Option(
                     help="Filter whose pattern is drawn (default: the most contributed-to, per layer).")] = None,
                 layer: Annotated[list[str] | None, typer.Option(help="Layer to draw (repeat; default all).")] = None,
                 samples: SamplesOpt = 50, seed: SeedOpt = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None,
                 force: ForceOpt = False, as_json: JsonOpt = False) -> None:
    """Contribution patterns (contribution paper Fig. 2, 3, 7–10): per layer, one unit's relative
    contributions and the total contribution per input channel, for samples and for classes."""
    from mdakit.attribution.contribution import ContributionSettings
    from mdakit.report.patterns import contribution_patterns, write_patterns

    check_out(out, force, model_path)
    att = _attribution(model_path, classes, ContributionSettings(), samples, seed, device, data_dir)
    patterns = contribution_patterns(att, layer or None, per_class, unit)
    files = write_patterns(patterns, out, force=force)
    keys = ("layer", "unit", "total_cosine_within_class", "total_cosine_between_classes")
    emit(as_json, {"out": str(out), "files": [str(f) for f in files],
                   "layers": [{k: e[k] for k in keys} for e in patterns["layers"]]},
         tables.patterns_table(f"contribution patterns of {model_path}, written to {out}", patterns["layers"]))


def report_cmd(paths: Annotated[list[Path], typer.Argument(metavar="RUN_OR_MODEL...", help=(
                   "Model, part, assembly, analysis or results directories, or run directories holding them."))],
               out: Annotated[Path, typer.Option(help="The HTML file to write.")],
               compute: Annotated[bool, typer.Option(help="Compute routes, similarity and patterns from the models "
                                                          "and their data (--no-compute: files only).")] = True,
               samples: SamplesOpt = 50,
               max_classes: Annotated[int, typer.Option(help="Classes attributed per model.")] = 10,
               route_classes: Annotated[int, typer.Option(help="Classes drawn in a model's routes.")] = 3,
               top: Annotated[int, typer.Option(help="Channels drawn per route column.")] = 12,
               seed: SeedOpt = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
               as_json: JsonOpt = False) -> None:
    """One self-contained HTML page (works offline) for models, parts, assemblies and results."""
    from mdakit.report.build import write_report
    from mdakit.report.context import ReportOptions
    from mdakit.seeding import resolve_device

    check_out(out, force, *paths)
    options = ReportOptions(compute, samples, seed, max_classes, route_classes, top, data_dir,
                            str(resolve_device(device)))
    path, sections = write_report(paths, out, options, force=force)
    emit(as_json, {"out": str(path.resolve()), "sections": sections}, str(path.resolve()))
