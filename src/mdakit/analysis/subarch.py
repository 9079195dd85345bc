"""A class's sub-architecture: the original network running on only that class's channels.

Following NAD §4, a sub-architecture keeps every logit: it is the original model in which each
prunable layer sees only the input channels the class's masks keep (the others are zeroed by
forward pre-hooks, :class:`mdakit.surgery.MaskedModel`), so its prediction is the argmax over all
logits. The keep-sets are those extraction would use (coupled channels kept or dropped together).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from mdakit.component_masks import ComponentMasks, LayerMask
from mdakit.data import ClassSubset, make_loader
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph
from mdakit.surgery import KeepSets, MaskedModel, keep_sets


def check_masks(graph: ChannelGraph, masks: ComponentMasks) -> None:
    """Raise :class:`MdakitError` unless ``masks`` cover every prunable layer of ``graph`` at its width.

    >>> from mdakit.graph import trace
    >>> from mdakit.zoo import build_model
    >>> graph = trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> check_masks(graph, whole_network_masks(graph, [0, 1]))
    """
    if not masks.per_class:
        raise MdakitError("the masks hold no class")
    for layer in graph.layers:
        for cls, layers in masks.per_class.items():
            mask = layers.get(layer.name)
            if mask is None:
                raise MdakitError(f"the masks of class {cls} lack layer {layer.name!r}: they were computed for "
                                  "another model")
            if mask.kernel_shape != (layer.out_size, layer.in_size):
                raise MdakitError(f"the masks of layer {layer.name!r} are {list(mask.kernel_shape)} but the model's "
                                  f"layer is {[layer.out_size, layer.in_size]}: they were computed for another model")


def whole_network_masks(graph: ChannelGraph, classes: list[int]) -> ComponentMasks:
    """Masks keeping every channel for every class: the original network as each class's
    sub-architecture (a reference for the analyses, and an example input).

    >>> from mdakit.graph import trace
    >>> from mdakit.zoo import build_model
    >>> graph = trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> whole_network_masks(graph, [3]).per_class[3]["net.features.0"].outputs.all().item()
    True
    """
    def full(out_size: int, in_size: int) -> LayerMask:
        return LayerMask(torch.ones(out_size, in_size, dtype=torch.bool), torch.ones(in_size, dtype=torch.bool),
                         torch.ones(out_size, dtype=torch.bool))

    per_class = {c: {layer.name: full(layer.out_size, layer.in_size) for layer in graph.layers} for c in classes}
    return ComponentMasks(per_class, method="whole-network")


def class_keep(graph: ChannelGraph, masks: ComponentMasks, cls: int) -> KeepSets:
    """Keep-sets of ``cls``'s sub-architecture, with every logit row kept."""
    if cls not in masks.per_class:
        raise MdakitError(f"no masks for class {cls} (masks hold classes {masks.classes})")
    return keep_sets(graph, masks.per_class[cls], range(graph.output_layer.out_size))


def sub_architecture(graph: ChannelGraph, masks: ComponentMasks, cls: int) -> MaskedModel:
    """``cls``'s sub-architecture as a module (a masked copy of ``graph.model``, all logits kept).

    >>> from mdakit.graph import trace
    >>> from mdakit.zoo import build_model
    >>> graph = trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> sub_architecture(graph, whole_network_masks(graph, [0]), 0)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    return MaskedModel(graph, class_keep(graph, masks, cls)).eval()


def class_images(dataset: Dataset, cls: int, limit: int | None = None, seed: int = 0) -> torch.Tensor:
    """The images of class ``cls`` (at most ``limit``, a seeded random choice), as one tensor.

    >>> from mdakit.data import ImageTensorDataset
    >>> ds = ImageTensorDataset(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([1, 0, 1]))
    >>> class_images(ds, 1).shape
    torch.Size([2, 1, 2, 2])
    """
    subset: Dataset = ClassSubset(dataset, [cls], remap=False)
    if len(subset) == 0:
        raise MdakitError(f"the test data hold no image of class {cls}")
    if limit is not None and limit < len(subset):
        order = torch.randperm(len(subset), generator=torch.Generator().manual_seed(seed + cls))
        subset = Subset(subset, order[:limit].tolist())
    return torch.cat([images for images, _ in make_loader(subset, 512)])
