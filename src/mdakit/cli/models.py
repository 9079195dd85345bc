"""Commands on whole models: ``train``, ``eval``, ``info`` and ``import``."""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mdakit import __version__
from mdakit.cli import tables
from mdakit.cli.options import DataDirOpt, DeviceOpt, ForceOpt, JsonOpt, ModelArg, OutModelOpt, SeedOpt
from mdakit.cli.output import check_out, emit
from mdakit.errors import MdakitError
from mdakit.model_dir import is_assembled, is_detector_assembly, require_model_dir

if TYPE_CHECKING:
    import torch

    from mdakit.artifacts import ModelCard
    from mdakit.data import DatasetInfo
    from mdakit.train import TrainConfig


def _environment() -> dict[str, Any]:
    import torch

    return {"mdakit": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads()}


def _trained_card(arch: str, info: DatasetInfo, config: TrainConfig, result: Any, evaluation: Any,
                  size: dict[str, int], device: torch.device) -> ModelCard:
    """The card of a freshly trained model: how it was trained (and where) and what it reached."""
    from mdakit.artifacts import ModelCard

    card = ModelCard.for_dataset(arch, info)
    card.training = {"config": vars(config), "result": result.to_dict(), "device": str(device),
                     "command": " ".join(["mdakit", *sys.argv[1:]]) if sys.argv else "", **_environment()}
    if evaluation is not None:
        card.metrics = {"test_accuracy": evaluation.accuracy, "val_accuracy": result.best_val_accuracy,
                        "per_class_test_accuracy": evaluation.per_class_accuracy, **size}
    return card


def train_cmd(arch: Annotated[str, typer.Option(help="Zoo architecture or torchvision:<name>.")],
              dataset: Annotated[str, typer.Option(help="Dataset name or imagefolder:PATH.")],
              out: OutModelOpt,
              epochs: int = 5, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
              batch_size: int = 128, val_fraction: float = 0.1, seed: SeedOpt = 0,
              optimizer: Annotated[str, typer.Option(help="sgd, or adamw (for vision transformers).")] = "sgd",
              train_subset: Annotated[int | None, typer.Option(help="Train on N images (stratified).")] = None,
              option: Annotated[list[str] | None, typer.Option(
                  help="An architecture option KEY=VALUE (repeatable), e.g. width=64 for fcos-lite.")] = None,
              device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
              as_json: JsonOpt = False) -> None:
    """Train a zoo model on a dataset, evaluate it on the test split and save it."""
    import torch

    from mdakit.artifacts import save
    from mdakit.data import load_dataset
    from mdakit.evaluate import evaluate
    from mdakit.metrics import model_size
    from mdakit.seeding import resolve_device
    from mdakit.train import TrainConfig
    from mdakit.train import train as train_model
    from mdakit.zoo import build_model, is_detector

    check_out(out, force)
    dev = resolve_device(device)
    config = TrainConfig(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         batch_size=batch_size, val_fraction=val_fraction, seed=seed, train_subset=train_subset,
                         optimizer=optimizer)
    config.validate()
    train_data, info = load_dataset(dataset, "train", data_dir)
    test_data, _ = load_dataset(dataset, "test", data_dir)
    check_task(arch, info)
    arch_kwargs = arch_options(option or [])
    torch.manual_seed(seed)
    model = build_model(arch, info.input_shape, info.num_classes, info.mean, info.std, **arch_kwargs)
    if is_detector(arch):
        _train_detector(model, arch, info, config, train_data, test_data, dev, out, force, as_json, arch_kwargs)
        return
    result = train_model(model, train_data, config, device=dev)
    evaluation = evaluate(model, test_data, list(range(info.num_classes)), device=dev, show_progress=True)
    size = model_size(model.cpu(), info.input_shape)
    card = _trained_card(arch, info, config, result, evaluation, size, dev)
    card.arch_kwargs = arch_kwargs
    save(model, out, card, force=force)
    emit(as_json, {"out": str(out), "metrics": card.metrics, "training": card.training},
         tables.training_table(f"{arch} on {info.name}", evaluation.accuracy, result, size))


