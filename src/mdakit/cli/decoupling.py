"""Commands on decoupled models: ``decouple``, ``settle``, ``paths`` and ``detect``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mdakit.cli import tables
from mdakit.cli.options import (
    DataDirOpt,
    DatasetOpt,
    DecoupledModelArg,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    OutModelOpt,
    SeedOpt,
)
from mdakit.cli.output import check_out, emit, err_console
from mdakit.errors import MdakitError


def _loss_weights(model_path: Path, lambda_m: float | None, lambda_k: float | None, lambda_s: float | None,
                  target_ratio: float | None, kl_direction: str) -> Any:
    """The loss weights given on the command line, the architecture's defaults (Table 5) for the rest."""
    from mdakit.artifacts import read_card
    from mdakit.decoupling.finetune import default_weights
    from mdakit.decoupling.losses import LossWeights

    base = default_weights(read_card(model_path)[0].arch)
    return LossWeights(base.lambda_m if lambda_m is None else lambda_m, base.lambda_k if lambda_k is None else
                       lambda_k, base.lambda_s if lambda_s is None else lambda_s,
                       base.target_ratio if target_ratio is None else target_ratio, kl_direction)


def decouple_cmd(model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Trained model directory.")],
                 out: Annotated[Path, typer.Option(help="Output model directory (a standard model file).")],
                 dataset: DatasetOpt = None,
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
                          "see mdakit.decoupling.calibration.warm_start_heads).")] = 0.0,
                 seed: SeedOpt = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
                 as_json: JsonOpt = False) -> None:
    """Fine-tune MODEL with a controlling module on its conv layers, so each input uses a thin path."""
    from mdakit.artifacts import save
    from mdakit.decoupling.finetune import DecoupleConfig, decouple
    from mdakit.seeding import resolve_device

    check_out(out, force, model_path)
    dev = resolve_device(device)
    weights = _loss_weights(model_path, lambda_m, lambda_k, lambda_s, target_ratio, kl_direction)
    config = DecoupleConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, train_subset=train_subset,
                            head_start=head_start, weights=weights)
    config.validate()
    result = decouple(model_path, dataset, config, device=dev, data_dir=data_dir, show_progress=True)
    save(result.model, out, result.card, force=force)
    r = result.report
    caption = (f"saved to {out}; λ_m {weights.lambda_m:g}, λ_k {weights.lambda_k:g}, λ_s {weights.lambda_s:g}, "
               f"R {weights.target_ratio:g}, KL {weights.kl_direction}; {epochs} epoch(s) on "
               f"{r['finetune']['train_samples']} images")
    title = f"{model_path} decoupled ({len(r['gated_layers'])} gated conv layers)"
    emit(as_json, {"out": str(out), **r}, tables.decoupled_table(title, r, caption))


def settle_cmd(model_path: DecoupledModelArg, out: OutModelOpt,
               epochs: Annotated[int, typer.Option(help="Epochs of body fine-tuning under frozen binary gates.")] = 1,
               lr: Annotated[float | None, typer.Option(help="Body learning rate (default: the decoupling's).")] = None,
               dataset: DatasetOpt = None, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None,
               force: ForceOpt = False, as_json: JsonOpt = False) -> None:
    """Fine-tune a decoupled model's filters under its frozen, binary gates (CE only), for short budgets."""
    from dataclasses import replace

    from mdakit.artifacts import read_card, save
    from mdakit.decoupling.finetune import recorded_config, settle_model
    from mdakit.seeding import resolve_device

    check_out(out, force, model_path)
    if epochs < 1:
        raise MdakitError(f"--epochs must be at least 1, got {epochs}")
    config = recorded_config(read_card(model_path)[0])
    config = replace(config, lr=config.lr if lr is None else lr)
    result = settle_model(model_path, epochs, config, dataset, resolve_device(device), data_dir)
    save(result.model, out, result.card, force=force)
    emit(as_json, {"out": str(out), **result.report},
         tables.settled_table(f"{model_path} settled for {epochs} epoch(s)", result.report, out))


def _filter_indices(filters: str | None) -> tuple[int, ...] | None:
    """``--filters 3,7`` as indices.

    >>> _filter_indices("3,7"), _filter_indices(None)
    ((3, 7), None)
    """
    try:
        return tuple(int(v) for v in filters.split(",")) if filters else None
    except ValueError:
        raise MdakitError(f"--filters must be comma-separated integers, got {filters!r}") from None


def paths_cmd(model_path: DecoupledModelArg,
              out: Annotated[Path, typer.Option(help="Output directory (JSON + PNG per analysis, path masks).")],
              dataset: DatasetOpt = None,
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
              seed: SeedOpt = 0, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
              as_json: JsonOpt = False) -> None:
    """Calculation paths of a decoupled model: filter states, class paths (and masks), t-SNE, Hopkins tree,
    W_cla categories, top images, occlusion."""
    from mdakit.decoupling.analysis.study import PathsSettings, paths_report
    from mdakit.seeding import resolve_device

    check_out(out, force, model_path)
    settings = PathsSettings(per_class=per_class, share=share, filter_layer=filter_layer,
                             filters=_filter_indices(filters), occlusion_images=occlusion_images, patch=patch,
                             stride=stride, seed=seed)
    summary = paths_report(model_path, out, dataset, settings, data_dir, resolve_device(device), force)
    title = f"calculation paths of {model_path} on {summary['images']} {summary['dataset']} test images"
    emit(as_json, {"out": str(out), **summary}, tables.measures_table(
        title, tables.paths_rows(summary), caption=f"written to {out} (path masks in {out / 'path-masks'})"))


def detect_cmd(model_path: DecoupledModelArg,
               out: Annotated[Path, typer.Option(help="Output directory (detection.json, detection.png).")],
               original: Annotated[Path | None, typer.Option(help="The model that was decoupled (default: the "
                                                                   "one the card names).")] = None,
               dataset: DatasetOpt = None,
               attacks: Annotated[str, typer.Option(help="Comma-separated: fgsm, pgd.")] = "fgsm,pgd",
               epsilon: Annotated[float, typer.Option(help="L∞ budget on [0, 1] images.")] = 0.1,
               pgd_steps: int = 10,
               pool_per_class: Annotated[int, typer.Option(help="Training images per class the detectors "
                                                                "draw from.")] = 20,
               test_per_class: Annotated[int, typer.Option(help="Test images per class scored.")] = 50,
               runs: Annotated[int, typer.Option(help="Draws of the detectors' training images.")] = 5,
               seed: SeedOpt = 1, device: DeviceOpt = "cpu", data_dir: DataDirOpt = None, force: ForceOpt = False,
               as_json: JsonOpt = False) -> None:
    """Adversarial-input detection from a decoupled model's calculation paths vs its original's channel
    activity (FGSM / PGD; random forest, AdaBoost, gradient boosting; ROC AUC)."""
    from mdakit.decoupling.analysis.detection import DetectionSettings, detection_report
    from mdakit.seeding import resolve_device

    check_out(out, force, model_path)
    settings = DetectionSettings(tuple(a.strip() for a in attacks.split(",") if a.strip()), epsilon, pgd_steps,
                                 pool_per_class, test_per_class, runs=runs, seed=seed)
    study = detection_report(model_path, out, dataset, original, settings, data_dir, resolve_device(device), force,
                             progress=lambda line: err_console.print(line))
    size = str(max(settings.sizes))
    title = (f"adversarial detection, ROC AUC with {size} training images per class "
             f"({study['test_images']} clean + as many adversarial test images)")
    emit(as_json, {"out": str(out), **study}, tables.detection_table(title, study["attacks"], size, out))
