"""Editing an fx graph: a call inserted right after a node, between it and its readers or beside them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.fx


def insert_after(graph: torch.fx.Graph, node: torch.fx.Node, target: str | Callable[..., Any],
                 args: tuple[Any, ...] | None = None, reroute: bool = True) -> torch.fx.Node:
    """Insert a call of ``target`` on ``args`` (default ``(node,)``) right after ``node``; return it.

    ``target`` is the qualified name of a submodule of the graph's module (a ``call_module``) or a
    function (a ``call_function``). With ``reroute`` every node that read ``node`` reads the new one
    instead, so the call sits between ``node`` and its readers; without it the call only reads
    ``node`` (a tap: pooled activations, a recording).

    >>> import torch
    >>> from torch import nn
    >>> gm = torch.fx.symbolic_trace(nn.Sequential(nn.ReLU(), nn.Flatten()))
    >>> relu = next(n for n in gm.graph.nodes if n.op == "call_module")
    >>> doubled = insert_after(gm.graph, relu, torch.mul, (relu, 2.0))
    >>> _ = gm.recompile()
    >>> gm(-torch.ones(1, 1)).tolist(), gm(torch.ones(1, 1)).tolist()
    ([[0.0]], [[2.0]])
    """
    args = (node,) if args is None else args
    with graph.inserting_after(node):
        new = graph.call_module(target, args) if isinstance(target, str) else graph.call_function(target, args)
    if reroute:
        node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    return new
