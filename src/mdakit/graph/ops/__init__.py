"""The channel handlers of every op mdakit follows, one module per kind; importing it registers them."""

from mdakit.graph.ops import binary, concat, layers, metadata, passthrough, permute, reduce, reshape, shuffle, split

__all__ = ["binary", "concat", "layers", "metadata", "passthrough", "permute", "reduce", "reshape", "shuffle", "split"]
