"""From a detector's dense map to boxes and back: decoding, post-processing and training targets.

A location's box is decoded from its four side distances (:mod:`mdakit.detection.model`); training
assigns each ground-truth box the locations near its centre (FCOS's centre sampling: inside the box and
within :data:`CENTRE_RADIUS` strides of its centre, the nearest one always), a location claimed by
several boxes going to the smallest. Detections are the locations' class scores above a threshold,
the best :data:`PRE_NMS` per image, then class-wise non-maximum suppression.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

from mdakit.detection.model import BOX_CHANNELS

CENTRE_RADIUS = 1.5
PRE_NMS = 200
MAX_LOG_DISTANCE = 8.0  # exp(8) strides: far beyond any canvas, and no overflow in float32


@dataclass(frozen=True)
class PostProcess:
    """Score threshold, NMS IoU and the most detections kept per image."""

    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100


def stride_of(output: torch.Tensor, image_size: int) -> float:
    """The map's stride: image pixels per map location.

    >>> stride_of(torch.zeros(1, 5, 16, 16), 64)
    4.0
    """
    return image_size / output.shape[-1]


def centres(height: int, width: int, stride: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(H·W) × 2`` pixel centres (x, y) of the map's locations, row by row.

    >>> centres(1, 2, 4.0).tolist()
    [[2.0, 2.0], [6.0, 2.0]]
    """
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1).float().add_(0.5).mul_(stride)


def decode_boxes(output: torch.Tensor, stride: float) -> torch.Tensor:
    """``B × (H·W) × 4`` boxes (x1, y1, x2, y2) from the map's box channels."""
    b, _, h, w = output.shape
    distances = output[:, :BOX_CHANNELS].clamp(max=MAX_LOG_DISTANCE).exp().mul(stride)
    distances = distances.flatten(2).transpose(1, 2)  # B × HW × (l, t, r, b)
    xy = centres(h, w, stride, output.device)[None]
    return torch.cat([xy - distances[..., :2], xy + distances[..., 2:]], -1)


def detect(output: torch.Tensor, image_size: int, labels: Sequence[int], post: PostProcess = PostProcess(),
           rows: Sequence[int] | None = None) -> list[dict[str, torch.Tensor]]:
    """Per image, ``{"boxes", "scores", "labels"}`` after score threshold and class-wise NMS.

    ``labels[j]`` is the class of the map's class channel ``j`` (the model's logit classes); ``rows``
    restricts detection to those class channels (the original restricted to a part's classes).

    >>> out = torch.full((1, 6, 2, 2), -9.0); out[:, :4] = 0.0; out[0, 4, 0, 1] = 5.0
    >>> d = detect(out, 8, [3, 7])[0]  # one location, stride 4: sides one stride from its centre (6, 2)
    >>> d["labels"].tolist(), d["boxes"].tolist()
    ([3], [[2.0, -2.0, 10.0, 6.0]])
    """
    rows = list(range(output.shape[1] - BOX_CHANNELS)) if rows is None else list(rows)
    label_of = torch.tensor([labels[r] for r in rows], dtype=torch.long, device=output.device)
    boxes = decode_boxes(output, stride_of(output, image_size))
    scores = output[:, [BOX_CHANNELS + r for r in rows]].flatten(2).sigmoid()  # B × K × HW
    results = []
    for image_scores, image_boxes in zip(scores, boxes):
        flat = image_scores.flatten()
        top = flat.topk(min(PRE_NMS, len(flat)))
        keep = top.values > post.score_threshold
        values, index = top.values[keep], top.indices[keep]
        cls, loc = index // image_scores.shape[1], index % image_scores.shape[1]
        chosen = image_boxes[loc]
        kept = batched_nms(chosen, values, cls, post.nms_iou)[:post.max_detections]
        results.append({"boxes": chosen[kept], "scores": values[kept], "labels": label_of[cls[kept]]})
    return results


def assign(targets: Sequence[dict[str, torch.Tensor]], height: int, width: int, stride: float, labels: Sequence[int]
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training targets of a batch: class targets ``B × K × (H·W)`` (one-hot at positive locations), the box
    of each location ``B × (H·W) × 4`` and the positive mask ``B × (H·W)``. ``labels``: the class of each
    class channel; boxes of other classes are ignored."""
    xy = centres(height, width, stride)
    channel_of = {c: j for j, c in enumerate(labels)}
    cls = torch.zeros(len(targets), len(labels), height * width)
    box = torch.zeros(len(targets), height * width, 4)
    positive = torch.zeros(len(targets), height * width, dtype=torch.bool)
    for i, target in enumerate(targets):
        area = torch.full((height * width,), float("inf"))
        for gt, label in zip(target["boxes"], target["labels"].tolist()):
            if label not in channel_of:
                continue
            centre = (gt[:2] + gt[2:]) / 2
            inside = (xy > gt[:2]).all(1) & (xy < gt[2:]).all(1)
            near = ((xy - centre).abs() <= CENTRE_RADIUS * stride).all(1)
            claim = inside & near
            claim[int(((xy - centre) ** 2).sum(1).argmin())] = True
            gt_area = float((gt[2] - gt[0]) * (gt[3] - gt[1]))
            claim &= gt_area < area
            area[claim] = gt_area
            box[i, claim] = gt
            cls[i, :, claim] = 0.0
            cls[i, channel_of[label], claim] = 1.0
            positive[i] |= claim
    return cls, box, positive


def detection_loss(output: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]], image_size: int,
                   labels: Sequence[int], box_weight: float = 2.0) -> torch.Tensor:
    """Focal loss on every location's class logits (per positive location) plus ``box_weight`` × the
    generalised-IoU loss of the positive locations' boxes."""
    b, _, h, w = output.shape
    stride = stride_of(output, image_size)
    cls, box, positive = (t.to(output.device) for t in assign(targets, h, w, stride, labels))
    logits = output[:, BOX_CHANNELS:].flatten(2)
    count = max(1.0, float(positive.sum()))
    loss = sigmoid_focal_loss(logits, cls, reduction="sum") / count
    if positive.any():
        predicted = decode_boxes(output, stride)[positive]
        loss = loss + box_weight * generalized_box_iou_loss(predicted, box[positive], reduction="mean")
    return loss
