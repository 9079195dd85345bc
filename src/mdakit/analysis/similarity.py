"""Similarity between classes' sub-architectures (NAD §4.2.2, Fig. 4 first row).

A sub-architecture is read as the set of filters it keeps in each layer; two classes' similarity in a
layer is the Jaccard coefficient of their kept filters (``LayerMask.outputs``; 1 when both keep
none). By default the logit layer is left out: each class's mask keeps only its own logit row there,
so its similarity is 0 by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mdakit.component_masks import ComponentMasks
from mdakit.errors import MdakitError


def similarity_layers(masks: ComponentMasks, layers: Sequence[str] | None = None) -> list[str]:
    """The layers compared: ``layers`` as given (checked), else every layer but the last (the logits).

    >>> from mdakit.component_masks import LayerMask
    >>> yes = torch.ones(1, dtype=torch.bool)
    >>> m = LayerMask(yes[:, None], torch.ones(1, dtype=torch.bool), yes)
    >>> similarity_layers(ComponentMasks({0: {"conv": m, "fc": m}}, method="example"))
    ['conv']
    """
    names = masks.layer_names
    if layers is None:
        if len(names) < 2:
            raise MdakitError("the masks cover a single layer (the logits); there is nothing to compare")
        return names[:-1]
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise MdakitError(f"the masks have no layer {unknown[0]!r}")
    if not layers:
        raise MdakitError("no layers chosen")
    return list(layers)


def jaccard_matrices(masks: ComponentMasks, classes: Sequence[int] | None = None,
                     layers: Sequence[str] | None = None, part: str = "outputs") -> dict[str, torch.Tensor]:
    """Per layer, the classes × classes matrix of Jaccard similarities (diagonal 1).

    >>> from mdakit.component_masks import LayerMask
    >>> def mask(keep):
    ...     out = torch.tensor(keep)
    ...     return LayerMask(out[:, None].expand(-1, 1), torch.ones(1, dtype=torch.bool), out)
    >>> masks = ComponentMasks({0: {"conv": mask([True, True, False])}, 1: {"conv": mask([False, True, True])}},
    ...                        method="example")
    >>> jaccard_matrices(masks, layers=["conv"])["conv"]
    tensor([[1.0000, 0.3333],
            [0.3333, 1.0000]])
    """
    chosen = list(masks.classes if classes is None else classes)
    masks.subset(chosen)
    out = {}
    for name in similarity_layers(masks, layers):
        x = torch.stack([getattr(masks.per_class[c][name], part) for c in chosen]).float()
        inter = x @ x.T
        sizes = x.sum(1)
        union = sizes[:, None] + sizes[None, :] - inter
        out[name] = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    return out


def layer_similarity(masks: ComponentMasks, classes: Sequence[int] | None = None,
                     layers: Sequence[str] | None = None, part: str = "outputs") -> dict[str, float]:
    """Per layer, the mean Jaccard similarity over all pairs of distinct classes (Fig. 4, first row).

    >>> from mdakit.component_masks import LayerMask
    >>> yes = torch.ones(2, dtype=torch.bool)
    >>> m = LayerMask(yes[:, None], torch.ones(1, dtype=torch.bool), yes)
    >>> layer_similarity(ComponentMasks({0: {"conv": m}, 1: {"conv": m}}, method="example"), layers=["conv"])
    {'conv': 1.0}
    """
    matrices = jaccard_matrices(masks, classes, layers, part)
    n = len(next(iter(matrices.values())))
    if n < 2:
        raise MdakitError("similarity needs masks of at least two classes")
    pairs = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    return {name: float(matrix[pairs].mean()) for name, matrix in matrices.items()}


def similarity_matrix(masks: ComponentMasks, classes: Sequence[int] | None = None,
                      layers: Sequence[str] | None = None, part: str = "outputs") -> torch.Tensor:
    """The classes × classes similarity of sub-architectures: the mean over layers of the Jaccard
    similarity (what the misclassification analysis compares).

    >>> from mdakit.component_masks import LayerMask
    >>> yes = torch.ones(2, dtype=torch.bool)
    >>> m = LayerMask(yes[:, None], torch.ones(1, dtype=torch.bool), yes)
    >>> similarity_matrix(ComponentMasks({0: {"conv": m}, 1: {"conv": m}}, method="example"), layers=["conv"])
    tensor([[1., 1.],
            [1., 1.]])
    """
    return torch.stack(list(jaccard_matrices(masks, classes, layers, part).values())).mean(0)
