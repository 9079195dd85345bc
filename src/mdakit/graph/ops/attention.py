"""Multi-head self-attention: heads are kept or removed whole.

An attention module is kept whole by the tracer (its reshapes into heads and its matrix products are not
channel ops) and described by two prunable layers inside it: ``qkv``, whose output rows are the queries,
keys and values of every head, and ``proj``, which reads the heads' outputs. Between them is a node of
the graph that is not in the fx graph, ``<node>__heads``: channel ``j`` of the heads' output reads query,
key and value ``j``. All rows of one head (its ``head_dim`` queries, keys and values) are coupled into one
group, so a part keeps a head or drops it with every row: dropping a head removes its term of ``proj``'s
sum exactly, while dropping single query or key dims would change the head's attention weights.

The input and output channels are the residual stream's, which LayerNorm normalises together: those are
pinned by the norms, not here. An attention whose heads' outputs are normalised together before ``proj``
(timm's ``scale_norm``) pins its heads.

Which classes are attention, and how a part sets its number of heads, is :data:`ATTENTION`, by
qualified class name (timm is not imported until a model uses it). ``nn.MultiheadAttention`` is not one:
:func:`mdakit.attention.convert_attention` turns it into a :class:`~mdakit.attention.SelfAttention` first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from mdakit.attention import NoHeads, unconvertible
from mdakit.errors import MdakitError
from mdakit.graph.builder import GraphBuilder, describe, tensor_shape
from mdakit.graph.channel_graph import AttentionSite, Edge, PrunableLayer
from mdakit.graph.registry import qualified_name, register_module

HEADS_SUFFIX = "__heads"
QKV_SUFFIX = "__qkv"
OUT_SUFFIX = "__out"


@dataclass(frozen=True)
class AttentionRule:
    """How mdakit reads one attention class: its layers' attribute names, ``set_heads(module, n)``, which makes
    the module's forward run ``n`` heads once its layers are sliced, why a module cannot be followed (or None),
    and whether it returns ``(output, weights)`` as ``nn.MultiheadAttention`` does."""

    qkv: str
    proj: str
    set_heads: Callable[[nn.Module, int], None]
    check: Callable[[nn.Module], str | None]
    returns_tuple: bool = False


def _timm_set_heads(module: nn.Module, heads: int) -> None:
    module.num_heads = heads
    module.attn_dim = heads * module.head_dim


def _timm_check(module: nn.Module) -> str | None:
    """Why mdakit cannot follow this timm Attention, or None."""
    if getattr(module, "gate", None) is not None:
        return "its gated output (a sigmoid gate over the heads) is not supported"
    if not hasattr(module, "attn_dim"):
        return "this timm version's Attention has no attn_dim; mdakit needs timm >= 1.0.20"
    return None


def _set_num_heads(module: nn.Module, heads: int) -> None:
    module.num_heads = heads


ATTENTION: dict[str, AttentionRule] = {
    "timm.layers.attention.Attention": AttentionRule("qkv", "proj", _timm_set_heads, _timm_check),
    "mdakit.attention.SelfAttention": AttentionRule("qkv", "proj", _set_num_heads, lambda module: None, True),
}


def rule_of(module: nn.Module) -> AttentionRule | None:
    """The attention rule of ``module``'s class, if it has one."""
    return ATTENTION.get(qualified_name(type(module)))


