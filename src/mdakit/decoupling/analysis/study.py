"""``mdakit paths``: every calculation-path analysis of a decoupled model, as JSON + PNG files.

Writes into one directory (atomically: built beside it, then renamed):

- ``filter_states``: energetic / dynamic / silent filters per gated layer (Fig. 4–5);
- ``class_paths``: per-class calculation paths (Fig. 4, 9), also exported as per-class masks
  (``path-masks/``, :class:`~mdakit.component_masks.ComponentMasks`) of the ungated model (``ungated-model/``),
  so ``mdakit analyze path-masks`` and the extraction / assembly tools accept them;
- ``tsne``: PCA then t-SNE of whole paths coloured by class (Fig. 3, 5);
- ``hopkins_tree``: layer-by-layer Hopkins statistic with 2-means splits (Fig. 9 / App. C);
- ``filter_categories``: the filter–category relation read from W_cla (Fig. 7);
- ``top_images``: the top-activating test images of chosen filters (Fig. 6);
- ``occlusion``: the filters a covered patch switches off (Fig. 7–8);
- ``summary.json``.

Paths are collected on ``per_class`` test images of each class (seeded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from mdakit.artifacts import ModelCard, save
from mdakit.data import labels_of, per_class_subset
from mdakit.decoupling.analysis.categories import filter_categories, plot_categories
from mdakit.decoupling.analysis.class_paths import (
    DEFAULT_SHARE,
    class_shares,
    path_masks,
    plot_class_paths,
    summarize_masks,
)
from mdakit.decoupling.analysis.embedding import embed_paths, plot_embedding
from mdakit.decoupling.analysis.filters import filter_responses, pick_filters, plot_top_images, top_images
from mdakit.decoupling.analysis.hopkins import decision_tree, hopkins_per_layer, plot_tree
from mdakit.decoupling.analysis.occlusion import occlusion, plot_occlusion
from mdakit.decoupling.analysis.states import filter_states, plot_filter_states
from mdakit.decoupling.finetune import load_decoupled
from mdakit.decoupling.gates import DecoupledNet
from mdakit.decoupling.paths import Paths, collect_paths
from mdakit.decoupling.ungated import ungated
from mdakit.errors import MdakitError, OptionError, OutputExistsError
from mdakit.files import write_directory, write_json
from mdakit.graph import trace
from mdakit.workspace import logit_rows, model_split


@dataclass
class PathsSettings:
    """What the path analyses use; ``filters`` (indices into ``filter_layer``, default the last gated
    layer) picks the filters of the top-image figure (default: the most class-concentrated dynamic ones)."""

    per_class: int = 100
    share: float = DEFAULT_SHARE
    tree_threshold: float = 0.75
    tree_min_size: int = 10
    filter_layer: str | None = None
    filters: tuple[int, ...] | None = None
    top_k: int = 8
    occlusion_images: int = 4
    patch: int | None = None
    stride: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.per_class < 2:
            raise OptionError(f"{{0}} must be at least 2, got {self.per_class}", "per_class")
        if not 0.0 < self.share <= 1.0:
            raise OptionError(f"{{0}} must be in (0, 1], got {self.share}", "share")
        if not 0.0 < self.tree_threshold < 1.0:
            raise MdakitError(f"the tree's Hopkins threshold must be in (0, 1), got {self.tree_threshold}")
        if self.top_k < 1 or self.occlusion_images < 0 or self.tree_min_size < 3:
            raise MdakitError("top-k must be positive, occlusion images non-negative and the tree's minimum size ≥ 3")
        for name in ("patch", "stride"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise OptionError(f"{{0}} must be at least 1 pixel, got {getattr(self, name)}", name)


def paths_report(model_path: str | Path, out: str | Path, dataset: str | None = None,
                 settings: PathsSettings | None = None, data_dir: str | Path | None = None,
                 device: torch.device | str = "cpu", force: bool = False) -> dict[str, Any]:
    """Run every path analysis of the decoupled model at ``model_path`` into the directory ``out``.

    >>> summary = paths_report("runs/decouple/lenet5-mnist-e2-nall", "runs/paths/lenet5")  # doctest: +SKIP
    """
    settings = settings or PathsSettings()
    settings.validate()
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(out)
    net, card = load_decoupled(model_path, device)
    test, info = model_split(card, "test", dataset, data_dir)
    present = set(labels_of(test).unique().tolist())
    classes = [c for c in card.logit_classes if c in present]
    if not classes:
        raise MdakitError(f"{info.name} has no test images of the model's classes {card.logit_classes}")
    _check_filters(net, settings)
    data = per_class_subset(test, settings.per_class, seed=settings.seed)
    data = Subset(data.dataset, [i for i in data.indices if int(labels_of(test)[i]) in classes])
    paths = collect_paths(net, data, device=device)
    paths.predictions = torch.tensor(card.logit_classes)[paths.predictions]
    study = _Study(net, card, paths, data, classes, settings, device)

    summary: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        summary.update(_write_all(study, tmp, out))
        summary.update(model=str(model_path), dataset=info.name, settings=asdict(settings))
        write_json(tmp / "summary.json", summary)

    write_directory(out, force, write)
    return summary


def _check_filters(net: DecoupledNet, settings: PathsSettings) -> None:
    """Refuse a top-image layer that is not gated, or filters it does not have."""
    widths = {site.layer: site.channels for site in net.sites}
    layer = settings.filter_layer or net.layers[-1]
    if layer not in widths:
        raise MdakitError(f"{layer!r} is not a gated layer; gated layers: {', '.join(net.layers)}")
    bad = [j for j in settings.filters or () if not 0 <= j < widths[layer]]
    if bad:
        raise MdakitError(f"layer {layer!r} has {widths[layer]} filters; there is no filter {bad[0]}")


@dataclass
class _Study:
    """What every analysis reads: the decoupled model, its card, the paths of the chosen test images."""

    net: DecoupledNet
    card: ModelCard
    paths: Paths
    data: Subset
    classes: list[int]
    settings: PathsSettings
    device: torch.device | str


def _write_all(study: _Study, tmp: Path, out: Path) -> dict[str, Any]:
    """Every analysis's JSON and PNG into ``tmp`` (to become ``out``); returns the summary's numbers."""
    paths, names = study.paths, list(study.card.class_names)
    summary: dict[str, Any] = {"images": len(paths.labels), "classes": study.classes,
                               "accuracy": float((paths.predictions == paths.labels).float().mean()),
                               "gate_density": paths.density()["all"]}

    states = filter_states(paths)
    write_json(tmp / "filter_states.json", states)
    plot_filter_states(states, tmp / "filter_states.png")
    summary["filter_states"] = states["total"]

    shares = class_shares(paths, study.classes)
    _write_class_paths(study, shares, tmp, out)

    embedding = embed_paths(paths, study.settings.per_class, seed=study.settings.seed)
    write_json(tmp / "tsne.json", embedding)
    plot_embedding(embedding, names, tmp / "tsne.png")
    summary["tsne"] = {k: embedding[k] for k in ("silhouette_2d", "neighbour_agreement")}

    settings = study.settings
    tree = decision_tree(paths, settings.tree_threshold, settings.tree_min_size, seed=settings.seed)
    per_layer = hopkins_per_layer(paths, settings.seed)
    write_json(tmp / "hopkins_tree.json", {"hopkins_per_layer": per_layer, "tree": tree})
    plot_tree(tree, names, tmp / "hopkins_tree.png")
    summary["hopkins_per_layer"] = per_layer

    categories = filter_categories(study.net, shares)
    write_json(tmp / "filter_categories.json", categories)
    plot_categories(categories, names, tmp / "filter_categories.png")
    summary["category_agreement"] = {k: v.get("agreement_on_dynamic") for k, v in categories["layers"].items()}

    _write_filter_images(study, shares, tmp)
    return summary


def _write_class_paths(study: _Study, shares: dict[str, torch.Tensor], tmp: Path, out: Path) -> None:
    """Per-class paths (JSON, PNG), the ungated model and the per-class masks of that model."""
    card, classes, settings = study.card, study.classes, study.settings
    names = list(card.class_names)
    plain, plain_card = ungated(study.net, card)
    save(plain, tmp / "ungated-model", plain_card)
    graph = trace(plain, card.input_shape)
    rows = logit_rows(card.logit_classes, classes)
    masks = path_masks(graph, shares, classes, rows, settings.share)
    masks.class_names = {c: names[c] for c in classes if c < len(names)}
    masks.info = {"source": str(out / "ungated-model"), "rows": rows,
                  "input_shape": list(card.input_shape), "images_per_class": settings.per_class}
    masks.save(tmp / "path-masks")
    kept = summarize_masks(masks, study.paths.layers)
    write_json(tmp / "class_paths.json", {"classes": classes, "share_threshold": settings.share,
                                          "shares": {k: v.tolist() for k, v in shares.items()},
                                          "mask_filters": kept})
    plot_class_paths(shares, classes, names, tmp / "class_paths.png")


def _write_filter_images(study: _Study, shares: dict[str, torch.Tensor], tmp: Path) -> None:
    """The top-activating images of chosen filters and, if asked, the occlusion study."""
    paths, settings, data, device = study.paths, study.settings, study.data, study.device
    layer = settings.filter_layer or paths.layers[-1]
    responses = filter_responses(study.net, data, device)
    filters = list(settings.filters) if settings.filters else pick_filters(shares[layer])
    top = top_images(responses, layer, filters, paths.labels, settings.top_k)
    write_json(tmp / "top_images.json", top)
    plot_top_images(top, data, tmp / "top_images.png")

    if settings.occlusion_images:
        size = study.card.input_shape[-1]
        patch = settings.patch or max(1, size // 4)
        stride = settings.stride or max(1, patch // 2)
        picks = [int(torch.nonzero(paths.labels == c).flatten()[0]) for c in study.classes][:settings.occlusion_images]
        images = [data[i][0] for i in picks]
        results = [occlusion(study.net, image, patch, stride, device=device) for image in images]
        write_json(tmp / "occlusion.json", {"images": picks, "labels": [int(paths.labels[i]) for i in picks],
                                            "results": results})
        plot_occlusion(results, images, [int(paths.labels[i]) for i in picks], tmp / "occlusion.png")
