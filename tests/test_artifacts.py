import json
import pickle
from pathlib import Path

import pytest
import torch

from mdakit.artifacts import CARD_FILE, WEIGHTS_FILE, ModelCard, import_checkpoint, load, load_with_card, save
from mdakit.data import BUILTIN
from mdakit.errors import MdakitError
from mdakit.zoo import build_model

INFO = BUILTIN["mnist"]


def _model(arch="lenet5"):
    torch.manual_seed(1)
    return build_model(arch, INFO.input_shape, INFO.num_classes, INFO.mean, INFO.std)


@pytest.mark.parametrize("arch", ["lenet5", "vgg16", "googlenet"])
def test_round_trip_is_bit_identical(tmp_path, arch):
    model = _model(arch)
    card = ModelCard.for_dataset(arch, INFO, metrics={"test_accuracy": 0.5})
    save(model, tmp_path / "m", card)
    loaded, loaded_card = load_with_card(tmp_path / "m")
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b)
    assert loaded_card == card
    assert not loaded.training
    x = torch.rand(2, *INFO.input_shape)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def test_user_built_module_round_trip(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3))
    save(net, tmp_path / "u", ModelCard(arch=None, input_shape=[1, 28, 28], num_classes=3))
    with pytest.raises(MdakitError, match="into="):
        load(tmp_path / "u")
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3))
    load(tmp_path / "u", into=other)
    assert torch.equal(other[1].weight, net[1].weight)


def test_save_refuses_existing_output_and_force_replaces(tmp_path):
    save(_model(), tmp_path / "m", ModelCard.for_dataset("lenet5", INFO))
    with pytest.raises(MdakitError, match="already exists"):
        save(_model(), tmp_path / "m", ModelCard.for_dataset("lenet5", INFO))
    card = ModelCard.for_dataset("lenet5", INFO, metrics={"v": 2})
    save(_model(), tmp_path / "m", card, force=True)
    assert load_with_card(tmp_path / "m")[1].metrics == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import mdakit.artifacts as art

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(art, "save_file", boom)
    with pytest.raises(MdakitError, match="cannot write .*: disk full"):
        save(_model(), tmp_path / "m", ModelCard.for_dataset("lenet5", INFO))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def saved(tmp_path) -> Path:
    return save(_model(), tmp_path / "m", ModelCard.for_dataset("lenet5", INFO))


def test_truncated_weights_are_refused(saved):
    weights = saved / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(MdakitError, match="checksum"):
        load(saved)


def test_truncated_weights_without_checksum_are_refused(saved):
    raw = json.loads((saved / CARD_FILE).read_text())
    del raw["weights"]
    (saved / CARD_FILE).write_text(json.dumps(raw))
    weights = saved / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(MdakitError, match="not a readable safetensors"):
        load(saved)


def test_corrupt_card_is_refused(saved):
    text = (saved / CARD_FILE).read_text()
    (saved / CARD_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(MdakitError, match="not valid JSON"):
        load(saved)


def test_foreign_card_is_refused(saved):
    (saved / CARD_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MdakitError, match="not an mdakit model card"):
        load(saved)


def test_card_that_does_not_match_weights_is_refused(saved):
    raw = json.loads((saved / CARD_FILE).read_text())
    raw["num_classes"] = 5
    raw["logit_classes"] = [0, 1, 2, 3, 4]
    (saved / CARD_FILE).write_text(json.dumps(raw))
    with pytest.raises(MdakitError, match="does not match the architecture"):
        load(saved)


def test_missing_directory(tmp_path):
    with pytest.raises(MdakitError, match="not a model directory"):
        load(tmp_path / "nothing")


def test_import_state_dict_checkpoints(tmp_path):
    model = _model()
    card = ModelCard.for_dataset("lenet5", INFO)
    torch.save(model.net.state_dict(), tmp_path / "bare.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
               tmp_path / "wrapped.pth")
    for name in ("bare.pt", "wrapped.pth"):
        imported = import_checkpoint(tmp_path / name, card)
        for k, v in model.state_dict().items():
            assert torch.equal(imported.state_dict()[k], v), (name, k)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/mdakit-pwned-by-checkpoint"),))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = Path("/tmp/mdakit-pwned-by-checkpoint")
    marker.unlink(missing_ok=True)
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"state_dict": _Payload()}, fh)
    torch.save({"weights": _Payload()}, tmp_path / "evil_zip.pt")
    assert not marker.exists()
    for name in ("evil.pt", "evil_zip.pt"):
        with pytest.raises(MdakitError, match="refusing|not a readable"):
            import_checkpoint(tmp_path / name, ModelCard.for_dataset("lenet5", INFO))
    assert not marker.exists()


def test_truncated_and_mismatched_checkpoints(tmp_path):
    model = _model()
    torch.save(model.state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    card = ModelCard.for_dataset("lenet5", INFO)
    with pytest.raises(MdakitError, match="not a readable PyTorch checkpoint"):
        import_checkpoint(tmp_path / "cut.pt", card)
    with pytest.raises(MdakitError, match="does not match the architecture"):
        import_checkpoint(tmp_path / "full.pt", ModelCard.for_dataset("vgg16", INFO))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(MdakitError, match="no state dict"):
        import_checkpoint(tmp_path / "list.pt", card)


def test_a_model_with_versioned_state_round_trips(tmp_path):
    """torchvision's MNASNet refuses a state dict without its version; the model file keeps the versions."""
    model = build_model("torchvision:mnasnet0_5", (3, 32, 32), 4).eval()
    save(model, tmp_path / "m", ModelCard(arch="torchvision:mnasnet0_5", input_shape=[3, 32, 32], num_classes=4))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "m")(images), model(images))
