"""The curated top-level API: what `import mdakit` offers and what it leaves unimported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

import mdakit
from mdakit.examples import toy_problem

VERBS = ["disassemble", "masks", "assemble", "compress", "decouple", "export"]


def test_import_leaves_the_features_out():
    code = ("import sys, json, mdakit; "
            "print(json.dumps([m for m in sys.modules if m.startswith(('mdakit.decoupling', 'mdakit.report', "
            "'mdakit.analysis'))]))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                       text=True).stdout)
    assert loaded == []


@pytest.mark.parametrize("module", ["mdakit", "mdakit.cli"])
def test_import_loads_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules, 'torchvision' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert loaded.split() == ["False", "False"]


def test_every_public_name_resolves():
    assert set(mdakit.__all__) <= set(dir(mdakit))
    assert all(getattr(mdakit, name) is not None for name in mdakit.__all__)
    assert mdakit.load is mdakit.api.load and mdakit.__version__
    with pytest.raises(AttributeError, match="no_such_name"):
        mdakit.no_such_name  # noqa: B018


def test_functions_named_like_their_modules_stay_functions():
    import mdakit.evaluate
    import mdakit.train  # the import system sets each submodule on its package

    assert type(sys.modules["mdakit.train"]) is type(sys)
    assert (mdakit.train.__module__, mdakit.evaluate.__module__) == ("mdakit.train", "mdakit.evaluate")
    assert callable(mdakit.train) and callable(mdakit.evaluate)


@pytest.mark.parametrize("verb", VERBS)
def test_verbs_are_functions_with_examples(verb):
    function = getattr(mdakit, verb)
    assert callable(function) and not isinstance(function, type(mdakit))
    assert ">>> " in function.__doc__


@pytest.fixture(scope="module")
def toy():
    return toy_problem()


def test_disassemble_takes_a_dataloader_like_a_dataset(toy):
    model, data = toy
    from_dataset = mdakit.disassemble(model, data, [1, 2])
    from_loader = mdakit.disassemble(model, DataLoader(data, batch_size=7), [1, 2])
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(from_dataset.model(x), from_loader.model(x))


def test_masks_of_chosen_classes_match_disassembly(toy):
    model, data = toy
    masks = mdakit.masks(model, data, [3, 0])
    part = mdakit.disassemble(model, data, [3, 0])
    assert masks.classes == [3, 0]
    assert all(masks.per_class[c] == part.masks.per_class[c] for c in (3, 0))


def test_export_needs_an_input_shape_for_a_plain_module(toy, tmp_path):
    model, _ = toy
    with pytest.raises(mdakit.MdakitError, match="input shape"):
        mdakit.export(model, tmp_path / "m.onnx")
    report = mdakit.export(model, tmp_path / "m.onnx", input_shape=[1, 8, 8])
    assert report["max_abs_diff"] < 1e-4 and (tmp_path / "m.onnx").is_file()
