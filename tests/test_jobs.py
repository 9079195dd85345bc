"""Attributing a run's classes in chunks: the same masks in memory, on disk and unchunked; what a
chunked run refuses; what keys a resumable run."""

from __future__ import annotations

import dataclasses

import pytest

from mdakit.attribution.base import available_methods, get_method
from mdakit.attribution.jobs import fingerprint
from mdakit.attribution.nad import NADSettings
from mdakit.attribution.run import AttributionRun
from mdakit.component_masks import MASKS_FILE, MASKS_JSON, LazyClassMasks
from mdakit.disassembly import compute_masks
from mdakit.distributed import World
from mdakit.errors import MdakitError
from mdakit.graph import trace
from mdakit.workspace import Workspace


@pytest.fixture(scope="module")
def lenet(tiny_lenet_dir, data_dir):
    return Workspace.open(tiny_lenet_dir, "mnist", data_dir=data_dir)


@pytest.mark.parametrize("method", available_methods())
def test_class_chunks_give_the_same_masks(lenet, method, tmp_path):
    whole, _, _ = compute_masks(lenet, [3, 0, 5, 1], method, samples=6)
    chunked, _, cost = compute_masks(lenet, [3, 0, 5, 1], method, samples=6, class_chunk=2)
    assert chunked.per_class == whole.per_class
    assert (chunked.settings, chunked.info) == (whole.settings, whole.info)
    assert cost["attribution"]["seconds"] > 0
    written, _, _ = compute_masks(lenet, [3, 0, 5, 1], method, samples=6, class_chunk=3, out=tmp_path / "m")
    assert isinstance(written.per_class, LazyClassMasks)
    saved = whole.save(tmp_path / "whole")
    for name in (MASKS_FILE, MASKS_JSON):
        assert (tmp_path / "m" / name).read_bytes() == (saved / name).read_bytes()


def test_chunked_runs_refuse_what_needs_all_classes_at_once(lenet, tmp_path):
    with pytest.raises(MdakitError, match="calibration"):
        compute_masks(lenet, [0, 1], calibrate=0.5, class_chunk=1)
    with pytest.raises(MdakitError, match="at least 1"):
        compute_masks(lenet, [0, 1], class_chunk=0)
    with pytest.raises(MdakitError, match="β 'auto' is chosen on the first class"):
        compute_masks(lenet, [0, 1], "nad", settings=NADSettings(beta="auto"), class_chunk=1)
    with pytest.raises(MdakitError, match="several processes need an output directory"):
        compute_masks(lenet, [0, 1], world=World(rank=0, size=2))


def test_fingerprint_names_everything_a_class_depends_on(lenet):
    method = get_method("nad")
    graph = trace(lenet.model, lenet.card.input_shape)
    run = AttributionRun(method, method.settings_for(None, seed=2), lenet.model, graph, lenet.train, [4, 1],
                         lenet.rows([4, 1]), samples=6, seed=2)
    keys = fingerprint(run, lenet.label)
    assert set(keys) == {"source", "weights", "train_images", "classes", "method", "samples", "seed", "settings"}
    assert (keys["method"], keys["classes"], keys["settings"]["seed"]) == ("nad", [4, 1], 2)
    other = dataclasses.replace(run, settings=dataclasses.replace(run.settings, beta=1.0))
    assert fingerprint(other, lenet.label)["settings"] != keys["settings"]
