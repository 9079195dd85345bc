"""Many classes: streamed mask files, lazy loading, rank-independent sample selection."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mdakit.attribution.samples import select_samples
from mdakit.component_masks import MASKS_FILE, MASKS_JSON, ComponentMasks, LayerMask, LazyClassMasks
from mdakit.errors import MdakitError
from mdakit.workspace import Workspace


def _random_masks(classes: int = 5, seed: int = 0) -> ComponentMasks:
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv": (6, 3), "fc": (4, 13)}
    per_class = {}
    for c in range(classes):
        per_class[c] = {}
        for name, (k, n) in shapes.items():
            kernels = torch.rand(k, n, generator=g) > 0.5
            per_class[c][name] = LayerMask(kernels, kernels.any(0), kernels.any(1))
    return ComponentMasks(per_class, "contribution", {"alpha_conv": 0.3}, {0: "zero"}, {"rows": {"0": 0}})


def test_streamed_file_is_standard_safetensors_and_loads_lazily(tmp_path):
    masks = _random_masks()
    path = masks.save(tmp_path / "m")
    tensors = load_file(str(path / MASKS_FILE))
    assert len(tensors) == 5 * 2 * 3
    assert torch.equal(tensors["3/fc/packed"], masks.per_class[3]["fc"].packed)
    eager, lazy = ComponentMasks.load(path), ComponentMasks.load(path, lazy=True)
    assert isinstance(lazy.per_class, LazyClassMasks) and not isinstance(eager.per_class, LazyClassMasks)
    assert dict(eager.per_class) == dict(lazy.per_class) == masks.per_class
    assert lazy.classes == masks.classes and lazy.layer_names == ["conv", "fc"]
    assert lazy.union() == masks.union() and lazy.jaccard(0, 4) == masks.jaccard(0, 4)
    assert lazy.subset([1, 2]).per_class == {c: masks.per_class[c] for c in (1, 2)}
    again = lazy.save(tmp_path / "again")  # saving lazily loaded masks streams them back out unchanged
    for name in (MASKS_FILE, MASKS_JSON):
        assert (again / name).read_bytes() == (path / name).read_bytes()


def test_files_written_by_save_file_still_load(tmp_path):
    masks = _random_masks(3)
    path = masks.save(tmp_path / "m")
    tensors = load_file(str(path / MASKS_FILE))
    save_file(tensors, str(path / MASKS_FILE))  # the layout of earlier versions: sorted by dtype and name
    assert dict(ComponentMasks.load(path, lazy=True).per_class) == masks.per_class


def test_corrupt_or_incomplete_files_raise(tmp_path):
    path = _random_masks(2).save(tmp_path / "m")
    data = (path / MASKS_FILE).read_bytes()
    (path / MASKS_FILE).write_bytes(data[:20])
    with pytest.raises(MdakitError, match="corrupt|not a safetensors"):
        ComponentMasks.load(path, lazy=True)
    meta = json.loads((path / MASKS_JSON).read_text())
    (path / MASKS_FILE).write_bytes(data)
    meta["classes"].append(7)
    (path / MASKS_JSON).write_text(json.dumps(meta))
    with pytest.raises(MdakitError, match="lacks tensor"):
        ComponentMasks.load(path, lazy=True)


def test_layer_shape_mismatch_is_refused(tmp_path):
    masks = _random_masks(2)
    masks.per_class[1]["fc"] = LayerMask(torch.ones(2, 2, dtype=torch.bool), torch.ones(2, dtype=torch.bool),
                                         torch.ones(2, dtype=torch.bool))
    with pytest.raises(MdakitError, match="class 1, layer fc"):
        masks.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def lenet(tiny_lenet_dir, data_dir):
    return Workspace.open(tiny_lenet_dir, "mnist", data_dir=data_dir)


def test_selection_of_some_classes_matches_selecting_all(lenet):
    model, train = lenet.model, lenet.train
    full = select_samples(model, train, [4, 1, 7], [4, 1, 7], n=5, seed=3)
    part = select_samples(model, train, [4, 1, 7], [4, 1, 7], n=5, seed=3, only={7})
    assert list(part) == [7] and torch.equal(part[7], full[7])
