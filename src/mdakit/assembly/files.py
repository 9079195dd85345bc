"""Assembled-model directories: ``assembly.json`` and each part as a standard model file.

``assembly.json`` holds the layout, the rescaling and its fitted numbers, the meaning of every output
logit and the metrics; the parts are ``part-0/``, ``part-1/``, ... A padded assembly also stores the
merged network itself, with the rescaling folded into its last layer, as a standard model file at the
top of the directory (``mdakit.load`` reads it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mdakit.artifacts import ASSEMBLY_FILE, CARD_FILE, WEIGHTS_FILE, ModelCard, load_with_card, read_card, save
from mdakit.assembly.card import FORMAT, FORMAT_VERSION, AssemblyCard
from mdakit.assembly.models import AssembledModel, PaddedAssembly
from mdakit.assembly.ood import GATE_FILE, OodGate, gate_from_spec, gate_spec
from mdakit.errors import MdakitError, UserBuiltModuleError
from mdakit.files import write_directory
from mdakit.model_dir import is_assembled
from mdakit.padding import padded_widths


def recorded_structure(card: ModelCard) -> list[dict[str, Any]]:
    """The edit recording a user-built part's module, which a merged network of such parts starts from."""
    return card.edits[:1] if card.arch is None and card.rebuildable else []


def merged_card(model: PaddedAssembly, card: AssemblyCard) -> ModelCard:
    """The standard model card of a padded assembly's merged network."""
    first = card.part_cards[0]
    return ModelCard(arch=first.arch, input_shape=card.input_shape, num_classes=first.num_classes,
                     class_names=[f"{logit['dataset']}:{logit['name']}" for logit in card.logits],
                     logit_classes=list(range(len(card.logits))), mean=first.mean, std=first.std,
                     arch_kwargs=first.arch_kwargs,
                     edits=[*recorded_structure(first), padded_widths(model.net, card.input_shape)],
                     provenance={"assembled_from": card.sources, "layout": "padded", "rescale": card.rescale})


def save_assembled(model: AssembledModel | PaddedAssembly, path: str | Path, card: AssemblyCard,
                   force: bool = False) -> Path:
    """Write ``assembly.json`` and each part as ``part-<i>/`` into ``path``, atomically (all or nothing);
    a padded assembly's merged network goes at the top as a standard model file.

    >>> import tempfile
    >>> from torch import nn
    >>> cards = [ModelCard(None, [2], 3), ModelCard(None, [2], 1)]
    >>> out = save_assembled(AssembledModel([nn.Linear(2, 3), nn.Linear(2, 1)], [3, 1]),
    ...                      Path(tempfile.mkdtemp()) / "asm", AssemblyCard(cards, [None, None]))
    >>> sorted(p.name for p in out.iterdir())
    ['assembly.json', 'part-0', 'part-1']
    """
    padded = isinstance(model, PaddedAssembly)
    total = sum(card.sizes)
    scale = [1.0] * total if padded else model.scale.tolist()
    shift = [0.0] * total if padded else model.shift.tolist()
    raw = {**card.to_dict(), "scale": scale, "shift": shift, "rescaling_folded_into_last_layer": padded}
    gate = None if padded else model.gate
    if gate is not None:
        raw["gate"] = gate_spec(gate)

    def write(tmp: Path) -> None:
        for p, (part, part_card) in enumerate(zip(model.parts, card.part_cards, strict=True)):
            save(part, tmp / f"part-{p}", part_card)
        if padded:
            save(model.net, tmp / "merged", merged_card(model, card))
            for name in (CARD_FILE, WEIGHTS_FILE):
                (tmp / "merged" / name).replace(tmp / name)
            (tmp / "merged").rmdir()
        if gate is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in gate.state_dict().items()}, tmp / GATE_FILE)
        (tmp / ASSEMBLY_FILE).write_text(json.dumps(raw, indent=2) + "\n")

    write_directory(path, force, write)
    return Path(path)


def _read_assembly(path: Path) -> dict[str, Any]:
    if not is_assembled(path):
        raise MdakitError(f"{path} is not an assembled model (expected {ASSEMBLY_FILE} inside)")
    try:
        raw = json.loads((path / ASSEMBLY_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MdakitError(f"{path / ASSEMBLY_FILE} is not valid JSON (truncated or corrupt): {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise MdakitError(f"{path / ASSEMBLY_FILE} does not describe an assembled model")
    if raw.get("format_version", 0) > FORMAT_VERSION:
        raise MdakitError(f"assembly format {raw['format_version']} is newer than this mdakit reads "
                          f"({FORMAT_VERSION}); upgrade mdakit")
    return raw


def _refuse_user_built(path: Path, count: int) -> None:
    """Refuse, before loading anything, an assembly holding a part mdakit cannot rebuild by itself."""
    for p in range(count):
        part_card = read_card(path / f"part-{p}")[0]
        if not part_card.rebuildable:
            raise UserBuiltModuleError(path / f"part-{p}", "load each part with load_with_card(part_dir, "
                                       "into=<that module>) and join them again with assemble",
                                       why=part_card.provenance.get("not_recorded"))


def load_assembled(path: str | Path, device: torch.device | str = "cpu"
                   ) -> tuple[AssembledModel | PaddedAssembly, AssemblyCard]:
    """Rebuild an assembled model saved by :func:`save_assembled` (eval mode) with its card.

    Parts of user-built modules that their cards could not record are refused (mdakit cannot rebuild
    them without the module).

    >>> model, card = load_assembled("runs/mnist+fmnist")  # doctest: +SKIP
    """
    path = Path(path)
    raw = _read_assembly(path)
    try:
        _refuse_user_built(path, len(raw["parts"]))
        loaded = [load_with_card(path / f"part-{p}") for p in range(len(raw["parts"]))]
        card = AssemblyCard([c for _, c in loaded], [entry.get("source") for entry in raw["parts"]], raw["layout"],
                            raw["rescale"], raw.get("fit", {}), raw.get("metrics", {}))
        scale, shift, logits = raw["scale"], raw["shift"], raw["logits"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise MdakitError(f"{path / ASSEMBLY_FILE} is incomplete: {exc}") from exc
    if card.logits != logits or len(scale) != sum(card.sizes) or len(shift) != sum(card.sizes):
        raise MdakitError(f"the parts in {path} do not match the logits described in its {ASSEMBLY_FILE}")
    if card.layout == "padded":
        merged, _ = load_with_card(path, device=device)
        return PaddedAssembly(merged, [m for m, _ in loaded], card.sizes), card
    model = AssembledModel([m for m, _ in loaded], card.sizes)
    with torch.no_grad():
        model.scale.copy_(torch.tensor(scale))
        model.shift.copy_(torch.tensor(shift))
    if "gate" in raw:
        model.attach_gate(_read_gate(path, raw["gate"]), card.input_shape)
    return model.to(device).eval(), card


def _read_gate(path: Path, spec: dict) -> OodGate:
    """The ``ood`` gate saved beside the parts (tensors in safetensors, structure in ``assembly.json``)."""
    try:
        tensors = load_file(path / GATE_FILE)
    except (OSError, SafetensorError) as exc:
        raise MdakitError(f"{path / GATE_FILE} is missing or not a readable safetensors file: {exc}") from exc
    return gate_from_spec(spec, tensors)
