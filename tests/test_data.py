import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mdakit import data as mdata
from mdakit.errors import MdakitError

NAMES = [str(i) for i in range(10)]


@pytest.mark.parametrize("spec, expected", [
    ("0,1,2", [0, 1, 2]), ("3-9", [3, 4, 5, 6, 7, 8, 9]), ("7,0-1", [7, 0, 1]), ([2, 5], [2, 5]), ("4", [4]),
])
def test_parse_classes(spec, expected):
    assert mdata.parse_classes(spec, NAMES) == expected


def test_parse_classes_by_name_keeps_order():
    names = mdata.BUILTIN["fashion-mnist"].class_names
    assert mdata.parse_classes("Bag,trouser", names) == [8, 1]


@pytest.mark.parametrize("spec, message", [
    ("", "empty"), ("1,1", "more than once"), ("0-2,2", "more than once"), ("10", "out of range"),
    ("-1", "out of range"), ("banana", "unknown class"), ("5-3", "empty"), ([], "empty"),
])
def test_parse_classes_errors(spec, message):
    with pytest.raises(MdakitError, match=message):
        mdata.parse_classes(spec, NAMES)


def test_real_mnist_and_fashion(data_dir):
    for name, n_train in (("mnist", 60000), ("fashion-mnist", 60000)):
        train, info = mdata.load_dataset(name, "train", data_dir)
        test, _ = mdata.load_dataset(name, "test", data_dir)
        assert (len(train), len(test)) == (n_train, 10000)
        image, label = test[0]
        assert image.shape == (1, 28, 28) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert sorted(torch.unique(mdata.labels_of(test)).tolist()) == list(range(10))
        # the stored normalisation matches the real training images
        sample = torch.stack([train[i][0] for i in range(0, n_train, 60)])
        assert abs(float(sample.mean()) - info.mean[0]) < 0.01
        assert abs(float(sample.std()) - info.std[0]) < 0.01


def test_fetch_is_idempotent(data_dir):
    assert mdata.fetch("mnist", data_dir) == data_dir


@pytest.mark.parametrize("name", [name for name, entry in mdata.DATASETS.items() if not entry.from_path])
def test_every_named_dataset_missing_from_a_folder_names_the_command(name, tmp_path):
    with pytest.raises(MdakitError, match=re.escape(f"mdakit data fetch {name} --data-dir {tmp_path}")):
        mdata.load_dataset(name, "test", tmp_path)
    entry = mdata.DATASETS[name]
    assert mdata.canonical_name(f" {name.upper()} ") == name
    assert all(mdata.canonical_name(alias) == name for alias in entry.aliases)
    if entry.info is not None and not entry.names_in_files:  # known without reading any file
        assert mdata.dataset_info(name, tmp_path) is entry.info


def test_a_registered_dataset_is_one_loader(tmp_path, monkeypatch):
    info = mdata.DatasetInfo("toy", (1, 2, 2), ("a", "b"), (0.5,), (0.25,))
    monkeypatch.setitem(mdata.DATASETS, "toy", None)  # the registration below is undone after the test

    @mdata.register_dataset("toy", info=info, aliases=("toy-set",))
    def load_toy(split, root):
        assert root == tmp_path
        return mdata.ImageTensorDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1])), info

    train, got = mdata.load_dataset("Toy-Set", "train", tmp_path)
    assert got is info and len(train) == 2 and mdata.dataset_info("toy") is info and mdata.BUILTIN["toy"] is info
    with pytest.raises(MdakitError, match="known: .*toy"):
        mdata.canonical_name("toys")


def test_unknown_dataset_and_split():
    with pytest.raises(MdakitError, match="unknown dataset"):
        mdata.canonical_name("imagenet-42")
    with pytest.raises(MdakitError, match="unknown split"):
        mdata.load_dataset("mnist", "validation")


