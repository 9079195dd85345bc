"""One interface for every attribution method, and the registry that names them.

An :class:`AttributionMethod` turns each class's selected training samples into per-class
:class:`~mdakit.component_masks.ComponentMasks`; it owns its settings type and says which runs it
supports. A capability is a flag with the methods it promises: :class:`SumsAttribution` (flag
:attr:`~AttributionMethod.exposes_sums`) also hands out its per-class sums and thresholds them, so
thresholds can be calibrated and routes ranked. :func:`register_method` adds a method under its
name; :func:`get_method` and :func:`available_methods` look them up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch.utils.data import Dataset

from mdakit.component_masks import ComponentMasks
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph

ClassSums = dict[int, dict[str, torch.Tensor]]  # class -> layer name -> sums


class MethodSettings(Protocol):
    """What a method's settings dataclass provides."""

    def validate(self) -> None: ...

    def to_dict(self) -> dict: ...


class AttributionMethod(ABC):
    """An attribution method: its registry :attr:`name`, its :attr:`settings_type` and :meth:`masks`.

    ``accepts`` lists settings types it takes besides its own; ``title`` names its settings in
    messages (default: the name). A subclass decorated with :func:`register_method` is a method
    that :func:`~mdakit.disassembly.compute_masks`, :func:`~mdakit.disassembly.disassemble` and
    the command line's ``--method`` accept by name.
    """

    name: ClassVar[str]
    settings_type: ClassVar[type]
    accepts: ClassVar[tuple[type, ...]] = ()
    title: ClassVar[str] = ""
    exposes_sums: ClassVar[bool] = False

    def default_settings(self) -> MethodSettings:
        """The settings of a run given none."""
        return self.settings_type()

    def settings_for(self, settings: MethodSettings | None, seed: int = 0) -> MethodSettings:
        """The checked settings of a run with ``seed``: ``settings``, or :meth:`default_settings`.

        >>> get_method("contribution").settings_for(None).alpha_conv
        0.3
        >>> get_method("contribution").settings_for(get_method("nad").default_settings())
        Traceback (most recent call last):
        mdakit.errors.MdakitError: NAD settings were given for method 'contribution'
        """
        if settings is not None and not isinstance(settings, (self.settings_type, *self.accepts)):
            raise MdakitError(f"{_settings_title(settings)} settings were given for method {self.name!r}")
        settings = self.default_settings() if settings is None else settings
        settings.validate()
        return settings

    def settings_from_record(self, record: Mapping[str, Any]) -> MethodSettings:
        """Checked settings from recorded field values (e.g. a part card's; see :func:`settings_from_fields`)."""
        return settings_from_fields(self.settings_type, record)

    def settings_from_options(self, options: Mapping[str, Any]) -> MethodSettings:
        """Checked settings from the command line's option values by name (default: as a record)."""
        return self.settings_from_record(options)

    def one_pass_reason(self, settings: MethodSettings) -> str | None:
        """Why a run with ``settings`` needs every class in one pass (no class chunks, one process),
        or ``None`` when it does not."""
        return None

    @abstractmethod
    def masks(self, graph: ChannelGraph, dataset: Dataset, samples: Mapping[int, torch.Tensor],
              rows: Mapping[int, int], settings: MethodSettings, device: torch.device | str = "cpu",
              show_progress: bool = False) -> ComponentMasks:
        """Per-class masks of the classes in ``samples`` (``samples[c]``: indices into ``dataset`` of
        class ``c``'s selected images; ``rows[c]``: its logit)."""


class SumsAttribution(AttributionMethod):
    """A method whose masks are thresholded per-class sums it can hand out (:attr:`exposes_sums`):
    the sums are kept to try other thresholds (calibration) or to rank components (routes)."""

    exposes_sums: ClassVar[bool] = True

    @abstractmethod
    def class_sums(self, graph: ChannelGraph, dataset: Dataset, samples: Mapping[int, torch.Tensor],
                   settings: MethodSettings, device: torch.device | str = "cpu", show_progress: bool = False
                   ) -> ClassSums:
        """Per class, the sums of each attributed layer over the class's selected samples."""

    @abstractmethod
    def masks_from_sums(self, graph: ChannelGraph, sums: ClassSums, rows: Mapping[int, int],
                        settings: MethodSettings) -> ComponentMasks:
        """Threshold the sums of :meth:`class_sums` into per-class masks."""

    @abstractmethod
    def relaxed(self, settings: MethodSettings, factor: float) -> MethodSettings:
        """``settings`` with every threshold multiplied by ``factor`` (< 1 keeps more)."""


def settings_from_fields(settings_type: type, record: Mapping[str, Any]) -> MethodSettings:
    """Checked ``settings_type`` settings from ``record``'s values of its fields (other keys are ignored).

    >>> from mdakit.attribution.gradient import GradientSettings
    >>> settings_from_fields(GradientSettings, {"threshold": 0.5, "samples": 50})
    GradientSettings(threshold=0.5, batch_size=64)
    """
    known = {f.name for f in fields(settings_type)}
    settings = settings_type(**{k: v for k, v in record.items() if k in known})
    settings.validate()
    return settings


M = TypeVar("M", bound=type[AttributionMethod])
_REGISTRY: dict[str, AttributionMethod] = {}


def register_method(cls: M) -> M:
    """Class decorator: register an instance of ``cls`` under ``cls.name``."""
    name = getattr(cls, "name", "")
    if not name:
        raise MdakitError(f"attribution method {cls.__name__} has no name")
    if name in _REGISTRY:
        raise MdakitError(f"an attribution method named {name!r} is already registered")
    _REGISTRY[name] = cls()
    return cls


def available_methods() -> list[str]:
    """The registered method names, sorted.

    >>> available_methods()
    ['contribution', 'gradient', 'nad']
    """
    return sorted(_REGISTRY)


def get_method(name: str) -> AttributionMethod:
    """The method registered as ``name``.

    >>> get_method("nad").exposes_sums, get_method("contribution").exposes_sums
    (False, True)
    >>> get_method("x")
    Traceback (most recent call last):
    mdakit.errors.MdakitError: unknown method 'x'; available: contribution, gradient, nad
    """
    if name not in _REGISTRY:
        raise MdakitError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    return _REGISTRY[name]


def _settings_title(settings: object) -> str:
    """How messages name ``settings``: by the method whose settings type they are."""
    owner = next((m for m in _REGISTRY.values() if type(settings) is m.settings_type), None)
    return (owner.title or owner.name) if owner is not None else type(settings).__name__
