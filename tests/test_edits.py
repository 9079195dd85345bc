"""The structural-edit registry: one registration adds a kind, model files replay it, unknown kinds are refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mdakit
from mdakit import edits
from mdakit.artifacts import CARD_FILE, ModelCard, load, save
from mdakit.data import BUILTIN
from mdakit.decoupling.gates import DecoupledNet
from mdakit.edits import edit_kinds, register_edit, replay_of
from mdakit.errors import MdakitError
from mdakit.zoo import build_model

INFO = BUILTIN["mnist"]


def _model(arch="lenet5"):
    torch.manual_seed(1)
    return build_model(arch, INFO.input_shape, INFO.num_classes, INFO.mean, INFO.std)


def _wider_head(model: torch.nn.Module, edit: dict) -> torch.nn.Module:
    """A structural edit of a test: the last layer rebuilt with ``edit["outputs"]`` logits."""
    old = model.net.classifier[5]
    model.net.classifier[5] = torch.nn.Linear(old.in_features, edit["outputs"])
    return model


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test are undone after it."""
    monkeypatch.setattr(edits, "_REPLAYS", dict(edits._REPLAYS))


@pytest.mark.parametrize("lazy", [False, True], ids=["function", "module:attr"])
def test_a_new_edit_kind_needs_one_registration(tmp_path, scratch_registry, lazy):
    register_edit("wider_head", f"{__name__}:_wider_head" if lazy else _wider_head)
    model = _wider_head(_model(), {"outputs": 12})
    card = ModelCard.for_dataset("lenet5", INFO, edits=[{"kind": "wider_head", "outputs": 12}])
    loaded = load(save(model, tmp_path / "m", card))
    assert loaded.net.classifier[5].out_features == 12
    x = torch.rand(2, *INFO.input_shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_unknown_and_conflicting_edit_kinds_are_refused(tmp_path, scratch_registry):
    saved = save(_model(), tmp_path / "m", ModelCard.for_dataset("lenet5", INFO))
    raw = json.loads((saved / CARD_FILE).read_text())
    raw["edits"] = [{"kind": "telepathy"}]
    (saved / CARD_FILE).write_text(json.dumps(raw))
    with pytest.raises(MdakitError, match="cannot rebuild models with structural edit 'telepathy'"):
        load(saved)
    with pytest.raises(MdakitError, match="already registered"):
        register_edit("keep_sets", _wider_head)
    with pytest.raises(MdakitError, match="module:attr"):
        register_edit("wider_head", "no_colon")


@pytest.mark.parametrize("kind", edit_kinds())
def test_every_registered_edit_kind_resolves_to_a_function(kind):
    replay = replay_of(kind)
    assert callable(replay) and replay_of(kind) is replay, "a lazy entry is imported once, then kept"


def test_bare_import_leaves_decoupling_out_but_loads_decoupled_files(tmp_path):
    model = DecoupledNet(_model(), INFO.input_shape).eval()
    card = ModelCard.for_dataset("lenet5", INFO, edits=[model.edit()])
    save(model, tmp_path / "d", card)
    script = ("import sys, mdakit; assert 'mdakit.decoupling' not in sys.modules; "
              "print(type(mdakit.load(sys.argv[1])).__name__)")
    src = Path(mdakit.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "d")], capture_output=True, text=True,
                          env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "DecoupledNet"
