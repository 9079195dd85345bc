"""Assembly: parallel layout, rescaling fitted on training data only, evaluation, files, CLI.

Real MNIST and Fashion-MNIST images and models throughout."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import mdakit.assembly as assembly
import mdakit.assembly.parts as assembly_parts
from mdakit.artifacts import ModelCard, load_with_card, save
from mdakit.assembly import AssembledModel, AssemblyCard, assemble, evaluate_assembled, load_assembled, save_assembled
from mdakit.cli import run
from mdakit.data import ClassSubset, ImageTensorDataset, load_dataset
from mdakit.disassembly import disassemble
from mdakit.errors import MdakitError
from mdakit.metrics import count_macs, model_size
from mdakit.train import TrainConfig, train
from mdakit.zoo import build_model

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on 2 cores shared with a background job, two threads make LeNet work ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_lenet(name: str, out: Path, data_dir: Path) -> Path:
    """A LeNet-5 trained for two epochs on 3,000 real images of ``name`` (as conftest's tiny_lenet_dir)."""
    train_data, info = load_dataset(name, "train", data_dir)
    torch.manual_seed(0)
    model = build_model("lenet5", info.input_shape, info.num_classes, info.mean, info.std)
    train(model, train_data, TrainConfig(epochs=2, train_subset=3000, batch_size=32, lr=0.05), show_progress=False)
    return save(model, out, ModelCard.for_dataset("lenet5", info))


@pytest.fixture(scope="module")
def part_dirs(data_dir, tmp_path_factory) -> list[Path]:
    """MNIST 0-2 and Fashion-MNIST 0-2 parts, saved as model files (the paper's '0-2 + 0-2' case).

    The MNIST model is trained here rather than taken from the session fixture ``tiny_lenet_dir`` so that
    its training runs under this module's one-thread setting.
    """
    root = tmp_path_factory.mktemp("parts")
    parts = []
    for name, short in (("mnist", "mnist"), ("fashion-mnist", "fmnist")):
        original = _tiny_lenet(name, root / f"lenet5-{short}", data_dir)
        parts.append(disassemble(original, name, "0-2", samples=20, data_dir=data_dir).save(root / f"{short}-0-2"))
    return parts


@pytest.fixture(scope="module")
def images(data_dir) -> torch.Tensor:
    """Real test images of both datasets."""
    batch = []
    for name in ("mnist", "fashion-mnist"):
        test, _ = load_dataset(name, "test", data_dir)
        batch += [test[i][0] for i in range(16)]
    return torch.stack(batch)


def _parts_logits(part_dirs, x):
    with torch.no_grad():
        return torch.cat([load_with_card(d)[0](x) for d in part_dirs], dim=1)


def test_parallel_output_is_parts_concatenated_and_macs_add_up(part_dirs, images):
    model, card = assemble(part_dirs)
    with torch.no_grad():
        out = model(images)
    assert out.shape == (len(images), 6)
    assert (out - _parts_logits(part_dirs, images)).abs().max() <= 1e-5
    parts = [load_with_card(d)[0] for d in part_dirs]
    assert count_macs(model, SHAPE) == sum(count_macs(p, SHAPE) for p in parts) > 0
    assert [(e["part"], e["dataset"], e["label"]) for e in card.logits] == (
        [(0, "mnist", c) for c in range(3)] + [(1, "fashion-mnist", c) for c in range(3)])
    assert card.logits[3]["name"] == "T-shirt/top" and card.fit == {}


def _own_class_means(part_dirs, fit, data_dir):
    """e_c by hand: mean of logit c of the part on the training images recorded for class c."""
    means = []
    for d, chosen in zip(part_dirs, fit["samples"], strict=True):
        part, card = load_with_card(d)
        train_data, _ = load_dataset(card.dataset, "train", data_dir)
        for row, c in enumerate(card.logit_classes):
            idx = chosen[str(c)]
            assert all(train_data[i][1] == c for i in idx)
            with torch.no_grad():
                means.append(part(torch.stack([train_data[i][0] for i in idx]))[:, row].double().mean())
    return torch.stack(means)


def test_paper_rescaling_equalises_mean_own_class_logits(part_dirs, images, data_dir):
    model, card = assemble(part_dirs, rescale="paper", samples=20, data_dir=data_dir)
    fit = card.fit
    assert fit["split"] == "train" and all(len(v) == 20 for s in fit["samples"] for v in s.values())
    e_c = _own_class_means(part_dirs, fit, data_dir)
    assert (e_c > 0).all() and fit["warnings"] == []
    e = e_c.mean()
    assert fit["e"] == pytest.approx(float(e), rel=1e-6)
    torch.testing.assert_close(model.scale.double(), e / e_c, rtol=1e-5, atol=0)
    # after rescaling every class's mean own-class logit is e
    torch.testing.assert_close(e_c * model.scale.double(), torch.full_like(e_c, float(e)), rtol=1e-5, atol=0)
    assert model.shift.abs().max() == 0
    with torch.no_grad():
        out = model(images)
    assert (out - _parts_logits(part_dirs, images) * model.scale).abs().max() <= 1e-5


@pytest.mark.parametrize("rescale", ["calibrated", "calibrated-part"])
def test_calibrated_fit_is_deterministic_and_uses_training_data_only(part_dirs, images, data_dir, monkeypatch,
                                                                     rescale):
    splits = []

    def recording_load(name, split="train", data_dir=None):
        splits.append(split)
        return load_dataset(name, split, data_dir)

    monkeypatch.setattr(assembly_parts, "load_dataset", recording_load)
    model, card = assemble(part_dirs, rescale=rescale, samples=20, seed=3, data_dir=data_dir)
    again, card_again = assemble(part_dirs, rescale=rescale, samples=20, seed=3, data_dir=data_dir)
    assert splits and set(splits) == {"train"} and card.fit["split"] == "train"
    assert torch.equal(model.scale, again.scale) and torch.equal(model.shift, again.shift)
    assert card.fit == card_again.fit
    a, b = card.fit["scale"], card.fit["shift"]
    assert card.fit["loss"] <= card.fit["loss_before"] and min(a) > 0
    assert model.scale.tolist() == pytest.approx(a) and model.shift.tolist() == pytest.approx(b)
    if rescale == "calibrated-part":  # one pair per part, part 0 fixed
        assert a == pytest.approx([1.0] * 3 + [a[3]] * 3) and b == pytest.approx([0.0] * 3 + [b[3]] * 3)
    with torch.no_grad():
        out = model(images)
    assert (out - (_parts_logits(part_dirs, images) * model.scale + model.shift)).abs().max() <= 1e-4
    _own_class_means(part_dirs, card.fit, data_dir)  # recorded samples are training images of their classes


def _toy_part(weight, bias, classes, dataset, provenance=None):
    linear = nn.Linear(1, len(classes))
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight).view(-1, 1))
        linear.bias.copy_(torch.tensor(bias))
    card = ModelCard(None, [1, 1, 1], 10, dataset=dataset, logit_classes=classes, provenance=provenance or {})
    return nn.Sequential(nn.Flatten(), linear), card


