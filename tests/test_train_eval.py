import pytest
import torch
from torch import nn

from mdakit.data import ClassSubset, ImageTensorDataset, per_class_subset
from mdakit.errors import MdakitError
from mdakit.evaluate import evaluate
from mdakit.train import TrainConfig, train
from mdakit.zoo import build_model


def _fit(mnist_train, seed):
    train_data, info = mnist_train
    torch.manual_seed(seed)
    model = build_model("lenet5", info.input_shape, info.num_classes, info.mean, info.std)
    result = train(model, train_data, TrainConfig(epochs=2, train_subset=2000, batch_size=32, lr=0.05, seed=seed),
                   show_progress=False)
    return model, result


def test_training_learns_real_mnist_and_is_deterministic(mnist_train, mnist_test):
    model_a, result = _fit(mnist_train, seed=0)
    model_b, _ = _fit(mnist_train, seed=0)
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        assert torch.equal(a, b)
    assert result.train_samples == 1800 and result.val_samples == 200
    assert len(result.history) == 2
    test, _ = mnist_test
    assert evaluate(model_a, per_class_subset(test, 100), list(range(10))).accuracy > 0.8


def test_bad_training_settings(mnist_train):
    train_data, _ = mnist_train
    model = nn.Linear(1, 1)
    with pytest.raises(MdakitError, match="epochs"):
        train(model, train_data, TrainConfig(epochs=0), show_progress=False)
    with pytest.raises(MdakitError, match="train_subset"):
        train(model, train_data, TrainConfig(train_subset=-5), show_progress=False)


class _FixedLogits(nn.Module):
    """Returns the image's first pixel row as logits: lets the tests set the prediction by hand."""

    def forward(self, x):
        return x[:, 0, 0, :].float()


def _dataset(rows, labels):
    images = torch.tensor(rows, dtype=torch.uint8).view(len(rows), 1, 1, -1)
    return ImageTensorDataset(images, torch.tensor(labels))


def test_restricted_logits_against_hand_computed_values():
    # logits (as pixel values) and labels: class 0 image predicted as 2 overall, but as 0 among {0, 1}
    data = _dataset([[9, 5, 20], [1, 7, 3], [2, 1, 0], [0, 0, 5]], [0, 1, 0, 2])
    model = _FixedLogits()
    full = evaluate(model, data, [0, 1, 2], classes=[0, 1])
    assert full.accuracy == pytest.approx(2 / 3) and full.num_samples == 3
    assert full.confusion == [[1, 0, 1], [0, 1, 0]]
    restricted = evaluate(model, data, [0, 1, 2], classes=[0, 1], restrict_logits=True)
    assert restricted.accuracy == 1.0
    assert restricted.per_class_accuracy == {"0": 1.0, "1": 1.0}
    everything = evaluate(model, data, [0, 1, 2])
    assert everything.accuracy == 0.75


def test_part_logits_map_to_their_classes():
    # a "part" whose two logits stand for dataset classes 2 and 0, in that order
    data = _dataset([[9, 1], [1, 9], [5, 4]], [2, 0, 2])
    result = evaluate(_FixedLogits(), data, logit_classes=[2, 0])
    assert result.accuracy == 1.0 and result.classes == [2, 0]


def test_evaluate_errors():
    data = _dataset([[1, 2]], [0])
    with pytest.raises(MdakitError, match="no logit for class 5"):
        evaluate(_FixedLogits(), data, [0, 1], classes=[5])
    with pytest.raises(MdakitError, match="no images"):
        evaluate(_FixedLogits(), data, [0, 1], classes=[1])
    with pytest.raises(MdakitError, match="returns 2 logits"):
        evaluate(_FixedLogits(), data, [0, 1, 2])


def test_class_subset_training_data(mnist_train):
    train_data, _ = mnist_train
    sub = ClassSubset(per_class_subset(train_data, 30), [3, 8])
    assert sorted(set(sub.targets.tolist())) == [0, 1] and len(sub) == 60
