"""Model zoo: a registry of classifiers built for a dataset's input shape and class count.

Every model built here is ``nn.Sequential(normalize=Normalize(...), net=<body>)``: it maps raw
[0, 1] images to logits, carrying its own input normalisation, so parts of models trained on
datasets with different statistics can share one raw input.

Names: ``lenet5``, ``vgg16``, ``resnet20``, ``resnet56``, ``resnet50``, ``googlenet``, ``vit`` (a small
vision transformer), the detector ``fcos-lite`` (its output is a dense map of boxes and class logits,
:mod:`mdakit.detection.model`) and
``torchvision:<name>`` for any torchvision classification model (first convolution adapted to the
input channels) and ``timm:<name>`` for any timm model (architecture only, built with the dataset's
input channels and class count; weights come from ``mdakit import``).

An architecture is one function building its body, ``f(input_shape, num_classes, **kwargs)``, under
``@register("name")``; a library of them is one entry of :data:`FAMILIES`. torchvision is imported
where one of its architectures is built: it takes seconds to import, and a LeNet-5 needs none of it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mdakit.errors import MdakitError

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a body builder ``f(input_shape, num_classes, **kwargs) -> nn.Module``."""

    def wrap(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
        return fn

    return wrap


def available() -> list[str]:
    """Names of the registered architectures (``torchvision:<name>`` and ``timm:<name>`` are accepted
    besides these, see :data:`FAMILIES`).

    >>> "lenet5" in available()
    True
    """
    return sorted(_REGISTRY)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``, stored as buffers so it travels with the weights.

    >>> Normalize([0.5], [0.5])(torch.ones(1, 1, 2, 2)).unique()
    tensor([1.])
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MultiNormalize(nn.Module):
    """The input repeated once per part, each copy with its own ``(x - mean) / std`` (padded assembly).

    >>> m = MultiNormalize([[0.0], [1.0]], [[1.0], [2.0]])
    >>> m(torch.ones(1, 1, 1, 1)).flatten().tolist()
    [1.0, 0.0]
    """

    def __init__(self, means: Sequence[Sequence[float]], stds: Sequence[Sequence[float]]):
        super().__init__()
        self.copies = len(means)
        self.register_buffer("mean", torch.tensor([v for m in means for v in m], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([v for s in stds for v in s], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.repeat(1, self.copies, 1, 1) - self.mean) / self.std


@register("lenet5")
def lenet5(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """LeNet-5: two 5×5 conv layers (6, 16 filters) with max-pooling, then 120-84-classes."""
    channels, height, width = input_shape
    features = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, channels, height, width)).numel()
    classifier = nn.Sequential(
        nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(inplace=True),
        nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes),
    )
    return nn.Sequential(OrderedDict(features=features, classifier=classifier))


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@register("vgg16")
def vgg16(input_shape: Sequence[int], num_classes: int, width: float = 1.0, hidden: int = 512) -> nn.Module:
    """CIFAR-style VGG-16: 13 conv+BN+ReLU layers, 5 max-pools (ceil mode, so 28×28 works),
    global average pooling and a small 3-layer head (``hidden`` units)."""
    layers: list[nn.Module] = []
    in_ch = input_shape[0]
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        else:
            out_ch = max(1, int(round(int(v) * width)))
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                       nn.ReLU(inplace=True)]
            in_ch = out_ch
    classifier = nn.Sequential(
        nn.Flatten(), nn.Linear(in_ch, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(hidden, num_classes),
    )
    return nn.Sequential(OrderedDict(features=nn.Sequential(*layers), pool=nn.AdaptiveAvgPool2d(1),
                                     classifier=classifier))


class BasicBlock(nn.Module):
    """Two 3×3 conv+BN layers and a shortcut: identity, or a 1×1 conv+BN projection (option B)
    where the stride or the width changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


def cifar_resnet(input_shape: Sequence[int], num_classes: int, depth: int) -> nn.Module:
    """CIFAR-style ResNet of He et al. (2016, §4.2): a 3×3 16-filter stem, three stages of
    (depth − 2) / 6 basic blocks with 16, 32 and 64 filters (stride 2 into stages 2 and 3), global
    average pooling and one linear layer. Shortcuts use option B (1×1 projection) where shapes change,
    so every layer stays a plain, traceable conv/BN (option A's channel zero-padding is not)."""
    if depth < 8 or (depth - 2) % 6:
        raise MdakitError(f"a CIFAR ResNet needs depth 6n + 2 (20, 32, 44, 56, ...), got {depth}")
    blocks = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                               nn.ReLU(inplace=True)]
    in_ch = 16
    for stage, width in enumerate((16, 32, 64)):
        for b in range(blocks):
            layers.append(BasicBlock(in_ch, width, 2 if stage > 0 and b == 0 else 1))
            in_ch = width
    net = nn.Sequential(OrderedDict(features=nn.Sequential(*layers), pool=nn.AdaptiveAvgPool2d(1),
                                    flatten=nn.Flatten(), fc=nn.Linear(in_ch, num_classes)))
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return net


@register("resnet20")
def resnet20(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """CIFAR-style ResNet-20 (3 blocks per stage; see :func:`cifar_resnet`)."""
    return cifar_resnet(input_shape, num_classes, 20)


@register("resnet56")
def resnet56(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """CIFAR-style ResNet-56 (9 blocks per stage; see :func:`cifar_resnet`)."""
    return cifar_resnet(input_shape, num_classes, 56)


@register("resnet50")
def resnet50(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """torchvision's ResNet-50 (bottleneck blocks) with a 3×3 stride-1 stem, keeping the max-pool."""
    import torchvision

    net = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
    return net


@register("googlenet")
def googlenet(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """torchvision's GoogLeNet (inception blocks, ImageNet stem), without auxiliary heads."""
    import torchvision

    net = torchvision.models.googlenet(weights=None, num_classes=num_classes, aux_logits=False,
                                       transform_input=False, init_weights=True)
    _adapt_first_conv(net, input_shape[0])
    return net


@register("vit")
def vit(input_shape: Sequence[int], num_classes: int, patch: int = 4, width: int = 96, depth: int = 6,
        heads: int = 3, mlp_ratio: float = 2.0) -> nn.Module:
    """A small vision transformer (timm's ``VisionTransformer``): ``patch``×``patch`` patches of the image
    as tokens, a class token read by the head, ``depth`` pre-norm blocks of ``heads`` heads and an MLP of
    ``mlp_ratio`` × ``width`` units. Sized so that an MNIST epoch takes minutes on two CPU cores."""
    from timm.models.vision_transformer import VisionTransformer

    if input_shape[1] % patch or input_shape[2] % patch:
        raise MdakitError(f"vit: the image {input_shape[1]}×{input_shape[2]} is not a whole number of "
                          f"{patch}×{patch} patches")
    return VisionTransformer(img_size=tuple(input_shape[1:]), patch_size=patch, in_chans=input_shape[0],
                             num_classes=num_classes, embed_dim=width, depth=depth, num_heads=heads,
                             mlp_ratio=mlp_ratio, global_pool="token")


@register("fcos-lite")
def fcos_lite(input_shape: Sequence[int], num_classes: int, width: int = 32) -> nn.Module:
    """A compact anchor-free detector (:class:`~mdakit.detection.model.AnchorFreeDetector`): one dense map of
    4 box channels and one logit per class at stride 4, for the detection canvases (``det-mnist``, ...)."""
    from mdakit.detection.model import AnchorFreeDetector

    if input_shape[1] % 8 or input_shape[2] % 8:
        raise MdakitError(f"fcos-lite: the image {input_shape[1]}×{input_shape[2]} is not a multiple of 8 pixels")
    return AnchorFreeDetector(input_shape[0], num_classes, width)


DETECTORS = frozenset({"fcos-lite"})
"""The zoo architectures that are detectors: their output is a dense map (:mod:`mdakit.detection.model`)."""


def is_detector(arch: str | None) -> bool:
    """Whether ``arch`` names a zoo detector.

    >>> is_detector("fcos-lite"), is_detector("lenet5")
    (True, False)
    """
    return arch in DETECTORS


def _adapt_first_conv(net: nn.Module, in_channels: int) -> None:
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            if module.groups != 1:
                raise MdakitError(f"cannot adapt the grouped first convolution {name!r} to {in_channels} channels")
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride,
                            module.padding, module.dilation, 1, module.bias is not None, module.padding_mode)
            parent_name, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, attr, new)
            return
    raise MdakitError("the model has no Conv2d whose input channels could be adapted")


def _torchvision_body(name: str, input_shape: Sequence[int], num_classes: int, **kwargs) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise MdakitError(f"unknown torchvision classification model {name!r}; "
                          "see torchvision.models.list_models(module=torchvision.models)")
    builder = torchvision.models.get_model_builder(name)
    if name in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    net = builder(weights=None, num_classes=num_classes, **kwargs)
    _adapt_first_conv(net, input_shape[0])
    return net


def _timm_body(name: str, input_shape: Sequence[int], num_classes: int, **kwargs) -> nn.Module:
    """A timm architecture without weights (``pretrained=False``); its stem takes ``input_shape[0]`` channels."""
    import timm  # imported on use: timm is slow to import

    if not timm.is_model(name):
        raise MdakitError(f"unknown timm model {name!r}; see timm.list_models()")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=input_shape[0], **kwargs)
    except TypeError as exc:
        raise MdakitError(f"bad options for timm:{name}: {exc}") from exc


# Architectures of another library, named ``<family>:<name>``: f(name, input_shape, num_classes, **kwargs).
FAMILIES: dict[str, Callable[..., nn.Module]] = {"torchvision": _torchvision_body, "timm": _timm_body}


def build_model(arch: str, input_shape: Sequence[int], num_classes: int,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                **kwargs) -> nn.Sequential:
    """Build ``Sequential(normalize, net)`` for ``arch`` at ``input_shape`` (C, H, W).

    Raises :class:`MdakitError` for an unknown architecture or one that cannot take the input.

    >>> m = build_model("lenet5", (1, 28, 28), 10, mean=[0.13], std=[0.31])
    >>> m(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise MdakitError(f"input shape must be C,H,W with positive sizes, got {list(input_shape)}")
    if num_classes < 1:
        raise MdakitError(f"a classifier needs at least one class, got {num_classes}")
    mean = list(mean) if mean is not None else [0.0] * shape[0]
    std = list(std) if std is not None else [1.0] * shape[0]
    if len(mean) != shape[0] or len(std) != shape[0]:
        count = f"{shape[0]} value{'s' if shape[0] != 1 else ''}"
        raise MdakitError(f"mean and std need {count} each (one per input channel), got {len(mean)} and {len(std)}")
    family, sep, name = arch.partition(":")
    if sep and family in FAMILIES:
        body = FAMILIES[family](name, shape, num_classes, **kwargs)
    elif arch in _REGISTRY:
        try:
            body = _REGISTRY[arch](shape, num_classes, **kwargs)
        except TypeError as exc:
            raise MdakitError(f"bad options for {arch}: {exc}") from exc
    else:
        families = ", ".join(f"{f}:<name>" for f in FAMILIES)
        raise MdakitError(f"unknown architecture {arch!r}; known: {', '.join(available())}, {families}")
    model = nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=body))
    _check_runs(model, arch, shape, num_classes)
    return model


def _check_runs(model: nn.Module, arch: str, shape: tuple[int, ...], num_classes: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape))
    except (RuntimeError, AssertionError, ValueError) as exc:  # torchvision's ViT asserts its image size
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MdakitError(f"{arch} cannot take inputs of shape {list(shape)}: {message}") from exc
    finally:
        model.train(was_training)
    if is_detector(arch):
        from mdakit.detection.model import BOX_CHANNELS

        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[1] != BOX_CHANNELS + num_classes:
            raise MdakitError(f"{arch} does not return a map of {BOX_CHANNELS} box channels and one per class")
        return
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        raise MdakitError(f"{arch} does not return one logit per class for inputs of shape {list(shape)}")