def _toy_data(pixels, labels):
    return ImageTensorDataset(torch.tensor(pixels, dtype=torch.uint8).view(-1, 1, 1, 1), torch.tensor(labels))


def test_evaluation_offsets_on_a_hand_built_case(tmp_path):
    # assembled logits for pixel x in [0, 1]: [x, 0.5 - x, 0.3]
    #   x = 1 -> logit 0 (part A, class 3);  x = 0 -> logit 1 (part A, class 1);  x = 64/255 -> logit 2 (part B)
    a_module, a_card = _toy_part([1.0, -1.0], [0.0, 0.5], [3, 1], "toy-a")
    b_module, b_card = _toy_part([0.0], [0.3], [0], "toy-b", {"disassembled_from": str(tmp_path / "gone")})
    model = AssembledModel([a_module, b_module], [2, 1])
    card = AssemblyCard([a_card, b_card], [None, None])
    test_a = _toy_data([255, 0, 64, 0], [3, 1, 3, 5])  # class 5 has no logit: not in the test set
    test_b = _toy_data([64, 255, 0], [0, 0, 7])
    report = evaluate_assembled(model, card, {0: test_a, 1: test_b})
    assert report["num_images"] == 5 and report["accuracy"] == pytest.approx(3 / 5)
    part_a, part_b = report["parts"]
    assert (part_a["num_images"], part_a["correct"], part_b["num_images"], part_b["correct"]) == (3, 2, 2, 1)
    confusion = report["cross_part_confusion"]
    assert confusion[0] == pytest.approx([2 / 3, 1 / 3]) and confusion[1] == pytest.approx([1 / 2, 1 / 2])
    # part A is a whole model (its own original): alone it gets all three images right; B's original is gone
    assert part_a["original_accuracy"] == 1.0 and "whole model" in part_a["original"]
    assert part_b["original_accuracy"] is None and "missing" in part_b["original"]
    assert report["original_accuracy"] == 1.0 and report["originals_missing"] == [1]
    # a rescaling that lifts part B's logit above everything sends every image to it
    with torch.no_grad():
        model.shift[2] = 10.0
    assert evaluate_assembled(model, card, [test_a, test_b])["cross_part_confusion"] == [[0.0, 1.0], [0.0, 1.0]]


