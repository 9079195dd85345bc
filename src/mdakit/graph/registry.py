"""Which handler maps the channels of an fx node: tables keyed by the op the node calls.

A handler is a small function that reads the channel ids of a node's inputs from the
:class:`~mdakit.graph.builder.GraphBuilder` and records the node's own ids, edges, couplings and
pins. ``call_function`` targets and ``call_method`` names are looked up exactly; a ``call_module``
by its class, the most derived registered class first, so a subclass is handled as its base (timm's
``BatchNormAct2d`` as ``BatchNorm2d``) unless it has a handler of its own. An op found in no table
is an error naming the op and the node.

>>> import operator
>>> from mdakit.graph.ops.binary import binary
>>> FUNCTIONS[operator.add].handler is binary
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch.fx
from torch import nn

from mdakit.errors import MdakitError

if TYPE_CHECKING:
    from mdakit.graph.builder import GraphBuilder

OpHandler = Callable[["GraphBuilder", torch.fx.Node], None]
ModuleHandler = Callable[["GraphBuilder", torch.fx.Node, nn.Module], None]
H = TypeVar("H", bound=Callable[..., None])


@dataclass(frozen=True)
class OpEntry:
    """A function or method handler; ``any_result``: it also takes nodes whose result is not one
    tensor (the pieces of a ``chunk``, the ints of ``size()``), which are refused before any other."""

    handler: OpHandler
    any_result: bool = False


FUNCTIONS: dict[Callable[..., Any], OpEntry] = {}
METHODS: dict[str, OpEntry] = {}
MODULES: dict[type[nn.Module] | str, ModuleHandler] = {}
"""Module handlers by class, or by the class's qualified name (``"timm.layers.attention.Attention"``) for a
library mdakit does not import until the model does."""
CHANNELS_ANYWHERE: set[object] = set()
"""Ops (functions, method names, module classes) whose handler follows channels on any dim, as after a
permute to channels-last: elementwise ops, and the ops over the channel dim (Linear, LayerNorm). Every
other op is refused on such a tensor (a pooling there would pool over channels)."""


def _add(table: dict, keys: tuple, value: object, channels_anywhere: bool) -> None:
    for key in dict.fromkeys(keys):  # one op under two names (F.channel_shuffle is torch.channel_shuffle)
        if key in table:
            raise MdakitError(f"{getattr(key, '__name__', key)!r} already has a channel handler")
        table[key] = value
        if channels_anywhere:
            CHANNELS_ANYWHERE.add(key)


def register_function(*targets: Callable[..., Any], any_result: bool = False, channels_anywhere: bool = False
                      ) -> Callable[[OpHandler], OpHandler]:
    """Register the decorated handler for ``call_function`` nodes calling any of ``targets``
    (``channels_anywhere``: also on tensors whose channels are not on dim 1, see :data:`CHANNELS_ANYWHERE`)."""
    def register(handler: OpHandler) -> OpHandler:
        _add(FUNCTIONS, targets, OpEntry(handler, any_result), channels_anywhere)
        return handler
    return register


def register_method(*names: str, any_result: bool = False, channels_anywhere: bool = False
                    ) -> Callable[[OpHandler], OpHandler]:
    """Register the decorated handler for ``call_method`` nodes calling any tensor method in ``names``."""
    def register(handler: OpHandler) -> OpHandler:
        _add(METHODS, names, OpEntry(handler, any_result), channels_anywhere)
        return handler
    return register


def register_module(*types: type[nn.Module] | str, channels_anywhere: bool = False) -> Callable[[H], H]:
    """Register the decorated handler for ``call_module`` nodes of ``types`` (classes, or qualified class
    names) and their subclasses.

    The tracer keeps modules of exactly these classes whole (fx leaves) so the handler sees them;
    subclasses reach it only if they are leaves anyway (torch.nn's modules, BatchNorms).
    """
    def register(handler: H) -> H:
        _add(MODULES, types, handler, channels_anywhere)
        return handler
    return register


def unregister(*ops: type[nn.Module] | Callable[..., Any] | str) -> None:
    """Remove the handlers of ``ops`` (module classes, functions or method names).

    >>> import torch
    >>> handler = register_function(torch.erf)(lambda builder, node: None)
    >>> unregister(torch.erf)
    >>> torch.erf in FUNCTIONS
    False
    """
    for op in ops:
        table: dict = (MODULES if isinstance(op, type) or op in MODULES else METHODS if isinstance(op, str)
                       else FUNCTIONS)
        if op not in table:
            raise MdakitError(f"{getattr(op, '__name__', op)!r} has no channel handler")
        del table[op]
        CHANNELS_ANYWHERE.discard(op)


def op_entry(node: torch.fx.Node) -> OpEntry | None:
    """The entry for a ``call_function`` or ``call_method`` node, if its op has one."""
    return FUNCTIONS.get(node.target) if node.op == "call_function" else METHODS.get(node.target)


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class, as :func:`register_module` takes it by name.

    >>> qualified_name(nn.Linear)
    'torch.nn.modules.linear.Linear'
    """
    return f"{cls.__module__}.{cls.__qualname__}"


def handled_class(module: nn.Module) -> type[nn.Module] | str | None:
    """The most derived registered class (or class name) ``module`` is an instance of, if any."""
    for cls in type(module).__mro__:
        if cls in MODULES:
            return cls
        if qualified_name(cls) in MODULES:
            return qualified_name(cls)
    return None


def is_registered_class(module: nn.Module) -> bool:
    """Whether ``module``'s own class (not a base) has a handler, by class or by name."""
    return type(module) in MODULES or qualified_name(type(module)) in MODULES


def module_handler(module: nn.Module) -> ModuleHandler | None:
    """The handler of the most derived registered class ``module`` is an instance of, if any.

    >>> from mdakit.graph.ops.layers import batch_norm
    >>> class Custom(nn.BatchNorm2d): ...
    >>> module_handler(Custom(4)) is batch_norm
    True
    """
    cls = handled_class(module)
    return None if cls is None else MODULES[cls]
