"""The ``ood`` rescaling: each part scores how far an input is from its own images; the assembly weighs the
parts' class probabilities by it. Real MNIST and Fashion-MNIST images and models throughout."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mdakit
from mdakit.artifacts import load_with_card
from mdakit.assembly import assemble, load_assembled, save_assembled
from mdakit.assembly.ood import SCORES, Mahalanobis
from mdakit.cli import run
from mdakit.data import load_dataset
from mdakit.disassembly import disassemble
from mdakit.errors import MdakitError
from mdakit.exporting import check_export, export
from tests.test_assembly import _tiny_lenet


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def originals(data_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ood-originals")
    return {name: _tiny_lenet(name, root / name, data_dir) for name in ("mnist", "fashion-mnist")}


@pytest.fixture(scope="module")
def part_dirs(originals, data_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ood-parts")
    cuts = {"mnist-0-2": ("mnist", "0-2"), "fashion-0-2": ("fashion-mnist", "0-2"), "mnist-3-5": ("mnist", "3-5"),
            "fashion-7": ("fashion-mnist", "7")}
    return {key: disassemble(originals[name], name, classes, samples=20, data_dir=data_dir).save(root / key)
            for key, (name, classes) in cuts.items()}


@pytest.fixture(scope="module")
def images(data_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """Real test images of classes 0-2 of both datasets, with the part (0: MNIST, 1: Fashion) they belong to."""
    batch, owner = [], []
    for p, name in enumerate(("mnist", "fashion-mnist")):
        test, _ = load_dataset(name, "test", data_dir)
        picked = [i for i in range(400) if test.targets[i] < 3][:24]
        batch += [test[i][0] for i in picked]
        owner += [p] * len(picked)
    return torch.stack(batch), torch.tensor(owner)


def _layer_inputs_and_outputs(part: torch.nn.Module, layers: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    """The features the gate should read, taken with forward hooks (independently of the fx graph): the
    output of every layer but the last, then the last layer's input."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [part.get_submodule(name).register_forward_hook(
        lambda m, args, out, name=name: seen.update({name: args[0] if name == layers[-1] else out}))
        for name in layers]
    with torch.no_grad():
        part(x)
    for hook in hooks:
        hook.remove()
    return [seen[name].flatten(2).mean(2) if seen[name].dim() > 2 else seen[name] for name in layers]


def test_the_gated_output_is_each_parts_probabilities_weighed_by_its_score(part_dirs, images, data_dir):
    dirs = [part_dirs["mnist-0-2"], part_dirs["fashion-0-2"]]
    model, card = assemble(dirs, rescale="ood", samples=10, data_dir=data_dir)
    x, _ = images
    parts = [load_with_card(d)[0] for d in dirs]
    distances, within = [], []
    for part, score, record in zip(parts, model.gate.scores, card.fit["parts"], strict=True):
        features = _layer_inputs_and_outputs(part, record["layers"], x)
        per_layer = []
        for layer in score.layers:
            diff = (features[layer.layer][:, None, :] - layer.means[None]) @ layer.whiten
            per_layer.append((diff.square().sum(-1).min(1).values - layer.loc) / layer.scale)
        distances.append((torch.stack(per_layer, 1).mean(1) - score.loc) / score.scale)
        with torch.no_grad():
            within.append(F.log_softmax(part(x), 1))
    choice = F.log_softmax(-torch.stack(distances, 1), 1)
    expected = torch.cat([w + choice[:, i:i + 1] for i, w in enumerate(within)], 1)
    with torch.no_grad():
        out = model(x)
    assert (out - expected).abs().max() <= 1e-4
    assert torch.allclose(out.exp().sum(1), torch.ones(len(x)), atol=1e-5)
    assert card.fit["score"] == "mahalanobis" and len(card.fit["parts"]) == 2