def arch_options(pairs: list[str]) -> dict[str, Any]:
    """``["width=64", "mlp_ratio=2.5"]`` as keyword arguments of the architecture (ints, floats, else strings).

    >>> arch_options(["width=64", "pool=token"])
    {'width': 64, 'pool': 'token'}
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MdakitError(f"an architecture option is KEY=VALUE, got {pair!r}")
        for kind in (int, float):
            try:
                options[key.strip()] = kind(value)
                break
            except ValueError:
                continue
        else:
            options[key.strip()] = value
    return options


def check_task(arch: str | None, info: DatasetInfo) -> None:
    """Refuse a detector on a classification dataset and a classifier on a detection dataset."""
    from mdakit.zoo import is_detector

    detection = info.extra.get("task") == "detection"
    if detection != is_detector(arch):
        what = "a detection" if detection else "a classification"
        needs = "a detector (fcos-lite)" if detection else "a classifier"
        raise MdakitError(f"{info.name} is {what} dataset: it needs {needs}, not {arch or 'a user-built module'}")


def _train_detector(model: Any, arch: str, info: DatasetInfo, config: TrainConfig, train_data: Any, test_data: Any,
                    dev: torch.device, out: Path, force: bool, as_json: bool, arch_kwargs: dict[str, Any]) -> None:
    """``mdakit train`` of a zoo detector: mAP on the test canvases instead of accuracy."""
    from mdakit.artifacts import save
    from mdakit.detection.evaluate import evaluate_detector
    from mdakit.detection.train import train_detector
    from mdakit.metrics import model_size

    result = train_detector(model, train_data, config, device=dev)
    evaluation = evaluate_detector(model, test_data, list(range(info.num_classes)), device=dev, show_progress=True)
    size = model_size(model.cpu(), info.input_shape)
    card = _trained_card(arch, info, config, result, None, size, dev)
    card.arch_kwargs = arch_kwargs
    card.metrics = {"test_map_50": evaluation["map_50"], "test_map": evaluation["map"],
                    "val_map_50": result.best_val_accuracy, "test_images": evaluation["images"], **size}
    save(model, out, card, force=force)
    emit(as_json, {"out": str(out), "metrics": card.metrics, "training": card.training},
         tables.detector_training_table(f"{arch} on {info.name}", evaluation, result, size))


def _eval_assembled(model_path: Path, device: torch.device, data_dir: Path | None, as_json: bool) -> None:
    """``mdakit eval`` on an assembled model: on its parts' own test sets."""
    from mdakit.assembly import evaluate_assembled, load_assembled

    assembled, assembly = load_assembled(model_path, device=device)
    report = evaluate_assembled(assembled, assembly, data_dir=data_dir, device=device)
    names = [f"part-{i}" for i in range(len(assembly.part_cards))]
    emit(as_json, {"model": str(model_path), **report}, tables.assembly_table(report, names, f"{model_path}"))


