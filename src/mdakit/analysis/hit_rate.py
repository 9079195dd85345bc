"""Where does disentanglement occur? Hit rate of sub-architectures on 2×2 mosaics (NAD §4.2.2, Fig. 4).

A mosaic tiles four test images of four different classes (top-left, top-right, bottom-left,
bottom-right) into one image twice the size. For each of the four classes, its sub-architecture
(:mod:`mdakit.analysis.subarch`) runs on the mosaic; at every conv layer, the activation map is the
layer's output (after its BatchNorm where it has one), rectified and summed over the filters the
class keeps, up-sampled bilinearly to the mosaic's size. Its *activated pixels* are the top 5% (ties
at the threshold included, zero values never); the hit rate is the share of them lying in the
class's own quadrant (chance: 0.25). Maps with no activated pixel are left out and counted.

Only the convolutional part runs: forward hooks collect the maps and stop the pass once the last one
is in, so a classifier that needs the original input size is never reached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mdakit.analysis.subarch import class_keep
from mdakit.component_masks import ComponentMasks
from mdakit.data import labels_of
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph
from mdakit.progress import progress
from mdakit.surgery import MaskedModel

QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def tile(images: torch.Tensor) -> torch.Tensor:
    """Four C×H×W images as one C×2H×2W mosaic, in the order of :data:`QUADRANTS`.

    >>> tile(torch.arange(4.0).view(4, 1, 1, 1)).squeeze(0)
    tensor([[0., 1.],
            [2., 3.]])
    """
    if images.ndim != 4 or len(images) != 4:
        raise MdakitError("a mosaic needs exactly four images (4×C×H×W)")
    top = torch.cat([images[0], images[1]], dim=2)
    bottom = torch.cat([images[2], images[3]], dim=2)
    return torch.cat([top, bottom], dim=1)


def quadrant_masks(height: int, width: int) -> torch.Tensor:
    """4×height×width booleans: which pixels of a mosaic lie in each quadrant.

    >>> quadrant_masks(2, 2)[1].tolist()
    [[False, True], [False, False]]
    """
    rows = torch.arange(height)[:, None] < height // 2
    cols = torch.arange(width)[None, :] < width // 2
    return torch.stack([rows & cols, rows & ~cols, ~rows & cols, ~rows & ~cols])


def hit_rates(maps: torch.Tensor, quadrants: torch.Tensor, size: tuple[int, int], top: float = 0.05) -> torch.Tensor:
    """Per map (B×h×w, non-negative), the share of its activated pixels, after bilinear up-sampling
    to ``size``, that lie in quadrant ``quadrants[b]`` (0-3, :data:`QUADRANTS`); NaN where no pixel
    is activated.

    >>> maps = torch.zeros(2, 4, 4)
    >>> maps[:, :2, 2:] = 1.0  # everything in the top-right quadrant
    >>> hit_rates(maps, torch.tensor([1, 0]), (8, 8)).tolist()
    [1.0, 0.0]
    """
    if not 0.0 < top <= 1.0:
        raise MdakitError(f"the share of activated pixels must be in (0, 1], got {top}")
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False).flatten(1)
    k = max(1, math.ceil(top * up.shape[1]))
    threshold = up.topk(k, dim=1).values[:, -1:]
    active = (up >= threshold) & (up > 0)
    inside = quadrant_masks(*size).flatten(1)[quadrants]
    counts = active.sum(1)
    hits = (active & inside).sum(1)
    return torch.where(counts > 0, hits / counts.clamp(min=1), torch.full_like(hits, float("nan"), dtype=torch.float))


class _Collected(Exception):
    """Raised by the last hook: every map is in, the rest of the network is not needed."""


@torch.no_grad()
def activation_maps(model: MaskedModel, graph: ChannelGraph, kept: dict[str, list[int]],
                    images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per conv layer in ``kept`` (name -> kept filters), the B×h×w map: the layer's output (after its
    BatchNorm, if any), rectified and summed over the kept filters. Stops after the last map."""
    maps: dict[str, torch.Tensor] = {}
    sources = {layer.name: layer.bn_after or layer.name for layer in graph.layers if layer.name in kept}

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            maps[name] = output[:, kept[name]].clamp(min=0).sum(1).cpu()
            if len(maps) == len(sources):
                raise _Collected

        return fn

    handles = [model.model.get_submodule(source).register_forward_hook(hook(name)) for name, source in sources.items()]
    try:
        model.model(images)
    except _Collected:
        pass
    except RuntimeError as exc:
        raise MdakitError(f"the convolutional part cannot take {list(images.shape[1:])} mosaics: "
                          f"{str(exc).splitlines()[0]}") from exc
    finally:
        for handle in handles:
            handle.remove()
    return maps