def test_each_parts_score_is_fitted_on_its_own_images_alone(part_dirs, data_dir):
    """Swapping the other part for a part of another dataset leaves a part's score as it was."""
    first, _ = assemble([part_dirs["mnist-0-2"], part_dirs["fashion-0-2"]], rescale="ood", samples=10,
                        data_dir=data_dir, latency=False)
    second, _ = assemble([part_dirs["mnist-0-2"], part_dirs["fashion-7"]], rescale="ood", samples=10,
                         data_dir=data_dir, latency=False)
    a, b = first.gate.scores[0].state_dict(), second.gate.scores[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("rescale", ["ood", "ood-penultimate", "ood-energy", "ood-max-logit"])
def test_the_gate_picks_the_part_an_image_belongs_to(part_dirs, images, data_dir, rescale):
    model, card = assemble([part_dirs["mnist-0-2"], part_dirs["fashion-0-2"]], rescale=rescale, samples=10,
                           data_dir=data_dir)
    x, owner = images
    with torch.no_grad():
        picked = (model(x).argmax(1) >= card.sizes[0]).long()
    # tiny two-epoch models; the penultimate-only and logit-only scores are weaker (docs/methods.md)
    assert (picked == owner).float().mean() >= (0.9 if rescale == "ood" else 0.6)


def test_saved_gated_assembly_loads_and_exports_exactly(part_dirs, images, data_dir, tmp_path):
    model, card = assemble([part_dirs["mnist-0-2"], part_dirs["fashion-0-2"]], rescale="ood", samples=10,
                           data_dir=data_dir)
    save_assembled(model, tmp_path / "asm", card)
    assert (tmp_path / "asm" / "gate.safetensors").is_file()
    x, _ = images
    with torch.no_grad():
        expected = model(x)
        loaded, loaded_card = load_assembled(tmp_path / "asm")
        assert (loaded(x) - expected).abs().max() <= 1e-5 and loaded_card.rescale == "ood"
        assert (mdakit.load(tmp_path / "asm")(x) - expected).abs().max() <= 1e-5
    report = export(tmp_path / "asm", tmp_path / "asm.onnx")
    assert report["max_abs_diff"] <= 1e-4 and report["rescale"] == "ood"
    assert check_export(tmp_path / "asm.onnx", loaded, x, "onnx") <= 1e-4


def test_a_damaged_gate_file_is_refused(part_dirs, data_dir, tmp_path):
    model, card = assemble([part_dirs["mnist-0-2"], part_dirs["fashion-7"]], rescale="ood-penultimate", samples=10,
                           data_dir=data_dir, latency=False)
    save_assembled(model, tmp_path / "asm", card)
    (tmp_path / "asm" / "gate.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MdakitError, match="gate.safetensors is missing or not a readable safetensors file"):
        load_assembled(tmp_path / "asm")


def test_three_parts_and_a_whole_model_with_a_part(part_dirs, originals, images, data_dir):
    """More than two parts, and adding a part's classes to a whole model (all its classes)."""
    three, card = assemble([part_dirs["mnist-0-2"], part_dirs["fashion-0-2"], part_dirs["mnist-3-5"]],
                           rescale="ood", samples=10, data_dir=data_dir, latency=False)
    x, owner = images
    with torch.no_grad():
        out = three(x)
    assert out.shape == (len(x), 9) and card.sizes == [3, 3, 3]
    whole, whole_card = assemble([originals["mnist"], part_dirs["fashion-0-2"]], rescale="ood", samples=10,
                                 data_dir=data_dir, latency=False)
    original = load_with_card(originals["mnist"])[0]
    with torch.no_grad():
        out, own = whole(x), original(x)
    assert whole_card.sizes == [10, 3]
    digits = owner == 0
    # where the gate keeps a digit with the whole model, the whole model's own decision stands
    kept = digits & (out.argmax(1) < 10)
    assert kept.float().sum() >= 0.9 * digits.float().sum()
    assert torch.equal(out[kept].argmax(1), own[kept].argmax(1))


def test_three_parts_both_layouts_agree(part_dirs, images, data_dir):
    dirs = [part_dirs["mnist-0-2"], part_dirs["fashion-0-2"], part_dirs["mnist-3-5"]]
    parallel, _ = assemble(dirs, rescale="calibrated", samples=10, data_dir=data_dir, latency=False)
    padded, _ = assemble(dirs, layout="padded", rescale="calibrated", samples=10, data_dir=data_dir, latency=False)
    x, _ = images
    with torch.no_grad():
        assert (parallel(x) - padded(x)).abs().max() <= 1e-4


def test_the_padded_layout_refuses_a_gate(part_dirs, tmp_path, capsys):
    with pytest.raises(MdakitError, match="use the parallel layout"):
        assemble([part_dirs["mnist-0-2"], part_dirs["fashion-0-2"]], layout="padded", rescale="ood")
    code = run(["assemble", str(part_dirs["mnist-0-2"]), str(part_dirs["fashion-0-2"]), "--out",
                str(tmp_path / "asm"), "--layout", "padded", "--rescale", "ood"])
    assert code == 2 and not (tmp_path / "asm").exists()
    assert "use the parallel layout" in capsys.readouterr().err


def test_cli_assembles_with_the_ood_rescaling(part_dirs, tmp_path, capsys, data_dir):
    code = run(["assemble", str(part_dirs["mnist-0-2"]), str(part_dirs["fashion-0-2"]), "--out",
                str(tmp_path / "asm"), "--rescale", "ood", "--samples", "10", "--no-latency", "--data-dir",
                str(data_dir)])
    assert code == 0 and (tmp_path / "asm" / "gate.safetensors").is_file()
    assert "rescale ood" in capsys.readouterr().out


def test_mahalanobis_score_is_the_distance_to_the_nearest_class_mean():
    features = torch.tensor([[0.0, 0.0], [0.2, 0.0], [4.0, 4.0], [4.2, 4.0], [0.0, 0.2], [4.0, 4.2]])
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    score = SCORES["mahalanobis-penultimate"]([features], labels)
    assert isinstance(score, Mahalanobis)
    near, far = score.raw(None, [torch.tensor([[4.05, 4.05]])]), score.raw(None, [torch.tensor([[2.0, 2.0]])])
    assert float(near) < float(far)