def test_save_load_round_trip(part_dirs, images, tmp_path, data_dir):
    model, card = assemble(part_dirs, rescale="paper", samples=10, data_dir=data_dir)
    out = save_assembled(model, tmp_path / "asm", card)
    loaded, loaded_card = load_assembled(out)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    assert loaded_card.logits == card.logits and loaded_card.fit == json.loads(json.dumps(card.fit))
    assert loaded_card.sources == [str(d) for d in part_dirs]
    assert load_with_card(out / "part-1")[1].dataset == "fashion-mnist"
    with pytest.raises(MdakitError, match="is an assembly of 2 parts in the parallel layout, not a single model"):
        load_with_card(out)
    with pytest.raises(MdakitError, match="already exists"):
        save_assembled(model, out, card)
    save_assembled(loaded, out, loaded_card, force=True)
    raw = json.loads((out / "assembly.json").read_text())
    raw["logits"][0]["label"] = 9
    (out / "assembly.json").write_text(json.dumps(raw))
    with pytest.raises(MdakitError, match="do not match"):
        load_assembled(out)
    with pytest.raises(MdakitError, match="not an assembled model"):
        load_assembled(part_dirs[0])
    with pytest.raises(MdakitError, match="is an assembled model; assemble its parts"):
        assemble([out, part_dirs[0]])


def _mismatched(part_dirs, field, value):
    module, card = load_with_card(part_dirs[1])
    setattr(card, field, value)
    return [part_dirs[0], (module, card)]


@pytest.mark.parametrize("make_args, message", [
    (lambda d, tmp: ([d[0]], {}), "at least two parts"),
    (lambda d, tmp: ([d[0], tmp], {}), "not an mdakit model"),
    (lambda d, tmp: (_mismatched(d, "arch", "vgg16"), {"layout": "padded"}), "different architectures"),
    (lambda d, tmp: (_mismatched(d, "arch", None), {"layout": "padded"}), "user-built module.*parallel layout"),
    (lambda d, tmp: (_mismatched(d, "input_shape", [3, 32, 32]), {}), r"different input shapes: \[1, 28, 28\]"),
    (lambda d, tmp: ([d[0], d[0]], {}), "class 0 .* in part 0 and part 1"),
    (lambda d, tmp: (d, {"layout": "stacked"}), "unknown layout"),
    (lambda d, tmp: (d, {"rescale": "magic"}), "unknown rescaling"),
    (lambda d, tmp: (d, {"rescale": "paper", "data": ImageTensorDataset(torch.zeros(1, 1, 28, 28, dtype=torch.uint8),
                                                                        torch.zeros(1))}), "one dataset per part"),
])
def test_refused_inputs(part_dirs, tmp_path, make_args, message):
    parts, kwargs = make_args(part_dirs, tmp_path)
    with pytest.raises(MdakitError, match=message):
        assemble(parts, **kwargs)


