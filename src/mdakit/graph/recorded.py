"""A user-built module recorded as data, so its model files rebuild without its Python class.

A zoo model file rebuilds its module from the architecture its card names. A user-built module has
no such name, so its card starts with a ``graph`` edit that records it: the torch.nn layers it is
made of (class and constructor arguments) at their paths, and its fx graph over them. Replaying the
edit builds an ``fx.GraphModule`` with the same state-dict keys, so the weights load as they are and
the card's later edits (the keep-sets of a part, ...) replay on it as on the original.

Nothing is executed that the record names freely: layers must be classes of ``torch.nn``
(or registered with :func:`register_recordable`), functions and tensor methods must have a channel
handler in :mod:`mdakit.graph.registry`, and constants are plain JSON values. A module that cannot
be recorded exactly (another kind of layer, a tensor constant, a non-persistent buffer) raises
:class:`NotRecordableError` saying what; a recorded module is checked against the original on
random inputs before the record is used.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
>>> edit = record_graph(net, (1, 6, 6))
>>> rebuilt = replay_graph(None, edit)
>>> _ = rebuilt.load_state_dict(net.state_dict())
>>> x = torch.rand(2, 1, 6, 6)
>>> torch.equal(rebuilt(x), net(x)), sorted(rebuilt.state_dict()) == sorted(net.state_dict())
(True, True)
"""

from __future__ import annotations

import builtins
import inspect
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.node import _get_qualified_name

from mdakit.card import RECORDED_KIND
from mdakit.edits import register_edit
from mdakit.errors import MdakitError
from mdakit.graph.builder import Tracer, fx_trace
from mdakit.graph.registry import FUNCTIONS, METHODS

# Besides the ops with a channel handler: reading a tensor's shape, and the arithmetic fx records on sizes.
_NOT_ARITHMETIC = ("attrgetter", "call", "methodcaller")
_EXTRA_FUNCTIONS = (builtins.getattr, *(f for name, f in vars(operator).items()
                                        if callable(f) and not name.startswith("_") and name not in _NOT_ARITHMETIC))
_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim"})
_RECORDABLE: dict[str, type[nn.Module]] = {}


class NotRecordableError(MdakitError):
    """A module the ``graph`` edit cannot record exactly; the message says which part of it and why."""