def eval_cmd(model_path: ModelArg,
             dataset: Annotated[str | None, typer.Option(help="Default: the model's own dataset.")] = None,
             classes: Annotated[str | None, typer.Option(help="e.g. 0-2 or 0,3,5 or class names.")] = None,
             restrict_logits: Annotated[bool, typer.Option(help="Argmax over the chosen classes' logits only.")]
             = False,
             device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Accuracy (overall, per class), confusion matrix, parameters and MACs of a model."""
    from mdakit.artifacts import load_with_card
    from mdakit.data import parse_classes
    from mdakit.evaluate import evaluate
    from mdakit.metrics import model_size
    from mdakit.seeding import resolve_device
    from mdakit.workspace import model_split
    from mdakit.zoo import is_detector

    dev = resolve_device(device)
    if is_detector_assembly(model_path):
        _eval_detector_assembly(model_path, dataset or classes or restrict_logits, data_dir, as_json)
        return
    if is_assembled(model_path):
        if dataset or classes or restrict_logits:
            raise MdakitError("an assembled model is evaluated on its parts' own test sets: drop --dataset, "
                              "--classes and --restrict-logits")
        _eval_assembled(model_path, dev, data_dir, as_json)
        return
    model, card = load_with_card(model_path, device=dev)
    name = dataset or card.dataset
    if name is None:
        raise MdakitError("the model card names no dataset: pass --dataset")
    test_data, info = model_split(card, "test", name, data_dir)
    check_task(card.arch, info)
    chosen = parse_classes(classes, info.class_names) if classes is not None else None
    if is_detector(card.arch):
        _eval_detector(model, card, test_data, info, chosen, model_path, dev, as_json)
        return
    evaluation = evaluate(model, test_data, card.logit_classes, chosen, restrict_logits, device=dev, show_progress=True)
    size = model_size(model.cpu(), card.input_shape)
    title = f"{model_path} on {info.name} test" + (" (restricted logits)" if restrict_logits else "")
    emit(as_json, {"model": str(model_path), "dataset": info.name, **evaluation.to_dict(), **size},
         tables.evaluation_table(title, evaluation, info.class_names, size))


def _eval_detector(model: Any, card: ModelCard, test_data: Any, info: DatasetInfo, chosen: list[int] | None,
                   model_path: Path, dev: torch.device, as_json: bool) -> None:
    """``mdakit eval`` of a detector: mAP on the test canvases for its classes (or ``chosen``, restricted)."""
    from mdakit.detection.evaluate import evaluate_detector
    from mdakit.metrics import model_size

    evaluation = evaluate_detector(model, test_data, card.logit_classes, chosen, device=dev, show_progress=True)
    size = model_size(model.cpu(), card.input_shape)
    classes = chosen if chosen is not None else card.logit_classes
    emit(as_json, {"model": str(model_path), "dataset": info.name, "classes": classes, **evaluation, **size},
         tables.detector_evaluation_table(f"{model_path} on {info.name} test", evaluation, classes, size))


def _eval_detector_assembly(model_path: Path, narrowed: Any, data_dir: Path | None, as_json: bool) -> None:
    """``mdakit eval`` on an assembly of detector parts: on the parts' own test canvases (and mixed ones)."""
    from mdakit.detection.assembly import evaluate_detector_assembly, load_detector_assembly

    if narrowed:
        raise MdakitError("an assembled detector is evaluated on its parts' own test canvases: drop --dataset, "
                          "--classes and --restrict-logits")
    report = evaluate_detector_assembly(load_detector_assembly(model_path), data_dir)
    emit(as_json, {"model": str(model_path), **report}, tables.detector_assembly_table(report, str(model_path)))


def _info_assembled(model_path: Path, as_json: bool) -> None:
    """``mdakit info`` on an assembled model: where each logit comes from."""
    from mdakit.assembly import load_assembled
    from mdakit.metrics import model_size

    assembled, assembly = load_assembled(model_path)
    size = model_size(assembled, assembly.input_shape)
    title = f"{model_path}: {len(assembly.part_cards)} parts, {len(assembly.logits)} logits"
    emit(as_json, {"assembly": assembly.to_dict(), **size},
         tables.with_latency(tables.logits_table(title, assembly.logits, tables.size_caption(size)), assembly.metrics))


def _info_masks(path: Path, as_json: bool) -> None:
    """``mdakit info`` on a masks directory: how it was made and the filters each class keeps."""
    from mdakit.component_masks import ComponentMasks

    masks = ComponentMasks.load(path, lazy=True)
    kept = {str(c): {name: int(m.outputs.sum()) for name, m in masks.per_class[c].items()} for c in masks.classes}
    widths = {name: int(m.outputs.numel()) for name, m in masks.per_class[masks.classes[0]].items()}
    emit(as_json, {"masks": str(path), "method": masks.method, "settings": masks.settings, "classes": masks.classes,
                   "info": masks.info, "kept_filters": kept},
         tables.masks_table(f"{path}: {masks.method} masks of {len(masks.classes)} classes", kept, masks.classes,
                            widths, path))


def info_cmd(model_path: ModelArg, as_json: JsonOpt = False) -> None:
    """The card, a layer table, parameters and MACs of a model (an assembly: its logits; masks: what each
    class keeps)."""
    require_model_dir(model_path)  # a wrong path is refused before torch is imported
    from mdakit.card import ModelCard
    from mdakit.model_dir import MASKS_JSON, saved_summary

    if is_assembled(model_path):
        _info_assembled(model_path, as_json)
        return
    if (model_path / MASKS_JSON).is_file():
        _info_masks(model_path, as_json)
        return
    saved = saved_summary(model_path)
    if saved is not None:  # what save() recorded, the weights checked against the card: no torch needed
        card, (layers, size) = ModelCard.from_dict(saved[0]), saved[1]
    else:
        from mdakit.artifacts import load_with_card
        from mdakit.metrics import leaf_layers, model_size

        model, card = load_with_card(model_path)
        layers, size = leaf_layers(model), model_size(model, card.input_shape)
    arch = card.arch or (f"user-built {card.edits[0].get('class_name', 'module')}" if card.rebuildable
                         else "user-built module (opens in Python with into= only)")
    title = f"{model_path}: {arch} for {card.dataset or 'unnamed data'}, {len(card.logit_classes)} logits"
    caption = f"{tables.size_caption(size)} per {'x'.join(map(str, card.input_shape))} input"
    emit(as_json, {"card": card.to_dict(), "layers": layers, **size},
         tables.with_latency(tables.layers_table(title, layers, caption), card.metrics, _macs_ratio(card.metrics)))


def _macs_ratio(metrics: dict) -> float | None:
    """The MACs ratio a part's or compressed model's card records, if any."""
    if "macs_ratio" in metrics:
        return metrics["macs_ratio"]
    sizes = metrics.get("part_size"), metrics.get("original_size")
    return sizes[0]["macs"] / sizes[1]["macs"] if all(sizes) else None


def import_cmd(checkpoint: Annotated[Path, typer.Argument(metavar="CKPT", help=".pt/.pth/.safetensors file")],
               arch: Annotated[str, typer.Option(help="Zoo architecture the weights belong to.")],
               dataset: Annotated[str, typer.Option(help="Dataset the model classifies.")],
               out: OutModelOpt,
               data_dir: DataDirOpt = None, force: ForceOpt = False, as_json: JsonOpt = False) -> None:
    """Turn a foreign state_dict checkpoint into an mdakit model file (never unpickles code)."""
    from mdakit.artifacts import ModelCard, import_checkpoint, save
    from mdakit.data import dataset_info

    check_out(out, force, checkpoint)
    info = dataset_info(dataset, data_dir)
    card = ModelCard.for_dataset(arch, info, provenance={"imported_from": str(checkpoint)})
    model = import_checkpoint(checkpoint, card)
    save(model, out, card, force=force)
    emit(as_json, {"out": str(out), "card": card.to_dict()}, f"imported {checkpoint} into {out}")