def test_class_subset_and_stratified_split(mnist_test):
    test, _ = mnist_test
    sub = mdata.ClassSubset(test, [7, 2])
    labels = mdata.labels_of(test)
    assert len(sub) == int(((labels == 7) | (labels == 2)).sum())
    assert set(sub.targets.tolist()) == {0, 1}
    image, label = sub[0]
    original = int(labels[sub.indices[0]])
    assert label == [7, 2].index(original)
    kept = mdata.ClassSubset(test, [7, 2], remap=False)
    assert set(kept.targets.tolist()) == {7, 2}

    fit, val = mdata.stratified_split(sub, 0.1, seed=3)
    assert len(fit) + len(val) == len(sub) and not set(fit.indices) & set(val.indices)
    val_labels = mdata.labels_of(val)
    for c in (0, 1):
        share = float((val_labels == c).float().mean())
        assert abs(share - float((sub.targets == c).float().mean())) < 0.01
    again = mdata.stratified_split(sub, 0.1, seed=3)[1]
    assert again.indices == val.indices


def _write_cifar(root: Path, name: str, n: int) -> None:
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for f in files:
            batch = {b"batch_label": f.encode(), b"labels": [int(v) for v in rng.integers(0, 10, n)],
                     b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
            (folder / f).write_bytes(pickle.dumps(batch, protocol=2))
        meta = {b"label_names": [n.encode() for n in mdata.BUILTIN["cifar10"].class_names], b"num_cases_per_batch": n}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for f in ("train", "test"):
            batch = {b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                     b"coarse_labels": [0] * n, b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
            (folder / f).write_bytes(pickle.dumps(batch, protocol=2))
        meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": [b"x"] * 20}
        (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_loader_reads_the_real_format(tmp_path, name, classes):
    _write_cifar(tmp_path, name, n=12)
    train, info = mdata.load_dataset(name, "train", tmp_path)
    test, _ = mdata.load_dataset(name, "test", tmp_path)
    assert len(train) == (60 if name == "cifar10" else 12) and len(test) == 12
    assert info.num_classes == classes and info.input_shape == (3, 32, 32)
    image, label = test[3]
    assert image.shape == (3, 32, 32) and 0 <= label < classes
    folder = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    raw = pickle.loads((folder / ("test_batch" if name == "cifar10" else "test")).read_bytes())
    expected = torch.from_numpy(raw[b"data"][3].reshape(3, 32, 32)).float() / 255
    assert torch.equal(image, expected)
    if name == "cifar100":
        assert info.class_names[5] == "c5"


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/mdakit-cifar-pwned"),))


def test_cifar_loader_refuses_code_in_pickles(tmp_path):
    _write_cifar(tmp_path, "cifar10", n=4)
    marker = Path("/tmp/mdakit-cifar-pwned")
    marker.unlink(missing_ok=True)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(MdakitError, match="refusing"):
        mdata.load_dataset("cifar10", "test", tmp_path)
    assert not marker.exists()


def test_imagefolder_loader(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    train, info = mdata.load_dataset(f"imagefolder:{tmp_path}", "train")
    test, _ = mdata.load_dataset(f"imagefolder:{tmp_path}", "test")
    assert info.class_names == ("cat", "dog") and info.input_shape == (3, 20, 24)
    assert len(train) == 6 and len(test) == 4
    image, label = test[2]
    assert image.shape == (3, 20, 24) and label == 1
    expected = torch.from_numpy(np.array(Image.open(tmp_path / "test" / "dog" / "0.png"))).permute(2, 0, 1) / 255
    assert torch.allclose(image, expected.float())
    assert len(info.mean) == 3 and all(0 < s for s in info.std)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(MdakitError, match="does not exist"):
        mdata.load_dataset(f"imagefolder:{tmp_path / 'nope'}", "train")
    (tmp_path / "x").mkdir()
    with pytest.raises(MdakitError, match="no train"):
        mdata.load_dataset(f"imagefolder:{tmp_path / 'x'}", "train")