def register_recordable(cls: type[nn.Module]) -> type[nn.Module]:
    """Let modules of ``cls`` (outside ``torch.nn``) be recorded by their constructor arguments.

    Every argument of ``cls.__init__`` must be kept as an attribute of the same name.

    >>> class ScaledBatchNorm(nn.BatchNorm2d): ...
    >>> register_recordable(ScaledBatchNorm) is ScaledBatchNorm
    True
    """
    _RECORDABLE[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _layer_class(name: str) -> type[nn.Module]:
    if name in _RECORDABLE:
        return _RECORDABLE[name]
    cls = getattr(nn, name.rpartition(".")[2], None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and _recordable(cls) and _class_name(cls) == name):
        raise MdakitError(f"the recorded graph names layer class {name!r}, which is not a torch.nn module")
    return cls


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_CONTAINERS = (nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


def _recordable(cls: type) -> bool:
    if _class_name(cls) in _RECORDABLE:
        return True
    return (cls.__module__.startswith("torch.nn.modules") and getattr(nn, cls.__name__, None) is cls
            and cls not in _CONTAINERS)


# Values: JSON scalars and lists as they are; everything else an object with one tag.
def _encode(value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return {"node": value.name}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, slice):
        return {"slice": [_encode(value.start), _encode(value.stop), _encode(value.step)]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if value is Ellipsis:
        return {"ellipsis": True}
    raise NotRecordableError(f"a constant of type {type(value).__name__} ({value!r:.40})")


def _decode(value: Any, nodes: Mapping[str, torch.fx.Node]) -> Any:
    if isinstance(value, list):
        return [_decode(v, nodes) for v in value]
    if not isinstance(value, dict):
        return value
    (tag, inner), = value.items()
    if tag == "node":
        return nodes[inner]
    if tag == "tuple":
        return tuple(_decode(v, nodes) for v in inner)
    if tag == "slice":
        return slice(*(_decode(v, nodes) for v in inner))
    if tag == "dict":
        return {k: _decode(v, nodes) for k, v in inner.items()}
    if tag == "float":
        return float(inner)
    if tag in ("dtype", "memory_format"):
        found = getattr(torch, inner, None)
        if not isinstance(found, torch.dtype | torch.memory_format):
            raise MdakitError(f"the recorded graph names an unknown {tag} {inner!r}")
        return found
    if tag == "ellipsis":
        return Ellipsis
    raise MdakitError(f"the recorded graph holds a value tagged {tag!r}, which this mdakit does not read")


def _functions() -> dict[str, Any]:
    return {_get_qualified_name(f): f for f in (*FUNCTIONS, *_EXTRA_FUNCTIONS)}


def _constructor_args(module: nn.Module) -> dict[str, Any]:
    """The constructor arguments of a layer, read off its attributes (a tensor ``bias`` means ``bias=True``)."""
    args = {}
    for name, param in inspect.signature(type(module).__init__).parameters.items():
        if name in ("self", "device", "dtype") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if hasattr(module, name):
            value = getattr(module, name)
            args[name] = value is not None if isinstance(value, torch.Tensor | type(None)) and name == "bias" \
                else value
        elif param.default is param.empty:
            raise NotRecordableError(f"layer {type(module).__name__} does not keep its argument {name!r}")
    return {k: _encode(v) for k, v in args.items()}


def _record_layer(path: str, module: nn.Module) -> dict[str, Any]:
    cls = type(module)
    if not _recordable(cls):
        raise NotRecordableError(f"its layer {path!r} is a {cls.__qualname__} from {cls.__module__}, not a torch.nn "
                                 "module")
    args = _constructor_args(module)
    rebuilt = _build_layer(cls, args)
    if repr(rebuilt) != repr(module) or _shapes(rebuilt) != _shapes(module):
        raise NotRecordableError(f"its layer {path!r} ({module!r:.60}) is not rebuilt exactly from its arguments")
    return {"class": _class_name(cls), "args": args}


def _build_layer(cls: type[nn.Module], args: Mapping[str, Any]) -> nn.Module:
    return cls(**{k: _decode(v, {}) for k, v in args.items()})


def _inside(path: str, layers: Mapping[str, Any]) -> bool:
    """Whether ``path`` is one of ``layers`` or lies under one."""
    return any(path == p or path.startswith(p + ".") for p in layers)


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _layers(model: nn.Module, called: set[str]) -> dict[str, dict[str, Any]]:
    """The layers at their paths: modules the graph calls, and leaves it does not (an unused head); containers
    such as ``ModuleList`` (leaves to fx, never called) are recorded through their children."""
    tracer, layers = Tracer(), {}
    for path, module in model.named_modules():
        if not path or _inside(path, layers):
            continue
        if path in called or (tracer.is_leaf_module(module, path) and not module._modules):
            layers[path] = _record_layer(path, module)
    return layers


def _own_tensors(model: nn.Module, layers: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Parameters and buffers held by the containers themselves (not by a recorded layer): shape and kind."""
    tensors = {}
    persistent = set(model.state_dict())
    named = [(name, t, True) for name, t in model.named_parameters()] + \
            [(name, t, False) for name, t in model.named_buffers()]
    for name, tensor, is_parameter in named:
        if _inside(name.rpartition(".")[0], layers):
            continue
        if name not in persistent:
            raise NotRecordableError(f"its buffer {name!r} is not saved with the weights (persistent=False)")
        tensors[name] = {"shape": list(tensor.shape), "parameter": is_parameter}
    return tensors


def _record_node(node: torch.fx.Node, functions: Mapping[str, Any], tensors: Mapping[str, Any]) -> dict[str, Any]:
    target: Any = node.target
    if node.op == "call_function":
        target = _get_qualified_name(node.target)
        if target not in functions:
            raise NotRecordableError(f"it calls {target}, which has no channel handler")
        if node.target is builtins.getattr and node.args[1] not in _ATTRIBUTES:
            raise NotRecordableError(f"it reads attribute {node.args[1]!r} of a tensor")
    elif node.op == "call_method" and node.target not in METHODS:
        raise NotRecordableError(f"it calls tensor method {node.target!r}, which has no channel handler")
    elif node.op == "get_attr" and node.target not in tensors:
        raise NotRecordableError(f"it reads {node.target!r}, a tensor that is neither a parameter nor a buffer")
    return {"op": node.op, "name": node.name, "target": target, "args": _encode(node.args),
            "kwargs": _encode(dict(node.kwargs))}


def record_graph(model: nn.Module, input_shape: Sequence[int], check_inputs: int = 2) -> dict[str, Any]:
    """The ``graph`` edit recording ``model``: its layers, its own tensors and its fx graph.

    The record is rebuilt and compared with ``model`` on ``check_inputs`` random inputs (and a zero
    one) before it is returned; :class:`NotRecordableError` says what could not be recorded exactly.
    """
    graph = fx_trace(model)
    layers = _layers(model, {n.target for n in graph.nodes if n.op == "call_module"})
    tensors = _own_tensors(model, layers)
    functions = _functions()
    edit = {"kind": RECORDED_KIND, "class_name": type(model).__name__, "layers": layers, "tensors": tensors,
            "nodes": [_record_node(n, functions, tensors) for n in graph.nodes]}
    _check_rebuilt(model, replay_graph(None, edit), input_shape, check_inputs)
    return edit


def _check_rebuilt(model: nn.Module, rebuilt: nn.Module, input_shape: Sequence[int], check_inputs: int) -> None:
    state = model.state_dict()
    if sorted(rebuilt.state_dict()) != sorted(state):
        raise NotRecordableError("its rebuilt copy does not hold the same weights")
    param = next(model.parameters(), None)
    rebuilt.load_state_dict(state)
    rebuilt.to(param.device if param is not None else "cpu")
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.zeros(1, *input_shape)] + [torch.rand(2, *input_shape, generator=generator)
                                                for _ in range(check_inputs)]
    was_training = model.training
    model.eval()
    rebuilt.eval()
    try:
        with torch.no_grad():
            for x in inputs:
                x = x.to(param.device if param is not None else "cpu")
                expected, got = model(x), rebuilt(x)
                if not (isinstance(got, torch.Tensor) and got.shape == expected.shape
                        and torch.allclose(got, expected, rtol=1e-5, atol=1e-6)):
                    raise NotRecordableError("its rebuilt copy does not compute what it computes")
    finally:
        model.train(was_training)


def _container(root: nn.Module, path: str) -> nn.Module:
    """The module at dotted ``path`` under ``root``, creating empty containers on the way."""
    module = root
    for part in filter(None, path.split(".")):
        if part not in module._modules:
            module.add_module(part, nn.Module())
        module = module._modules[part]
    return module


def _build_tree(edit: Mapping[str, Any]) -> nn.Module:
    root = nn.Module()
    for path, layer in edit["layers"].items():
        parent, _, attr = path.rpartition(".")
        cls = _layer_class(layer["class"])
        try:
            built = _build_layer(cls, layer["args"])
        except (TypeError, ValueError) as exc:
            raise MdakitError(f"the recorded graph's layer {path!r} does not build: {exc}") from exc
        _container(root, parent).add_module(attr, built)
    for name, tensor in edit["tensors"].items():
        parent, _, attr = name.rpartition(".")
        zeros = torch.zeros(tensor["shape"])
        _attach(_container(root, parent), attr, nn.Parameter(zeros) if tensor["parameter"] else zeros)
    return root


def _attach(holder: nn.Module, attr: str, tensor: torch.Tensor) -> None:
    """Register ``tensor`` on ``holder``: as a parameter if it is one, else as a buffer."""
    if isinstance(tensor, nn.Parameter):
        holder.register_parameter(attr, tensor)
    else:
        holder.register_buffer(attr, tensor)


def _build_graph(edit: Mapping[str, Any]) -> torch.fx.Graph:
    functions, graph, nodes = _functions(), torch.fx.Graph(), {}
    for raw in edit["nodes"]:
        op, target = raw["op"], raw["target"]
        if op == "call_function":
            if target not in functions:
                raise MdakitError(f"the recorded graph calls {target}, which has no channel handler here")
            target = functions[target]
        elif op == "call_method" and target not in METHODS:
            raise MdakitError(f"the recorded graph calls tensor method {target!r}, which has no channel handler here")
        elif op not in ("placeholder", "get_attr", "call_module", "call_method", "output"):
            raise MdakitError(f"the recorded graph holds a node of kind {op!r}")
        node = graph.create_node(op, target, _decode(raw["args"], nodes), _decode(raw["kwargs"], nodes), raw["name"])
        nodes[raw["name"]] = node
    graph.lint()
    return graph


def replay_graph(module: nn.Module | None, edit: Mapping[str, Any]) -> nn.Module:
    """Build the recorded module (weights to be loaded), or keep ``module`` when one is given (``into=``)."""
    if module is not None:
        return module
    tree = _build_tree(edit)
    name = str(edit.get("class_name", "Recorded"))
    rebuilt = torch.fx.GraphModule(tree, _build_graph(edit), class_name=name if name.isidentifier() else "Recorded")
    for path in edit["layers"]:
        parent, _, attr = path.rpartition(".")
        holder = _container(rebuilt, parent)
        if attr not in holder._modules:
            holder.add_module(attr, tree.get_submodule(path))
    for name, tensor in edit["tensors"].items():
        parent, _, attr = name.rpartition(".")
        holder = _container(rebuilt, parent)
        if not hasattr(holder, attr):
            _attach(holder, attr, tree.get_parameter(name) if tensor["parameter"] else tree.get_buffer(name))
    return rebuilt


register_edit(RECORDED_KIND, replay_graph)
