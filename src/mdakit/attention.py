"""Attention modules mdakit can cut by heads, and the conversion of library attention into them.

:class:`SelfAttention` computes multi-head self-attention with its query, key and value rows in one
``qkv`` Linear (q, k, v, each head after head) and its output in ``proj``, as timm's ``Attention`` does;
the graph takes heads out of it (:mod:`mdakit.graph.ops.attention`). ``nn.MultiheadAttention`` keeps its
input projection in a bare parameter and calls its output layer as a function, so neither a hook nor the
surgery could reach them: :func:`convert_attention` replaces it, exactly, by a :class:`SelfAttention`
holding the same weights (the disassembly does this and records it in the part's card, kind
``"attention"``, so loading the part replays it). :class:`NoHeads` is what an attention that lost every
head becomes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mdakit.edits import register_edit
from mdakit.errors import MdakitError

EDIT_KIND = "attention"


class SelfAttention(nn.Module):
    """Multi-head self-attention over B×tokens×channels (or tokens×B×channels, ``batch_first=False``), called
    as ``nn.MultiheadAttention`` is and returning ``(output, None)``: no masks, no attention weights.

    >>> attn = SelfAttention(8, heads=2, head_dim=4)
    >>> out, weights = attn(torch.zeros(1, 3, 8), None, None, need_weights=False)
    >>> tuple(out.shape), weights
    ((1, 3, 8), None)
    """

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool = True, dim_out: int | None = None,
                 dropout: float = 0.0, batch_first: bool = True):
        super().__init__()
        self.num_heads, self.head_dim, self.dropout, self.batch_first = heads, head_dim, dropout, batch_first
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=bias)
        self.proj = nn.Linear(heads * head_dim, dim_out or dim, bias=bias)

    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention) -> SelfAttention:
        """The same computation as ``mha`` on self-attention without masks, with ``mha``'s weights."""
        why = unconvertible(mha)
        if why is not None:
            raise MdakitError(f"cannot convert this MultiheadAttention: {why}")
        new = cls(mha.embed_dim, mha.num_heads, mha.head_dim, mha.in_proj_bias is not None, mha.out_proj.out_features,
                  mha.dropout, mha.batch_first).to(mha.in_proj_weight)
        with torch.no_grad():
            new.qkv.weight.copy_(mha.in_proj_weight)
            new.proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                new.qkv.bias.copy_(mha.in_proj_bias)
                new.proj.bias.copy_(mha.out_proj.bias)
        return new.train(mha.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if any(t is not None and t is not query for t in (key, value)) or key_padding_mask is not None \
                or attn_mask is not None or is_causal:
            raise MdakitError("SelfAttention computes self-attention without masks only")
        x = query if self.batch_first else query.transpose(0, 1)
        batch, tokens = x.shape[0], x.shape[1]
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = self.proj(out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


class NoHeads(nn.Module):
    """What an attention that lost every head computes: its output layer's bias at every token (zeros without
    one), so the block keeps its residual path only. Called as the attention was; ``returns_tuple``: as
    ``(output, None)``, like :class:`SelfAttention`.

    >>> NoHeads(torch.tensor([1.0, 2.0]), 2)(torch.zeros(1, 3, 4)).shape
    torch.Size([1, 3, 2])
    """

    def __init__(self, bias: torch.Tensor | None, out_features: int, returns_tuple: bool = False):
        super().__init__()
        self.out_features, self.returns_tuple = out_features, returns_tuple
        self.register_buffer("bias", torch.zeros(out_features) if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, None]:
        out = x[..., :1].mul(0.0).add(self.bias)
        return (out, None) if self.returns_tuple else out


def unconvertible(mha: nn.MultiheadAttention) -> str | None:
    """Why ``mha`` cannot become a :class:`SelfAttention`, or None."""
    if not mha._qkv_same_embed_dim:
        return "its keys and values have their own widths (kdim/vdim)"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "it adds bias or zero keys and values"
    return None


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def convert_attention(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """``model`` with every convertible ``nn.MultiheadAttention`` replaced by an equal :class:`SelfAttention`
    (a copy; ``model`` itself when there is none), and their paths.

    >>> net = nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True))
    >>> converted, paths = convert_attention(net)
    >>> paths, type(converted[0]).__name__
    (['0'], 'SelfAttention')
    """
    paths = [name for name, m in model.named_modules()
             if type(m) is nn.MultiheadAttention and unconvertible(m) is None]
    if not paths:
        return model, []
    model = copy.deepcopy(model)
    for path in paths:
        _set(model, path, SelfAttention.from_multihead(model.get_submodule(path)))
    return model, paths


def replay_attention(model: nn.Module, edit: Mapping[str, Any]) -> nn.Module:
    """Replay a card's ``attention`` edit: convert the named ``nn.MultiheadAttention`` modules, in place."""
    for path in edit["modules"]:
        module = model.get_submodule(path)
        if type(module) is not nn.MultiheadAttention:
            raise MdakitError(f"the card converts {path!r}, which is a {type(module).__name__}, not a "
                              "MultiheadAttention")
        _set(model, path, SelfAttention.from_multihead(module))
    return model


register_edit(EDIT_KIND, replay_attention)
