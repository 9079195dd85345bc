"""The channel handlers of every op mdakit follows, one module per kind; importing it registers them."""

from mdakit.graph.ops import (
    attention,
    binary,
    concat,
    layers,
    metadata,
    passthrough,
    permute,
    reduce,
    reshape,
    shuffle,
    split,
)

__all__ = ["attention", "binary", "concat", "layers", "metadata", "passthrough", "permute", "reduce", "reshape",
           "shuffle", "split"]
