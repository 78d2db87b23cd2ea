"""Model files (format 2) round-trip every estimator and cannot run code when loaded."""
import io
import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from drfm import DeepRFMClassifier, DeepRFMRegressor, RFMClassifier, RFMRegressor, TorchMLPClassifier
from drfm.persistence import MAGIC, ModelFileError, load_model, read_header, save_model


def _data(n=120, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, X[:, 0] * X[:, 1], np.where(X[:, 0] > 0, "cat", np.where(X[:, 1] > 0, "dog", "eel"))


def _models():
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)  # short trainings: the round trip is what is tested here
    X, y, labels = _data()
    user = nn.Sequential(nn.Linear(5, 8), nn.LeakyReLU(0.2), nn.Dropout(0.1), nn.Linear(8, 3))
    return [
        (RFMRegressor(iters=2, random_state=0).fit(X, y), "predict"),
        (RFMRegressor(iters=1, diag=True, validation_fraction=0.2, random_state=0).fit(X, np.stack([y, -y], 1)),
         "predict"),
        (RFMClassifier(iters=2, random_state=0).fit(X, labels), "decision_function"),
        (DeepRFMClassifier(2, width=12, random_state=0).fit(X, labels), "decision_function"),
        (DeepRFMRegressor(2, feature_map="relu", width=8, random_state=0,
                          layer=RFMRegressor(2.0, iters=1, iter_sample_size=60)).fit(X, y), "predict"),
        (TorchMLPClassifier(1, 8, epochs=3, lr=1e-2, measure_every=1, random_state=0).fit(X, labels),
         "decision_function"),
        (TorchMLPClassifier(module=user, epochs=2, lr=1e-2, dtype="float64", random_state=0).fit(X, labels),
         "decision_function"),
    ]


@pytest.mark.parametrize("index", range(7))
def test_every_estimator_round_trips_to_identical_predictions(index, tmp_path):
    model, method = _models()[index]
    X, _, _ = _data(seed=1)
    path = save_model(model, tmp_path / "m.drfm")
    assert path.read_bytes().startswith(MAGIC) and b"\x80\x04" not in path.read_bytes()[:64]
    assert read_header(path)["format"] == 2
    loaded = load_model(path)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(getattr(loaded, method)(X), getattr(model, method)(X))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.get_params(deep=False).keys() == model.get_params(deep=False).keys()
    if hasattr(model, "history_"):
        assert len(loaded.history_) == len(model.history_)
    if isinstance(model, TorchMLPClassifier):
        assert len(loaded.dynamics_.rows) == len(model.dynamics_.rows)
        assert all(torch.equal(a, b) for a, b in zip(loaded.initial_state_.values(), model.initial_state_.values()))
    if isinstance(model, DeepRFMClassifier):
        np.testing.assert_array_equal(loaded.layers_[1].W, model.layers_[1].W)


def _rewrite(path, tree_edit=None, arrays_extra=None, out=None):
    """A copy of a model file with its JSON tree edited or arrays added (what an attacker can write)."""
    data = path.read_bytes()
    first = data.index(b"\n") + 1
    second = data.index(b"\n", first) + 1
    arrays = dict(np.load(io.BytesIO(data[second:]), allow_pickle=False))
    tree = json.loads(arrays["state.json"].tobytes().decode())
    if tree_edit:
        tree = tree_edit(tree)
    arrays["state.json"] = np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8)
    arrays.update(arrays_extra or {})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (out or path).write_bytes(data[:second] + buf.getvalue())
    return out or path


def test_crafted_files_cannot_run_code(tmp_path):
    X, y, _ = _data()
    path = save_model(RFMRegressor(iters=1, random_state=0).fit(X, y), tmp_path / "m.drfm")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    # 1. an estimator class outside the allow-list
    bad = _rewrite(path, lambda t: {**t, "__estimator__": "os.system"}, out=tmp_path / "a.drfm")
    with pytest.raises(ModelFileError, match="not a drfm estimator"):
        load_model(bad)
    # 2. an object array holding a pickle: numpy refuses it (allow_pickle=False)
    bad = _rewrite(path, arrays_extra={"evil": np.array([Evil()], dtype=object)}, out=tmp_path / "b.drfm")
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(bad)
    # 3. a module outside the allow-list
    mlp = TorchMLPClassifier(1, 4, epochs=1, random_state=0).fit(X, (y > 0).astype(int))
    mpath = save_model(mlp, tmp_path / "mlp.drfm")

    def swap_module(tree):
        text = json.dumps(tree).replace('"type": "ReLU"', '"type": "Conv2d"')
        return json.loads(text)

    bad = _rewrite(mpath, swap_module, out=tmp_path / "c.drfm")
    with pytest.raises(ModelFileError, match="module 'Conv2d'"):
        load_model(bad)
    # 4. an old-format (pickle) file with a valid header runs code when unpickled: refused without the opt-in
    header = path.read_bytes().split(b"\n")[1]
    old = tmp_path / "old.pkl"
    old.write_bytes(b"DRFM-MODEL 1\n" + header + b"\n" + pickle.dumps(Evil()))
    with pytest.raises(ModelFileError, match="format 1 .*pickle.*allow_pickle=True"):
        load_model(old)
    assert not marker.exists()  # nothing above ran code


def test_unknown_format_version_is_a_clear_error(tmp_path):
    X, y, _ = _data()
    path = save_model(RFMRegressor(iters=0).fit(X, y), tmp_path / "m.drfm")
    future = tmp_path / "f.drfm"
    future.write_bytes(path.read_bytes().replace(MAGIC, b"DRFM-MODEL 7\n", 1))
    with pytest.raises(ModelFileError, match="format '7'.*reads format 2"):
        load_model(future)


def test_old_pickle_files_load_only_with_the_opt_in(tmp_path, capsys):
    from drfm.cli import main

    X, y, _ = _data()
    model = RFMRegressor(iters=1, random_state=0).fit(X, y)
    header = json.dumps({"class": "drfm.rfm.RFMRegressor", "drfm_version": "0.1.0"}).encode()
    old = tmp_path / "old.pkl"
    old.write_bytes(b"DRFM-MODEL 1\n" + header + b"\n" + pickle.dumps(model))
    np.save(tmp_path / "x.npy", X[:3])
    assert main(["predict", str(old), str(tmp_path / "x.npy")]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    assert main(["predict", str(old), str(tmp_path / "x.npy"), "--allow-pickle", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"] == model.predict(X[:3]).tolist()
