"""Commands that cut models by class and join the parts: ``disassemble``, ``masks``, ``assemble``,
``compress`` and ``export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mdakit.cli import tables
from mdakit.cli.options import (
    AlphaConv,
    AlphaLinear,
    BetaConv,
    BetaLinear,
    BudgetOpt,
    CalibrateOpt,
    ClassesOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    LatencyOpt,
    LayersOpt,
    MethodOpt,
    ModelArg,
    NadBetaOpt,
    NadLinearOpt,
    NadLossOpt,
    NadOptions,
    OutModelOpt,
    SamplesOpt,
    SeedOpt,
    ThresholdsOpt,
    WidthMultipleOpt,
    attribution_settings,
    threshold_settings,
)
from mdakit.cli.output import check_out, emit
from mdakit.defaults import DEFAULT_TIMEOUT


def disassemble_cmd(model_path: ModelArg, classes: ClassesOpt,
                    out: Annotated[Path, typer.Option(help="Output part directory.")],
                    method: MethodOpt = "contribution", samples: SamplesOpt = 50,
                    alpha_conv: AlphaConv = None, beta_conv: BetaConv = None,
                    alpha_linear: AlphaLinear = None,
                    beta_linear: BetaLinear = None, layers: LayersOpt = None,
                    beta: NadBetaOpt = None, nad_loss: NadLossOpt = "code", nad_linear: NadLinearOpt = False,
                    kernel_masks: Annotated[bool, typer.Option(help="Also zero the dropped kernels.")] = False,
                    calibrate: CalibrateOpt = None, thresholds: ThresholdsOpt = "calibrated",
                    dataset: DatasetOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "cpu",
                    data_dir: DataDirOpt = None, force: ForceOpt = False, latency: LatencyOpt = None,
                    width_multiple: WidthMultipleOpt = 1, budget: BudgetOpt = None, as_json: JsonOpt = False) -> None:
    """Cut the part of MODEL that some classes rely on into a smaller classifier for them."""
    from mdakit.disassembly import disassemble
    from mdakit.seeding import resolve_device

    check_out(out, force, model_path)
    dev = resolve_device(device)
    given_settings, given = threshold_settings(alpha_conv, beta_conv, alpha_linear, beta_linear, layers)
    settings = attribution_settings(method, given_settings, NadOptions(beta, nad_loss, nad_linear))
    part = disassemble(model_path, dataset, classes, method, samples=samples, settings=settings,
                       kernel_masks=kernel_masks, calibrate=calibrate, thresholds=thresholds,
                       thresholds_given=given, seed=seed, device=dev, data_dir=data_dir,
                       show_progress=True, latency=latency, width_multiple=width_multiple, budget=budget)
    part.save(out, force=force)
    title = f"part of {model_path} for classes {part.report['classes']} ({method})"
    macs = part.report["part_size"]["macs"] / part.report["original_size"]["macs"]
    shown = tables.detector_part_table if part.report.get("task") == "detection" else tables.part_table
    emit(as_json, {"out": str(out), **part.report},
         tables.with_latency(shown(title, part.report, out), part.report, macs))


def masks_cmd(model_path: ModelArg, classes: ClassesOpt,
              out: Annotated[Path, typer.Option(help="Output masks directory.")],
              method: MethodOpt = "contribution", samples: SamplesOpt = 50,
              alpha_conv: AlphaConv = None, beta_conv: BetaConv = None,
              alpha_linear: AlphaLinear = None, beta_linear: BetaLinear = None,
              layers: LayersOpt = None, calibrate: CalibrateOpt = None, thresholds: ThresholdsOpt = "paper",
              beta: NadBetaOpt = None, nad_loss: NadLossOpt = "code", nad_linear: NadLinearOpt = False,
              dataset: DatasetOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None,
              force: ForceOpt = False,
              class_chunk: Annotated[int | None, typer.Option(
                  help="Classes per chunk: masks are written as chunks finish (resumable), so memory is set by "
                       "the chunk, not the class count. Implied (16) under torchrun.")] = None,
              work_dir: Annotated[Path | None, typer.Option(
                  help="Where finished classes wait to be gathered (default: OUT.work); a rerun resumes there.")]
              = None,
              timeout: Annotated[float, typer.Option(
                  help="Seconds a process waits for the others (torchrun) before failing.")] = DEFAULT_TIMEOUT,
              as_json: JsonOpt = False) -> None:
    """Compute and save per-class component masks without extracting a part.

    Under ``torchrun --nproc-per-node N -m mdakit masks ...`` the classes are split across the processes
    and rank 0 gathers the masks into OUT; the result equals a single-process run.
    """
    from mdakit.disassembly import compute_masks
    from mdakit.distributed import joined
    from mdakit.seeding import resolve_device
    from mdakit.workspace import Workspace

    check_out(out, force, model_path)
    dev = resolve_device(device)
    given_settings, given = threshold_settings(alpha_conv, beta_conv, alpha_linear, beta_linear, layers)
    settings = attribution_settings(method, given_settings, NadOptions(beta, nad_loss, nad_linear))
    source = Workspace.open(model_path, dataset, None, None, data_dir)
    class_list = source.classes(classes)
    with joined(dev, timeout) as world:
        chunked = class_chunk is not None or world.size > 1
        masks, graph, cost = compute_masks(source, class_list, method, samples, settings, seed,
                                           world.device(dev), calibrate=calibrate, thresholds=thresholds,
                                           thresholds_given=given,
                                           show_progress=world.rank == 0, class_chunk=class_chunk,
                                           out=out if chunked else None, world=world, work_dir=work_dir, force=force)
    if not chunked:
        masks.save(out, force=force)
    if world.rank != 0:
        return
    kept = {str(c): {name: int(m.outputs.sum()) for name, m in per_layer.items()}
            for c, per_layer in masks.per_class.items()}
    emit(as_json, {"out": str(out), "classes": masks.classes, "kept_filters": kept, "steps": cost},
         tables.masks_table(f"kept filters per layer ({method})", kept, masks.classes,
                                    {layer.name: layer.out_size for layer in graph.layers}, out))


def assemble_cmd(parts: Annotated[list[Path], typer.Argument(metavar="PART...",
                                                             help="Part (or model) directories, in logit order.")],
                 out: Annotated[Path, typer.Option(help="Output directory of the assembled model.")],
                 layout: Annotated[str, typer.Option(help="parallel (parts side by side) or padded (one merged "
                                                           "network with zero kernels across parts).")] = "parallel",
                 rescale: Annotated[str, typer.Option(help="none, paper (Eq. 11), calibrated (scale and "
                                                           "offset per logit), calibrated-part (per part), or ood "
                                                           "(each part scores how much an input looks like its own "
                                                           "images; parallel layout); fitted on training images "
                                                           "only.")] = "none",
                 samples: SamplesOpt = 50, seed: SeedOpt = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None,
                 force: ForceOpt = False, latency: LatencyOpt = None, as_json: JsonOpt = False) -> None:
    """Join parts of models (one input shape; padded: one architecture) into one classifier over all their classes."""
    from mdakit.assembly import assemble, evaluate_assembled, save_assembled
    from mdakit.seeding import resolve_device

    check_out(out, force, *parts)
    if _any_detector(parts):
        _assemble_detectors(parts, out, layout, rescale, data_dir, force, as_json)
        return
    dev = resolve_device(device)
    model, card = assemble(parts, layout, rescale, samples=samples, seed=seed, data_dir=data_dir, device=dev,
                           latency=latency)
    report = {**evaluate_assembled(model, card, data_dir=data_dir, device=dev), **card.metrics}
    card.metrics = report
    save_assembled(model, out, card, force=force)
    table = tables.assembly_table(report, [path.name or str(path) for path in parts],
                                  f"{len(parts)} parts assembled ({layout} layout, rescale {rescale})")
    table.caption = f"saved to {out}; " + table.caption
    fit = {k: v for k, v in card.fit.items() if k != "samples"}
    emit(as_json, {"out": str(out), "layout": layout, "rescale": rescale, "logits": card.logits, "fit": fit,
                   **report}, tables.with_latency(table, report))


def _any_detector(parts: list[Path]) -> bool:
    """Whether one of the part directories holds a detector (its card names a zoo detector)."""
    from mdakit.artifacts import CARD_FILE, read_card
    from mdakit.zoo import is_detector

    return any((p / CARD_FILE).is_file() and is_detector(read_card(p)[0].arch) for p in parts)


def _assemble_detectors(parts: list[Path], out: Path, layout: str, rescale: str, data_dir: Path | None, force: bool,
                        as_json: bool) -> None:
    """``mdakit assemble`` of detector parts: the parallel layout, mAP on the parts' own and mixed test canvases."""
    from mdakit.detection.assembly import assemble_detectors, evaluate_detector_assembly
    from mdakit.errors import MdakitError

    if layout != "parallel":
        raise MdakitError("detector parts are assembled in the parallel layout only")
    assembled = assemble_detectors(parts, rescale, data_dir)
    assembled.metrics = evaluate_detector_assembly(assembled, data_dir)
    assembled.save(out, force=force)
    emit(as_json, {"out": str(out), "layout": layout, "rescale": rescale, "classes": assembled.classes,
                   "fit": assembled.fit, **assembled.metrics},
         tables.detector_assembly_table(assembled.metrics, f"{len(parts)} detector parts assembled (rescale "
                                                           f"{rescale}); saved to {out}"))


