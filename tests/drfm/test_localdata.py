"""MNIST / Fashion-MNIST (IDX) and CIFAR-10 (python batches) from local files, written here in their formats."""
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from drfm._localdata import read_cifar_batch, read_idx, search_folders
from drfm.datasets import load

SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


def _idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train=30, n_test=10, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {"train": (rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train)),
            "t10k": (rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test))}
    for split, (images, labels) in data.items():
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            raw = _idx_bytes(arr)
            name = f"{split}-{kind}-ubyte"
            if compress:
                with gzip.open(folder / (name + ".gz"), "wb") as fh:
                    fh.write(raw)
            else:
                (folder / name).write_bytes(raw)
    return data


def write_cifar(folder: Path, per_batch=8, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, per_batch).tolist(),
                 b"data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
                 b"filenames": [b"x.png"] * per_batch}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_from_a_folder_of_idx_files(tmp_path, compress):
    data = write_idx_set(tmp_path / "mnist", compress=compress)
    ds = load("mnist", data_home=tmp_path)
    assert ds.X_train.shape == (30, 784) and ds.X_test.shape == (10, 784)
    np.testing.assert_array_equal(ds.y_train, data["train"][1])
    np.testing.assert_allclose(ds.X_train, data["train"][0].reshape(30, -1) / 255.0)
    assert ds.meta["source"] == str((tmp_path / "mnist").resolve())
    sub = load("mnist", data_home=tmp_path, n_train=12, n_test=4, random_state=1)
    assert sub.X_train.shape == (12, 784) and sub.X_test.shape == (4, 784)


def test_torchvision_layout_and_drfm_data_variable(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "FashionMNIST" / "raw", seed=3)
    monkeypatch.setenv("DRFM_DATA", str(tmp_path))
    ds = load("fashion-mnist")
    assert ds.X_train.shape == (30, 784) and "FashionMNIST" in ds.meta["source"]


def test_cifar10_batches(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load("cifar10", data_home=tmp_path)
    assert ds.X_train.shape == (40, 3072) and ds.X_test.shape == (8, 3072) and ds.X_train.max() <= 1.0
    assert ds.meta["image_shape"] == (3, 32, 32)


def test_image_rows_are_channel_major_whatever_the_source():
    """torchvision's CIFAR-10 holds (n, 32, 32, 3) images, its files (n, 3072) R/G/B planes: the same rows either way
    (a backbone reads them with image_shape (3, 32, 32))."""
    from drfm.datasets import image_rows

    rng = np.random.default_rng(0)
    planes = rng.integers(0, 256, (5, 3, 32, 32)).astype(np.uint8)  # what the python batches store, per image
    np.testing.assert_array_equal(image_rows(planes.transpose(0, 2, 3, 1)), planes.reshape(5, -1))
    np.testing.assert_array_equal(image_rows(planes), planes.reshape(5, -1))
    gray = rng.integers(0, 256, (4, 28, 28)).astype(np.uint8)  # MNIST (n, H, W)
    np.testing.assert_array_equal(image_rows(gray), gray.reshape(4, -1))


def test_missing_set_names_every_folder_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("DRFM_DATA", str(tmp_path / "env"))
    with pytest.raises(ValueError, match="was not found") as exc:
        load("mnist", data_home=tmp_path / "mine")
    text = str(exc.value)
    assert str((tmp_path / "mine" / "MNIST" / "raw").resolve()) in text and str((tmp_path / "env").resolve()) in text
    assert "train-images-idx3-ubyte" in text and "data_home" in text
    assert len(search_folders("mnist", tmp_path / "mine")) >= 8


def test_damaged_files_are_clear_errors(tmp_path):
    write_idx_set(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with gzip.open(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(_idx_bytes(np.zeros(7)))  # 7 labels for 10 images
    with pytest.raises(ValueError, match="7,\\) labels for the 10 images"):
        load("mnist", data_home=tmp_path)
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(bad)
    short = tmp_path / "short-idx"
    short.write_bytes(bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + b"\x00" * 10)
    with pytest.raises(ValueError, match="holds 10"):
        read_idx(short)


def test_a_crafted_cifar_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "data_batch_1"
    with open(path, "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    with pytest.raises(ValueError, match="refused"):
        read_cifar_batch(path)
    assert not marker.exists()


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="the full MNIST files are not present here")
def test_the_full_mnist_files():
    ds = load("mnist", data_home=SHARED_MNIST.parent)
    assert ds.X_train.shape == (60000, 784) and ds.X_test.shape == (10000, 784)
    assert np.bincount(ds.y_train).min() > 5000 and set(np.unique(ds.y_test)) == set(range(10))


def test_cli_reads_image_sets_from_data_home(tmp_path, capsys):
    import json

    from drfm.cli import main

    write_idx_set(tmp_path / "mnist", n_train=60, n_test=20)
    assert main(["fit", "--dataset", "mnist", "--data-home", str(tmp_path), "--param", "iters=1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_features"] == 784 and res["task"] == "classification"
    assert main(["fit", "--dataset", "mnist", "--data-home", str(tmp_path / "none")]) == 2
    assert "was not found" in capsys.readouterr().err