@register_module(*ATTENTION, channels_anywhere=True)
def attention(builder: GraphBuilder, node: torch.fx.Node, module: nn.Module) -> None:
    """Record the ``qkv`` and ``proj`` layers of an attention module, its heads' rows coupled per head."""
    path = str(node.target)
    rule = rule_of(module)
    source = builder.first_tensor(node)
    shape = tensor_shape(source)
    why = rule.check(module)
    if why is None and (len({a.name for a in builder.tensor_args(node)}) != 1 or shape is None or len(shape) != 3
                        or builder.channel_dim(source) != 2 or not getattr(module, "batch_first", True)):
        why = "mdakit follows self-attention over B×tokens×channels inputs, without a traced mask"
    if why is not None:
        raise MdakitError(f"unsupported attention {type(module).__name__} ({path!r}) at {describe(node)}: {why}")
    qkv, proj = getattr(module, rule.qkv), getattr(module, rule.proj)
    heads, head_dim = int(module.num_heads), int(module.head_dim)
    site = AttentionSite(f"{path}.{rule.qkv}", f"{path}.{rule.proj}", heads, head_dim)
    width = heads * head_dim
    if qkv.out_features != 3 * width or proj.in_features != width:
        raise MdakitError(f"unsupported attention {type(module).__name__} ({path!r}): its layers do not hold "
                          f"{heads} heads of {head_dim} queries, keys and values")
    qkv_node, heads_node = node.name + QKV_SUFFIX, node.name + HEADS_SUFFIX
    qkv_ids = builder.fresh(3 * width)
    for head in range(heads):
        rows = torch.tensor(site.head_rows(head))
        builder.union(qkv_ids[rows[:1]].expand(len(rows)), qkv_ids[rows])
    if not isinstance(getattr(module, "norm", nn.Identity()), nn.Identity):
        builder.pin(qkv_ids)  # the heads' outputs are normalised together before proj
    value_ids = qkv_ids[2 * width:]
    builder.ids[qkv_node] = qkv_ids
    builder.ids[heads_node] = value_ids
    builder.edges[heads_node] = [Edge(qkv_node, torch.arange(part * width, (part + 1) * width)) for part in range(3)]
    builder.channel_dims[qkv_node] = builder.channel_dims[heads_node] = 2
    builder.order[-1:-1] = [qkv_node, heads_node]  # before the module's own node, as they run
    out_node = tuple_output(builder, node) if rule.returns_tuple else node.name
    out_ids = builder.fresh(proj.out_features)
    builder.ids[out_node] = out_ids
    builder.channel_dims[out_node] = 2
    builder.layers.append(PrunableLayer(site.qkv, qkv, "pointwise", qkv_node, source.name,
                                        builder.ids[source.name], qkv_ids))
    builder.layers.append(PrunableLayer(site.proj, proj, "pointwise", out_node, heads_node, value_ids, out_ids))
    builder.attention[path] = site
    builder.unmergeable[node.name] = "attention heads of several models cannot be stacked into one module yet"


def tuple_output(builder: GraphBuilder, node: torch.fx.Node) -> str:
    """Record that ``node`` returns ``(output, None)``: the output is a node of the channel graph of its own
    (``<node>__out``), which ``node[0]`` reads (:func:`mdakit.graph.ops.split.piece`)."""
    out_node = node.name + OUT_SUFFIX
    builder.order.append(out_node)
    builder.tuples[node.name] = {0: out_node}
    return out_node


@register_module(NoHeads, channels_anywhere=True)
def no_heads(builder: GraphBuilder, node: torch.fx.Node, module: NoHeads) -> None:
    """A constant per channel: its channels are pinned (the bias would need slicing) and read nothing."""
    dim = builder.channel_dim(builder.first_tensor(node))
    out_node = tuple_output(builder, node) if module.returns_tuple else node.name
    builder.ids[out_node] = builder.fresh(module.out_features, pinned=True)
    builder.edges[out_node] = []
    builder.channel_dims[out_node] = dim


@register_module(nn.MultiheadAttention, channels_anywhere=True)
def multihead_attention(builder: GraphBuilder, node: torch.fx.Node, module: nn.MultiheadAttention) -> None:
    """Refused, saying what to do: its input projection is a bare parameter, out of reach of hooks and slicing."""
    why = unconvertible(module)
    hint = (f"mdakit cannot convert it: {why}" if why else "convert it first with "
            "mdakit.attention.convert_attention(model) (mdakit.disassemble does)")
    raise MdakitError(f"unsupported module MultiheadAttention ({str(node.target)!r}) at node {node.name!r}: {hint}")
