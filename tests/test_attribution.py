"""Every registered attribution method behind the one interface; registering a new one."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pytest
import torch

import mdakit.attribution.base as base
from mdakit.attribution.base import AttributionMethod, available_methods, get_method, register_method
from mdakit.attribution.run import AttributionRun
from mdakit.component_masks import ComponentMasks, LayerMask
from mdakit.data import ClassSubset
from mdakit.disassembly import compute_masks, disassemble, extract
from mdakit.errors import MdakitError
from mdakit.graph import ChannelGraph, trace
from mdakit.surgery import MaskedModel
from mdakit.workspace import Workspace

CLASSES = [7, 2]
SUMS_METHODS = [name for name in available_methods() if get_method(name).exposes_sums]
CLI_DEFAULTS = {"alpha_conv": 0.3, "beta_conv": 0.2, "alpha_linear": 0.4, "beta_linear": 0.3, "layers": None,
                "beta": None, "nad_loss": "code", "nad_linear": False}


@pytest.fixture(scope="module")
def lenet(tiny_lenet_dir, data_dir):
    return Workspace.open(tiny_lenet_dir, "mnist", data_dir=data_dir)


@pytest.fixture(scope="module")
def test_images(lenet):
    subset = ClassSubset(lenet.test, CLASSES, remap=False)
    return torch.stack([subset[i][0] for i in range(48)])


@pytest.mark.parametrize("name", available_methods())
def test_every_method_gives_masks_that_extract_to_the_masked_original(name, lenet, test_images):
    masks, graph, cost = compute_masks(lenet, CLASSES, name, samples=8)
    assert masks.method == name and masks.classes == CLASSES and list(cost) == ["trace", "sample_selection",
                                                                              "attribution"]
    for c in CLASSES:
        assert list(masks.per_class[c]) == [layer.name for layer in graph.layers]
        for layer in graph.layers:
            mask = masks.per_class[c][layer.name]
            assert mask.kernel_shape == (layer.out_size, layer.in_size)
            assert (mask.inputs.shape, mask.outputs.shape) == ((layer.in_size,), (layer.out_size,))
        assert torch.equal(masks.per_class[c][graph.output_layer.name].outputs,
                           torch.nn.functional.one_hot(torch.tensor(lenet.rows([c])[c]), 10).bool())
    part, keep, _ = extract(lenet, graph, masks, CLASSES)
    with torch.no_grad():
        assert (part(test_images) - MaskedModel(graph, keep).eval()(test_images)).abs().max() <= 1e-4


@pytest.mark.parametrize("name", available_methods())
def test_settings_from_the_command_line_options_are_accepted(name):
    method = get_method(name)
    settings = method.settings_from_options(CLI_DEFAULTS)
    assert method.settings_for(settings).to_dict() == settings.to_dict()
    record = method.settings_type().to_dict()
    assert method.settings_from_record({**record, "samples": 50}).to_dict() == record


@pytest.mark.parametrize("name", available_methods())
def test_settings_of_another_method_are_refused(name):
    method = get_method(name)
    for other in available_methods():
        settings = get_method(other).default_settings()
        if not isinstance(settings, (method.settings_type, *method.accepts)):
            with pytest.raises(MdakitError, match=f"settings were given for method '{name}'"):
                method.settings_for(settings)


@pytest.mark.parametrize("name", SUMS_METHODS)
def test_masks_from_kept_sums_equal_the_method_s_masks(name, lenet):
    method = get_method(name)
    graph = trace(lenet.model, lenet.card.input_shape)
    run = AttributionRun(method, method.settings_for(None), lenet.model, graph, lenet.train, CLASSES,
                         lenet.rows(CLASSES), samples=8)
    chosen, sums = run.sums()
    direct = method.masks(graph, lenet.train, chosen, run.rows, run.settings)
    assert method.masks_from_sums(graph, sums, run.rows, run.settings).per_class == direct.per_class
    assert method.masks_from_sums(graph, sums, run.rows, method.relaxed(run.settings, 1.0)).per_class == \
        direct.per_class


def test_unknown_method_lists_the_registered_ones(lenet):
    with pytest.raises(MdakitError, match="unknown method 'x'; available: contribution, gradient, nad"):
        compute_masks(lenet, [0], "x")


@dataclass
class NoSettings:
    def validate(self) -> None:
        pass

    def to_dict(self) -> dict:
        return asdict(self)


def _whole_path(graph: ChannelGraph, row: int) -> dict[str, LayerMask]:
    """Every channel and kernel of every layer, and only logit ``row`` of the last one."""
    masks = {}
    for layer in graph.layers:
        outputs = torch.ones(layer.out_size, dtype=torch.bool)
        if layer is graph.output_layer:
            outputs = torch.nn.functional.one_hot(torch.tensor(row), layer.out_size).bool()
        inputs = torch.ones(layer.in_size, dtype=torch.bool)
        masks[layer.name] = LayerMask(outputs[:, None] & inputs[None, :], inputs, outputs)
    return masks


@pytest.fixture
def registry(monkeypatch):
    """The registry, restored after the test."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    return monkeypatch


def test_a_registered_stub_runs_through_compute_masks_and_disassemble(registry, lenet, tiny_lenet_dir, data_dir):
    @register_method
    class KeepEverything(AttributionMethod):
        name = "everything"
        settings_type = NoSettings

        def masks(self, graph, dataset, samples, rows, settings, device="cpu", show_progress=False):
            return ComponentMasks({c: _whole_path(graph, rows[c]) for c in samples}, self.name, settings.to_dict())

    assert available_methods() == ["contribution", "everything", "gradient", "nad"]
    masks, _, _ = compute_masks(lenet, CLASSES, "everything", samples=4)
    assert masks.method == "everything" and masks.settings == {"samples": 4, "seed": 0, "calibration": None,
                                                               "thresholds": "the paper's thresholds"}
    with pytest.raises(MdakitError, match="only available for contribution attribution"):
        compute_masks(lenet, CLASSES, "everything", calibrate=1.0)
    with pytest.raises(MdakitError, match="already registered"):
        register_method(KeepEverything)
    part = disassemble(tiny_lenet_dir, "mnist", CLASSES, "everything", samples=4, data_dir=data_dir)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(part.model(x), lenet.model(x)[:, CLASSES], atol=1e-5)
    assert part.card.provenance["method"] == "everything"
    registry.undo()
    assert "everything" not in available_methods()
