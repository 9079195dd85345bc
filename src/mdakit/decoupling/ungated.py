"""A decoupled model without its gates: the original architecture with the fine-tuned weights.

Per-class calculation paths become per-class masks over this *ungated* model, so the disassembly,
assembly and similarity tools (which work on standard model files) accept them.
"""

from __future__ import annotations

import copy

from torch import nn

from mdakit.artifacts import ModelCard
from mdakit.decoupling.gates import GATES, DecoupledNet
from mdakit.errors import MdakitError


def ungated(net: DecoupledNet, card: ModelCard) -> tuple[nn.Module, ModelCard]:
    """The fine-tuned body with every controlling module and W_cla head removed, and its card.

    Every filter runs for every input (no gating): this is the static model the path masks refer to.

    >>> import torch
    >>> from mdakit.data import BUILTIN
    >>> from mdakit.zoo import build_model
    >>> card = ModelCard.for_dataset("lenet5", BUILTIN["mnist"])
    >>> net = DecoupledNet(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    >>> card.edits = [net.edit()]
    >>> plain, plain_card = ungated(net, card)
    >>> plain_card.edits, type(plain).__name__
    ([], 'Sequential')
    """
    if not card.edits or card.edits[-1].get("kind") != "decoupled":
        raise MdakitError("the model card's last structural edit is not a decoupling: not a decoupled model")
    plain_card = ModelCard.from_dict(card.to_dict())
    plain_card.edits = [dict(edit) for edit in card.edits[:-1]]
    plain_card.provenance = {**card.provenance, "ungated_from_decoupled": True}
    plain = plain_card.build()
    state = {k: v for k, v in net.body.state_dict().items() if not k.startswith(f"{GATES}.")}
    plain.load_state_dict(copy.deepcopy(state), strict=True)
    return plain.eval(), plain_card
