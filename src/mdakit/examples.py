"""A tiny user-built classifier and its tensors, for runnable examples and quick experiments.

Nothing here comes from the zoo: :class:`TinyNet` is an ``nn.Module`` written the way a user writes
one, and :func:`toy_problem` trains it for a few seconds on a ``TensorDataset`` of 8×8 images whose
class is the quadrant holding a bright blob. Every docstring example of the top-level API runs on it.

>>> model, data = toy_problem()
>>> model(data[0][0][None]).shape
torch.Size([1, 4])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from mdakit.seeding import seed_everything
from mdakit.train import TrainConfig, train

QUADRANTS = 4
SIDE = 8


class TinyNet(nn.Module):
    """A conv stem, a residual block of two convs, average pooling to 2×2 and a linear head."""

    def __init__(self, num_classes: int = QUADRANTS, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.head = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(nn.functional.adaptive_avg_pool2d(x, 2).flatten(1))


def quadrant_images(per_class: int = 64, seed: int = 0) -> TensorDataset:
    """``per_class`` noisy 1×8×8 images per quadrant class (0: top left, 1: top right, 2: bottom left, 3: bottom right).

    >>> data = quadrant_images(2)
    >>> len(data), data.tensors[0].shape[1:], data.tensors[1].tolist()
    (8, torch.Size([1, 8, 8]), [0, 0, 1, 1, 2, 2, 3, 3])
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(QUADRANTS).repeat_interleave(per_class)
    images = 0.3 * torch.rand(len(labels), 1, SIDE, SIDE, generator=generator)
    half = SIDE // 2
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        top = row * half + int(torch.randint(0, half - 1, (1,), generator=generator))
        left = col * half + int(torch.randint(0, half - 1, (1,), generator=generator))
        images[i, :, top:top + 2, left:left + 2] = 1.0
    return TensorDataset(images, labels)


def toy_problem(seed: int = 0) -> tuple[TinyNet, TensorDataset]:
    """A :class:`TinyNet` trained on :func:`quadrant_images` (a few seconds on a CPU), and those images.

    >>> model, data = toy_problem()
    >>> from mdakit.evaluate import evaluate
    >>> evaluate(model, data, [0, 1, 2, 3]).accuracy > 0.9
    True
    """
    seed_everything(seed)
    data = quadrant_images(seed=seed)
    model = TinyNet()
    train(model, data, TrainConfig(epochs=6, batch_size=32, lr=0.05, seed=seed),
          show_progress=False)
    return model.eval(), data