def compress_cmd(model_path: ModelArg, out: OutModelOpt, dataset: DatasetOpt = None,
                 method: MethodOpt = "contribution", samples: SamplesOpt = 50,
                 alpha_conv: AlphaConv = None, beta_conv: BetaConv = None,
                 alpha_linear: AlphaLinear = None, beta_linear: BetaLinear = None, layers: LayersOpt = None,
                 beta: NadBetaOpt = None, nad_loss: NadLossOpt = "code", nad_linear: NadLinearOpt = False,
                 calibrate: CalibrateOpt = None, thresholds: ThresholdsOpt = "calibrated", seed: SeedOpt = 0,
                 device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
                 latency: LatencyOpt = None, width_multiple: WidthMultipleOpt = 1, budget: BudgetOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Keep the union of all classes' components (every logit kept) as a physically smaller model."""
    from mdakit.compression import compress
    from mdakit.seeding import resolve_device

    check_out(out, force, model_path)
    dev = resolve_device(device)
    given_settings, given = threshold_settings(alpha_conv, beta_conv, alpha_linear, beta_linear, layers)
    settings = attribution_settings(method, given_settings, NadOptions(beta, nad_loss, nad_linear))
    small = compress(model_path, dataset, method, samples=samples, settings=settings, calibrate=calibrate,
                     thresholds=thresholds, thresholds_given=given,
                     seed=seed, device=dev, data_dir=data_dir, show_progress=True, latency=latency,
                     width_multiple=width_multiple, budget=budget)
    small.save(out, force=force)
    title = f"{model_path} compressed ({method}, all {len(small.report['classes'])} logits kept)"
    human = tables.compressed_table(title, small.report, out)
    emit(as_json, {"out": str(out), **small.report},
         tables.with_latency(human, small.report, small.report["macs_ratio"]))


def export_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model, part, compressed or "
                                                                             "assembled model directory.")],
               out: Annotated[Path, typer.Option(help="Output file (.onnx or .pt).")],
               fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
               force: ForceOpt = False, as_json: JsonOpt = False) -> None:
    """Export a model for deployment (raw [0, 1] images in, logits out), checked against PyTorch."""
    from mdakit.exporting import export

    check_out(out, force, model_path)
    result = export(model_path, out, fmt, force=force)
    emit(as_json, result, f"exported {model_path} to {out} ({fmt}, {result['bytes']:,} bytes); largest "
                          f"difference from the PyTorch model on {result['checked_on']}: {result['max_abs_diff']:.2g}")