def test_a_part_that_gets_a_class_wrong_everywhere_cannot_be_rescaled(part_dirs, data_dir):
    module, card = load_with_card(part_dirs[1])
    last = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))  # always its first class
    with pytest.raises(MdakitError, match=r"cannot fit the 'paper' rescaling: part 1 \(fashion-mnist\) class 1 .*"
                                          "rescale 'none'"):
        assemble([part_dirs[0], (module, card)], rescale="paper", samples=5, data_dir=data_dir)
    model, _ = assemble([part_dirs[0], (module, card)])  # as it is, it still assembles
    assert model.scale.shape == (6,)


@pytest.mark.parametrize("extra, message", [
    ([], "at least two parts"),
    (["{p0}", "{empty}"], "not an mdakit model"),
    (["{p0}", "{p1}", "--layout", "padded", "--rescale", "magic"], "unknown rescaling"),
    (["{p0}", "{p1}", "--layout", "stacked"], "unknown layout"),
    (["{p0}", "{p1}", "--rescale", "magic"], "unknown rescaling"),
    (["{p0}", "{p0}"], "in part 0 and part 1"),
])
def test_cli_errors_write_nothing(part_dirs, tmp_path, capsys, extra, message):
    (tmp_path / "empty").mkdir()
    names = {"p0": part_dirs[0], "p1": part_dirs[1], "empty": tmp_path / "empty"}
    args = [a.format(**names) for a in extra] or [str(part_dirs[0])]
    assert run(["assemble", *args, "--out", str(tmp_path / "asm"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and len(captured.err.strip().splitlines()) == 1
    assert not (tmp_path / "asm").exists() and [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_cli_json(part_dirs, tmp_path, capsys, data_dir, images):
    out = tmp_path / "asm"
    argv = ["assemble", *map(str, part_dirs), "--out", str(out), "--rescale", "paper", "--samples", "10",
            "--data-dir", str(data_dir)]
    assert run([*argv, "--json"]) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    mnist_test, _ = load_dataset("mnist", "test", data_dir)
    assert result["num_images"] == len(ClassSubset(mnist_test, [0, 1, 2])) + 3000
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.5 < result["original_accuracy"] <= 1.0
    assert result["originals_missing"] == [] and "samples" not in result["fit"]
    assert all(sum(row) == pytest.approx(1.0) for row in result["cross_part_confusion"])
    assert result["size"]["macs"] == sum(p["size"]["macs"] for p in result["parts"])
    _, card = load_assembled(out)
    assert card.metrics["accuracy"] == result["accuracy"] and card.rescale == "paper"
    assert run(argv) == 2 and "already exists" in capsys.readouterr().err
    assert run([*argv, "--force"]) == 0 and "assembled" in capsys.readouterr().out


def test_eval_and_info_read_assembled_models(tmp_path, capsys, part_dirs):
    out = tmp_path / "asm"
    assert run(["assemble", *map(str, part_dirs), "--out", str(out), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert run(["eval", str(out), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(built["accuracy"])
    assert run(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["assembly"]["logits"]) == len(built["logits"])
    assert run(["eval", str(out), "--classes", "0"]) == 2


def test_padded_layout_matches_parallel(part_dirs, images, tmp_path, capsys):
    parallel, _ = assemble(part_dirs, layout="parallel")
    padded, card = assemble(part_dirs, layout="padded")
    with torch.no_grad():
        assert (padded(images) - parallel(images)).abs().max() <= 1e-4
    sizes = [model_size(part, card.input_shape) for part in parallel.parts]
    merged = model_size(padded, card.input_shape)
    assert merged["nonzero_params"] <= sum(s["params"] for s in sizes) < merged["params"]
    assert run(["assemble", *map(str, part_dirs), "--layout", "padded", "--out", str(tmp_path / "pad"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "padded" and report["size"]["macs"] == merged["macs"]


def test_per_logit_calibration_fixes_what_one_pair_per_part_cannot():
    # part 1 (last logit) is confident on part 0's class-1 images: no scale and offset of that one logit
    # classifies all five (the constraints contradict), one per logit does
    logits = torch.tensor([[4.0, 0.0, 3.0], [0.0, 2.0, 3.0], [0.0, 1.0, 1.2], [0.0, 0.0, 0.5], [3.5, 0.0, 3.6]] * 20)
    labels = torch.tensor([0, 1, 1, 2, 2] * 20)
    accuracy = {}
    for per in ("part", "logit"):
        a, b, _ = assembly.calibrate(logits, labels, [2, 1], per=per)
        accuracy[per] = ((logits * a + b).argmax(1) == labels).float().mean().item()
    assert accuracy["part"] < 1.0 and accuracy["logit"] == 1.0


def test_finetune_assembled_trains_on_the_union_of_training_classes(part_dirs, data_dir):
    model, card = assemble(part_dirs, rescale="paper", samples=20, data_dir=data_dir)
    before = [p.clone() for p in model.parameters()]
    scale = model.scale.clone()
    result = assembly.finetune_assembled(model, card, per_class=30, seed=1, data_dir=data_dir)
    assert result.train_samples + result.val_samples == 6 * 30  # 3 MNIST + 3 Fashion classes
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.equal(model.scale, scale)  # the rescaling stays as fitted
    again, _ = assemble(part_dirs, rescale="paper", samples=20, data_dir=data_dir)
    assembly.finetune_assembled(again, card, per_class=30, seed=1, data_dir=data_dir)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


@pytest.mark.parametrize("rescale", [r for r in assembly.RESCALES if r not in assembly.GATED])
@pytest.mark.parametrize("layout", list(assembly.LAYOUTS))
def test_every_layout_and_rescaling_outputs_the_rescaled_parts_logits(part_dirs, images, data_dir, layout, rescale):
    model, card = assemble(part_dirs, layout=layout, rescale=rescale, samples=10, data_dir=data_dir)
    assert (card.layout, card.rescale) == (layout, rescale) and bool(card.fit) == (rescale != "none")
    scale = torch.tensor(card.fit.get("scale", [1.0] * 6), dtype=torch.float32)
    shift = torch.tensor(card.fit.get("shift", [0.0] * 6), dtype=torch.float32)
    with torch.no_grad():
        out = model(images)
    assert (out - (_parts_logits(part_dirs, images) * scale + shift)).abs().max() <= 1e-4


def test_a_registered_rescaling_is_one_function(part_dirs, images, data_dir, monkeypatch):
    def fit_double(model, card, train_sets, chosen, device):
        with torch.no_grad():
            model.scale.fill_(2.0)
        return {"scale": model.scale.tolist(), "warnings": []}

    monkeypatch.setitem(assembly.RESCALES, "double", fit_double)
    model, card = assemble(part_dirs, rescale="double", samples=5, data_dir=data_dir)
    assert card.fit["split"] == "train" and all(len(v) == 5 for s in card.fit["samples"] for v in s.values())
    with torch.no_grad():
        assert (model(images) - 2 * _parts_logits(part_dirs, images)).abs().max() <= 1e-5


class _UserConvNet(nn.Module):
    """A user's own classifier, not from the zoo: one conv, max-pool, one linear layer."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def _quadrant_data(per_class: int = 40) -> torch.utils.data.TensorDataset:
    """8×8 images of 4 classes: class c is bright in quadrant c, on noise."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(per_class)
    images = torch.rand(len(labels), 1, 8, 8, generator=generator) * 0.3
    for i, c in enumerate(labels.tolist()):
        row, col = divmod(c, 2)
        images[i, 0, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 0.7
    return torch.utils.data.TensorDataset(images, labels)


def _trained(module: nn.Module, data, steps: int = 60) -> nn.Module:
    torch.manual_seed(0)
    images, labels = data.tensors
    optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(module(images), labels).backward()
        optimizer.step()
    return module.eval()


def test_parts_of_user_built_modules_assemble_from_files_in_both_layouts(tmp_path):
    data = _quadrant_data()
    torch.manual_seed(0)
    conv = _trained(_UserConvNet(), data)
    mlp = _trained(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)), data)
    parts = [disassemble(conv, data, [0, 1], samples=10), disassemble(mlp, data, [3, 2], samples=10)]
    assert all(p.card.arch is None and p.card.rebuildable for p in parts)
    model, card = assemble(parts)
    images = data.tensors[0][::7]
    with torch.no_grad():
        want = torch.cat([p.model(images) for p in parts], dim=1)
        assert (model(images) - want).abs().max() <= 1e-5
    assert [logit["label"] for logit in card.logits] == [0, 1, 3, 2] and card.to_dict()["arch"] is None
    with pytest.raises(MdakitError, match="different architectures: a user-built _UserConvNet .* user-built "
                                          "Sequential"):
        assemble(parts, layout="padded")
    for p, part in enumerate(parts):
        part.save(tmp_path / f"part-{p}")
    loaded, _ = load_assembled(save_assembled(model, tmp_path / "asm", card))
    from_files, _ = assemble([tmp_path / "part-0", tmp_path / "part-1"])
    with torch.no_grad():
        assert (loaded(images) - want).abs().max() <= 1e-5 and (from_files(images) - want).abs().max() <= 1e-5
    other = disassemble(conv, data, [2, 3], samples=10)
    other.save(tmp_path / "conv-23")
    padded, padded_card = assemble([tmp_path / "part-0", tmp_path / "conv-23"], layout="padded")
    reloaded, _ = load_assembled(save_assembled(padded, tmp_path / "padded", padded_card))
    with torch.no_grad():
        want = torch.cat([parts[0].model(images), other.model(images)], dim=1)
        assert (padded(images) - want).abs().max() <= 1e-5 and (reloaded(images) - want).abs().max() <= 1e-5
    module, part_card = load_with_card(tmp_path / "part-0", into=_UserConvNet())
    with torch.no_grad():
        assert torch.equal(module(images), parts[0].model(images))


class _UnsavedScale(nn.Module):
    """A user's classifier whose scale is a buffer not saved with the weights: its structure cannot be recorded."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 4)
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)

    def forward(self, x):
        return self.fc(torch.flatten(x, 1)) * self.scale


def test_parts_of_a_module_its_card_cannot_record_need_the_module(tmp_path):
    data = _quadrant_data()
    part = disassemble(_trained(_UnsavedScale(), data), data, [0, 1], samples=10)
    assert not part.card.rebuildable and "persistent=False" in part.card.provenance["not_recorded"]
    part.save(tmp_path / "part")
    with pytest.raises(MdakitError, match=r"could not record its structure: .*'scale'.*into="):
        load_with_card(tmp_path / "part")
    with pytest.raises(MdakitError, match=r"part 0 .* user-built module.*into="):
        assemble([tmp_path / "part", part])
    module, _ = load_with_card(tmp_path / "part", into=_UnsavedScale())
    images = data.tensors[0][:5]
    with torch.no_grad():
        assert torch.equal(module(images), part.model(images))


def test_parallel_layout_joins_different_zoo_architectures_through_files(part_dirs, images, tmp_path):
    torch.manual_seed(0)
    resnet = build_model("resnet20", SHAPE, 10, mean=[0.29], std=[0.35]).eval()
    whole = save(resnet, tmp_path / "resnet20-fmnist", ModelCard("resnet20", list(SHAPE), 10, dataset="fashion-mnist"))
    model, card = assemble([part_dirs[0], whole])
    assert card.to_dict()["arch"] is None and [c.arch for c in card.part_cards] == ["lenet5", "resnet20"]
    with pytest.raises(MdakitError, match="different architectures: lenet5 .* resnet20"):
        assemble([part_dirs[0], whole], layout="padded")
    loaded, loaded_card = load_assembled(save_assembled(model, tmp_path / "asm", card))
    with torch.no_grad():
        want = torch.cat([load_with_card(part_dirs[0])[0](images), resnet(images)], dim=1)
        assert (loaded(images) - want).abs().max() <= 1e-5
    assert loaded_card.logits == card.logits and len(card.logits) == 13