def make_mosaics(test: Dataset, classes: Sequence[int], count: int, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` seeded mosaics: four distinct classes drawn from ``classes`` in random quadrant order,
    one random test image of each. Returns (count×C×2H×2W mosaics, count×4 classes by quadrant).

    >>> from mdakit.data import ImageTensorDataset
    >>> ds = ImageTensorDataset(torch.zeros(8, 1, 3, 3, dtype=torch.uint8), torch.arange(8) % 4)
    >>> mosaics, layout = make_mosaics(ds, [0, 1, 2, 3], 5)
    >>> mosaics.shape, sorted(layout[0].tolist())
    (torch.Size([5, 1, 6, 6]), [0, 1, 2, 3])
    """
    if len(set(classes)) < 4:
        raise MdakitError(f"the hit rate needs at least four classes, got {len(set(classes))}")
    if count < 1:
        raise MdakitError(f"the number of mosaics must be positive, got {count}")
    labels = labels_of(test)
    pools = {c: torch.nonzero(labels == c).flatten() for c in classes}
    empty = [c for c, pool in pools.items() if len(pool) == 0]
    if empty:
        raise MdakitError(f"the test data hold no image of class {empty[0]}")
    generator = torch.Generator().manual_seed(seed)
    class_tensor = torch.tensor(list(classes))
    mosaics, layouts = [], []
    for _ in range(count):
        picked = class_tensor[torch.randperm(len(class_tensor), generator=generator)[:4]]
        images = []
        for c in picked.tolist():
            pool = pools[c]
            images.append(test[int(pool[torch.randint(len(pool), (1,), generator=generator)])][0])
        mosaics.append(tile(torch.stack(images)))
        layouts.append(picked)
    return torch.stack(mosaics), torch.stack(layouts)


@dataclass
class HitRateResult:
    """Mean hit rate per conv layer, overall and per class, over (mosaic, class) pairs."""

    layers: list[str]
    per_class: dict[int, dict[str, float]]
    overall: dict[str, float]
    counted: dict[str, int]
    left_out: dict[str, int]
    mosaics: int
    top: float
    seed: int

    def to_dict(self) -> dict:
        return {"layers": self.layers, "hit_rate": self.overall,
                "per_class": {str(c): v for c, v in self.per_class.items()}, "counted": self.counted,
                "left_out_no_activation": self.left_out, "mosaics": self.mosaics, "top_share": self.top,
                "chance": 0.25, "seed": self.seed, "quadrants": list(QUADRANTS)}


def mosaic_hit_rate(graph: ChannelGraph, masks: ComponentMasks, test: Dataset, classes: Sequence[int] | None = None,
                    mosaics: int = 200, top: float = 0.05, seed: int = 0, batch_size: int = 64,
                    device: torch.device | str = "cpu", show_progress: bool = False) -> HitRateResult:
    """Hit rate of each class's sub-architecture on seeded 2×2 mosaics, per conv layer.

    >>> from mdakit.analysis.subarch import whole_network_masks
    >>> from mdakit.data import ImageTensorDataset
    >>> from mdakit.graph import trace
    >>> from mdakit.zoo import build_model
    >>> graph = trace(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> test = ImageTensorDataset(torch.randint(0, 255, (8, 1, 28, 28), dtype=torch.uint8), torch.arange(8) % 4)
    >>> result = mosaic_hit_rate(graph, whole_network_masks(graph, [0, 1, 2, 3]), test, mosaics=3)
    >>> result.layers, sum(result.counted.values()) + sum(result.left_out.values())
    (['net.features.0', 'net.features.3'], 24)
    """
    chosen = list(masks.classes if classes is None else classes)
    masks.subset(chosen)
    images, layout = make_mosaics(test, chosen, mosaics, seed)
    size = (images.shape[2], images.shape[3])
    convs = [layer.name for layer in graph.layers if layer.kind == "conv"]
    if not convs:
        raise MdakitError("the model has no convolutional layer to measure a hit rate on")
    sums = {c: dict.fromkeys(convs, 0.0) for c in chosen}
    counts = {c: dict.fromkeys(convs, 0) for c in chosen}
    left_out = dict.fromkeys(convs, 0)
    for cls in progress(chosen, "hit rate", enabled=show_progress):
        keep = class_keep(graph, masks, cls)
        model = MaskedModel(graph, keep).eval().to(device)
        kept = {name: keep.layers[name]["out"] for name in convs}
        where = (layout == cls).nonzero()
        for start in range(0, len(where), batch_size):
            rows, quadrants = where[start:start + batch_size].unbind(1)
            maps = activation_maps(model, graph, kept, images[rows].to(device))
            for name in convs:
                rates = hit_rates(maps[name], quadrants, size, top)
                valid = ~rates.isnan()
                sums[cls][name] += float(rates[valid].sum())
                counts[cls][name] += int(valid.sum())
                left_out[name] += int((~valid).sum())
    per_class = {c: {n: sums[c][n] / counts[c][n] if counts[c][n] else float("nan") for n in convs} for c in chosen}
    total = {n: sum(counts[c][n] for c in chosen) for n in convs}
    overall = {n: sum(sums[c][n] for c in chosen) / total[n] if total[n] else float("nan") for n in convs}
    return HitRateResult(convs, per_class, overall, total, left_out, mosaics, top, seed)
