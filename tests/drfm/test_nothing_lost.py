"""Nothing lost, nothing silently wrong (issue 30): fault injection on every file drfm writes, CSV edge cases with
exact row counts, resumes that refuse mixed settings, crafted model files, bounded resources."""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from drfm.cli import main
from drfm.data.files import FileWriteError, atomic_write

ROOT = Path(__file__).resolve().parents[2]


def _fit_files(tmp_path, n=200, d=5):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", X[:, 0] * X[:, 1])
    return tmp_path / "X.npy", tmp_path / "y.npy"


def _leftovers(folder: Path):
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


# ---------------------------------------------------------------------------------------------------------------------
# atomic writes
def test_atomic_write_replaces_only_when_complete(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old content")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write(b"new half")
            raise RuntimeError("the producer failed")
    assert target.read_bytes() == b"old content" and _leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as fh:
            fh.write(b"new half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old content" and _leftovers(tmp_path) == []
    with atomic_write(target) as fh:
        fh.write(b"new content")
    assert target.read_bytes() == b"new content" and _leftovers(tmp_path) == []


def test_atomic_write_keeps_the_replaced_files_permissions(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("x")
    os.chmod(target, 0o640)
    with atomic_write(target, "w") as fh:
        fh.write("y")
    assert target.read_text() == "y" and (target.stat().st_mode & 0o777) == 0o640


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_a_failing_disk_leaves_the_model_intact_and_the_cli_says_one_line(tmp_path, capsys, monkeypatch, where):
    X, y = _fit_files(tmp_path)
    keep = tmp_path / "keep.drfm"
    assert main(["fit", "--X", str(X), "--y", str(y), "--param", "iters=1", "--save", str(keep)]) == 0
    good = keep.read_bytes()
    capsys.readouterr()

    def fail(*a, **k):
        raise OSError(errno.ENOSPC if where == "fsync" else errno.EACCES, os.strerror(
            errno.ENOSPC if where == "fsync" else errno.EACCES))

    monkeypatch.setattr(os, where, fail)
    code = main(["fit", "--X", str(X), "--y", str(y), "--param", "iters=2", "--save", str(keep)])
    err = capsys.readouterr().err
    assert code == 1 and keep.read_bytes() == good and _leftovers(tmp_path) == []
    assert len(err.strip().splitlines()) == 1 and "keep.drfm" in err and "previous file is unchanged" in err


_LIMITED = textwrap.dedent("""
    import resource, sys
    from drfm.cli import main
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
    sys.exit(main(sys.argv[1:]))
""")


def test_writes_under_a_file_size_limit_leave_previous_files_byte_identical(tmp_path):
    """The adversarial pass's case: `prlimit --fsize=2000` while saving over a good model and writing predictions."""
    X, y = _fit_files(tmp_path)
    keep, out = tmp_path / "keep.drfm", tmp_path / "t.npy"
    assert main(["fit", "--X", str(X), "--y", str(y), "--param", "iters=1", "--save", str(keep)]) == 0
    np.save(out, np.arange(3.0))
    big = tmp_path / "X_big.npy"
    np.save(big, np.random.default_rng(1).normal(size=(1000, 5)))  # 8 kB of predictions
    good, old = keep.read_bytes(), out.read_bytes()
    assert len(good) > 2000
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {
        "fit": [sys.executable, "-c", _LIMITED, "fit", "--X", str(X), "--y", str(y), "--param", "iters=1",
                "--param", "n_threads=1", "--save", str(keep)],
        "predict": [sys.executable, "-c", _LIMITED, "predict", str(keep), str(big), "-o", str(out)],
    }
    for name, cmd in runs.items():
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 1, (name, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "previous file is unchanged" in lines[0], (name, proc.stderr)
        assert "written" not in proc.stdout
    assert keep.read_bytes() == good and out.read_bytes() == old and _leftovers(tmp_path) == []


def test_file_write_error_is_an_oserror_with_one_line(tmp_path):
    with pytest.raises(FileWriteError, match="does not exist|No such file"):
        with atomic_write(tmp_path / "missing-folder" / "f.bin") as fh:
            fh.write(b"x")


def test_sigint_during_fit_is_one_line_and_exit_130(tmp_path):
    X, y = _fit_files(tmp_path, n=4000, d=20)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "drfm.cli", "fit", "--X", str(X), "--y", str(y), "--param",
                             "iters=1000", "--param", "early_stopping=False", "--param", "n_threads=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(8)  # torch imported, the data read, the fit running
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["drfm fit: interrupted"], err


# ---------------------------------------------------------------------------------------------------------------------
# a resumed study keeps its settings
def test_reproduce_refuses_to_resume_with_other_settings(tmp_path, capsys, monkeypatch):
    from drfm.studies import reproduce as rp

    out = tmp_path / "study"
    base = ["reproduce", "--dataset", "digits", "--out", str(out), "--n-train", "200", "--epochs", "1",
            "--measure-every", "1", "--device", "cpu", "--no-baseline"]
    calls = []

    def stop(part, *a, **k):
        calls.append(part)
        raise KeyboardInterrupt

    monkeypatch.setattr(rp, "_run_part", stop)
    assert main([*base, "--depth", "1", "--seeds", "1"]) == 130
    assert json.loads((out / rp.SETTINGS_FILE).read_text())["depth"] == 1
    capsys.readouterr()
    assert main([*base, "--depth", "2", "--sigma", "0.1", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert "depth 1 there, 2 now" in err and "sigma 0.05 there, 0.1 now" in err and len(calls) == 1
    # the same settings (more seeds) resume
    assert main([*base, "--depth", "1", "--seeds", "2"]) == 130 and len(calls) == 2


# ---------------------------------------------------------------------------------------------------------------------
# CSV reading never guesses a header from data
def _csv(tmp_path, name, text, *, bom=False, crlf=False):
    p = tmp_path / name
    if crlf:
        text = text.replace("\n", "\r\n")
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return p


def _rows(n=10, d=3, seed=0):
    X = np.random.default_rng(seed).normal(size=(n, d))
    return X, "".join(",".join(f"{v:.6f}" for v in r) + "\n" for r in X)


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("header", [False, True])
def test_csv_bom_crlf_header_keep_every_row(tmp_path, bom, crlf, header):
    from drfm.data.io import read_array

    X, body = _rows()
    p = _csv(tmp_path, "x.csv", ("a,b,c\n" if header else "") + body, bom=bom, crlf=crlf)
    arr, names = read_array(str(p), "input")
    assert arr.shape == (10, 3) and np.allclose(arr, X, atol=1e-6)
    assert names == (["a", "b", "c"] if header else None)


def test_csv_quoted_numbers_and_blank_lines(tmp_path):
    from drfm.data.io import read_array

    p = _csv(tmp_path, "q.csv", '"x","y"\n"1.5","2"\n\n" 3",4e0\n')
    arr, names = read_array(str(p), "input")
    assert names == ["x", "y"] and arr.tolist() == [[1.5, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize("bad", ["x", "0x10", ""])
def test_a_bad_field_in_the_first_row_is_reported_not_taken_as_a_header(tmp_path, bad):
    from drfm.data.io import DataFileError, read_array

    _, body = _rows()
    p = _csv(tmp_path, "b.csv", f"0.1,{bad},0.3\n" + body)
    with pytest.raises(DataFileError, match="line 1, column 2") as info:
        read_array(str(p), "input")
    assert ("is empty" if bad == "" else f"'{bad}' is not a number") in str(info.value)
    # and the same further down, with the header's column name
    p = _csv(tmp_path, "c.csv", "a,b,c\n" + body + f"0.1,{bad},0.3\n")
    with pytest.raises(DataFileError, match=r"line 12, column 2 \('b'\)"):
        read_array(str(p), "input")


def test_header_only_and_explicit_header_flags(tmp_path, capsys):
    from drfm.data.io import DataFileError, read_array

    with pytest.raises(DataFileError, match="no data rows"):
        read_array(str(_csv(tmp_path, "h.csv", "a,b,c\n")), "input")
    with pytest.raises(DataFileError, match="no data rows"):
        read_array(str(_csv(tmp_path, "h2.csv", "a,b,c\n")), "input", header=True)
    # a header of numbers is only a header when the caller says so
    _, body = _rows()
    p = _csv(tmp_path, "n.csv", "1,2,3\n" + body)
    assert read_array(str(p), "input")[0].shape == (11, 3)
    arr, names = read_array(str(p), "input", header=True)
    assert arr.shape == (10, 3) and names == ["1", "2", "3"]
    # text only (a labels file): no header unless asked
    lab = _csv(tmp_path, "y.csv", "cat\ndog\ncat\n")
    assert read_array(str(lab), "--y", numeric=False)[0].shape == (3, 1)
    assert read_array(str(lab), "--y", numeric=False, header=True)[0].shape == (2, 1)


def test_predict_on_a_bom_csv_gives_one_prediction_per_row(tmp_path, capsys):
    X, y = _fit_files(tmp_path)
    keep = tmp_path / "m.drfm"
    assert main(["fit", "--X", str(X), "--y", str(y), "--param", "iters=1", "--param", "n_threads=1",
                 "--save", str(keep)]) == 0
    Xs, body = _rows(n=10, d=5, seed=3)
    p = _csv(tmp_path, "in.csv", body, bom=True)
    capsys.readouterr()
    assert main(["predict", str(keep), str(p), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)["predictions"]
    assert len(preds) == 10
    from drfm.data.models import load_model

    assert np.allclose(preds, load_model(keep).predict(Xs.round(6)), rtol=1e-5, atol=1e-6)
    # the first row bad: an error naming it, not 9 predictions
    p = _csv(tmp_path, "bad.csv", "0.1,x,0.3,0.4,0.5\n" + body)
    assert main(["predict", str(keep), str(p)]) == 2
    assert "line 1, column 2: 'x' is not a number" in capsys.readouterr().err


def test_fit_on_a_table_names_the_bad_feature_cell(tmp_path, capsys):
    X, _ = _rows(n=30, d=2)
    rows = [f"{a:.5f},{b:.5f},{'cat' if a > 0 else 'dog'}" for a, b in X]
    rows[4] = "0.1,,cat"
    p = _csv(tmp_path, "t.csv", "a,b,label\n" + "\n".join(rows) + "\n")
    assert main(["fit", "--data", str(p), "--param", "iters=1"]) == 2
    err = capsys.readouterr().err
    assert "data row 5, column 2 ('b'): is empty" in err, err


# ---------------------------------------------------------------------------------------------------------------------
# crafted model files: refused by the loader's own error, quickly and without allocating what they declare
def _model_file(tmp_path):
    from drfm import TorchMLPClassifier
    from drfm.data.models import save_model

    X = np.random.default_rng(0).normal(size=(60, 4))
    mlp = TorchMLPClassifier(1, 4, epochs=1, random_state=0).fit(X, (X[:, 0] > 0).astype(int))
    return save_model(mlp, tmp_path / "mlp.drfm")


def _split(path):
    data = path.read_bytes()
    first = data.index(b"\n") + 1
    second = data.index(b"\n", first) + 1
    return data[:first], json.loads(data[first:second]), data[second:]


def _with_members(path, out, edit_tree=None, members=None, header_edit=None):
    """A copy of a model file: its tree edited, its members replaced or added (raw bytes, optionally compressed)."""
    import io
    import zipfile

    magic, header, payload = _split(path)
    with zipfile.ZipFile(io.BytesIO(payload)) as z:
        raw = {i.filename: z.read(i) for i in z.infolist()}
    if edit_tree:
        tree = json.loads(np.load(io.BytesIO(raw["state.json.npy"])).tobytes().decode())
        buf = io.BytesIO()
        np.save(buf, np.frombuffer(json.dumps(edit_tree(tree)).encode(), dtype=np.uint8))
        raw["state.json.npy"] = buf.getvalue()
    entries = {name: (data, zipfile.ZIP_STORED) for name, data in raw.items()}
    entries.update(members or {})  # a member of the same name is replaced
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, (data, compress) in entries.items():
            z.writestr(name, data, compress_type=compress)
    if header_edit:
        header = header_edit(header)
    out.write_bytes(magic + json.dumps(header).encode() + b"\n" + buf.getvalue())
    return out


def _refused_fast(path, match):
    import tracemalloc

    from drfm.data.models import ModelFileError, load_model

    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ModelFileError, match=match):
            load_model(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0 and peak < 100 * 2**20, (time.perf_counter() - t0, peak)


def _npy_header_only(shape, dtype="<f4"):
    """A .npy member that declares ``shape`` but holds 16 bytes of data."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 16


def test_crafted_model_files_are_refused_quickly(tmp_path):
    import zipfile

    path = _model_file(tmp_path)
    # a zip-bomb member the loader never uses (300 MB of zeros in ~300 kB)
    bomb = _with_members(path, tmp_path / "bomb.drfm",
                         members={"extra.npy": (b"\0" * (300 * 2**20), zipfile.ZIP_DEFLATED)})
    assert bomb.stat().st_size < 5 * 2**20
    _refused_fast(bomb, "damaged.*compressed|damaged.*not one drfm writes")
    # an array member declaring 20 000 x 20 000 floats it does not hold
    _, _, payload = _split(path)
    import io

    with zipfile.ZipFile(io.BytesIO(payload)) as z:
        first_array = next(i.filename for i in z.infolist() if i.filename != "state.json.npy")
    huge = _with_members(path, tmp_path / "huge.drfm", members={first_array: (_npy_header_only((20000, 20000)),
                                                                              zipfile.ZIP_STORED)})
    _refused_fast(huge, r"declares shape \(20000, 20000\)")

    # a Linear layer declared 20 000 x 20 000 over small stored weights
    def widen(tree):
        text = json.dumps(tree)
        return json.loads(text.replace('"in_features": 4', '"in_features": 20000', 1)
                          .replace('"out_features": 4', '"out_features": 20000', 1))

    _refused_fast(_with_members(path, tmp_path / "wide.drfm", edit_tree=widen), "does not match its stored weights")
    # wrong types in the header and the tree
    _refused_fast(_with_members(path, tmp_path / "cls.drfm", header_edit=lambda h: {**h, "class": ["x"]}),
                  "not a drfm estimator")

    def shadow(tree):
        tree["state"]["__dict__"].append(["predict", 1])
        return tree

    _refused_fast(_with_members(path, tmp_path / "shadow.drfm", edit_tree=shadow), "names drfm does not write")

    def unknown_param(tree):
        tree["params"]["__dict__"].append(["no_such_param", 1])
        return tree

    _refused_fast(_with_members(path, tmp_path / "param.drfm", edit_tree=unknown_param), "does not have")


def test_a_damaged_file_from_another_version_names_both_versions(tmp_path):
    import zipfile

    from drfm import __version__

    path = _model_file(tmp_path)
    newer = _with_members(path, tmp_path / "newer.drfm", header_edit=lambda h: {**h, "drfm_version": "9.0.0"},
                          members={"new_thing.npy": (b"\0" * 64, zipfile.ZIP_STORED)})
    _refused_fast(newer, f"written by drfm 9.0.0 and this is drfm {__version__}")


# ---------------------------------------------------------------------------------------------------------------------
# spectra from the smaller side
def test_feature_spectrum_from_the_gram_side_equals_the_covariance_side():
    from drfm.collapse import metrics as C

    rng = np.random.default_rng(0)
    H = rng.normal(size=(40, 90)) @ np.diag(np.linspace(3, 0.1, 90))
    labels = rng.integers(0, 4, size=40)
    got = C.feature_spectrum(H, labels)  # N < p: the Gram side
    Hc = H - H.mean(0)
    Yc = np.eye(4)[labels]
    Yc = Yc - Yc.mean(0)
    ref = C._spectrum_of(Hc.T @ Hc / 40, Hc.T @ Yc, float(np.sum(Yc**2)), 40, 4)  # the p x p covariance
    assert got["eigenvalues"].shape == ref["eigenvalues"].shape == (90,)
    np.testing.assert_allclose(got["eigenvalues"], ref["eigenvalues"], atol=1e-10)
    np.testing.assert_allclose(got["label_share"][:39], ref["label_share"][:39], atol=1e-8)
    for key in ("participation_ratio", "mf_share", "n_above_1pct", "verdict"):
        assert got[key] == pytest.approx(ref[key], rel=1e-10) if isinstance(got[key], float) else got[key] == ref[key]
    assert C.effective_features(H, labels) == pytest.approx(ref["participation_ratio"], rel=1e-10)
    assert C.mf_share(H, labels) == pytest.approx(ref["mf_share"], rel=1e-10)
    # and the covariance side's eigenvalues-only route (N >= p)
    H2 = rng.normal(size=(120, 30))
    l2 = rng.integers(0, 3, size=120)
    assert C.effective_features(H2, l2) == pytest.approx(C.feature_spectrum(H2, l2)["participation_ratio"])


def test_feature_spectrum_of_20000_features_is_quick():
    from drfm.collapse import metrics as C

    rng = np.random.default_rng(0)
    H = rng.normal(size=(1000, 20000)).astype(np.float32)
    labels = rng.integers(0, 10, size=1000)
    t0 = time.perf_counter()
    pr, mf = C.effective_features(H, labels), C.mf_share(H, labels)
    spec = C.feature_spectrum(H, labels, top=20)
    assert time.perf_counter() - t0 < 30
    # 1000 random directions: close to flat, 999 nonzero eigenvalues (centring removes one)
    assert 500 < pr < 1000 and 0 < mf < 0.05 and len(spec["eigenvalues"]) == 20


# ---------------------------------------------------------------------------------------------------------------------
# silent or misleading results
def test_float32_underflow_of_a_feature_is_an_error():
    from drfm import RFMRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3))
    with pytest.raises(ValueError, match="below float32's smallest normal number.*column 0"):
        RFMRegressor(iters=1).fit(X * 1e-50, X[:, 0])
    # float64 keeps such values
    RFMRegressor(iters=0, dtype="float64").fit(X * 1e-50, X[:, 0])
    # the check is the training data's: a row to predict may hold a value that rounds to 0, alone or in a batch
    model = RFMRegressor(iters=0).fit(X, X[:, 0])
    row = X[:1].copy()
    row[0, 0] = 1e-45
    assert np.isfinite(model.predict(row)).all()


@pytest.mark.parametrize("sigma, words", [(1e-300, "too small"), (1e300, "overflow")])
def test_deep_rfm_sigma_far_out_of_scale_names_sigma(sigma, words):
    from drfm import DeepRFMClassifier

    X = np.random.default_rng(0).normal(size=(60, 4))
    y = (X[:, 0] > 0).astype(int)
    with pytest.raises(ValueError, match=f"layer 0.*sigma={re.escape(f'{sigma:g}')}.*{words}"):
        DeepRFMClassifier(2, sigma=sigma, random_state=0).fit(X, y)


def test_metrics_as_one_name_and_early_rejection(tmp_path, capsys, monkeypatch):
    from drfm import DeepRFMClassifier
    from drfm.collapse import check_metrics, collapse_report
    from drfm.studies import experiments

    assert check_metrics("nc1") == ("nc1",)
    with pytest.raises(TypeError, match="names"):
        check_metrics([1, 2])
    X = np.random.default_rng(0).normal(size=(60, 4))
    y = (X[:, 0] > 0).astype(int)
    model = DeepRFMClassifier(1, random_state=0).fit(X, y)
    assert {r["metric"] for r in collapse_report(model, X, y, metrics="nc1").rows} == {"nc1"}
    # `drfm collapse --metrics bogus`: refused before the data are read or a model is fitted
    monkeypatch.setattr(experiments, "DeepRFMClassifier", None, raising=False)
    fitted = []
    import drfm.deep

    monkeypatch.setattr(drfm.deep.DeepRFMClassifier, "fit", lambda self, *a, **k: fitted.append(1))
    assert main(["collapse", "--dataset", "digits", "--metrics", "bogus"]) == 2
    assert "unknown metrics ['bogus']" in capsys.readouterr().err and not fitted


def test_unfitted_models_give_not_fitted_errors():
    from sklearn.exceptions import NotFittedError

    from drfm import RFMRegressor, TorchMLPClassifier
    from drfm.collapse import collapse_report
    from drfm.networks.analysis import network_agop

    X = np.zeros((4, 2))
    with pytest.raises(NotFittedError):
        collapse_report(RFMRegressor(), X, np.arange(4))
    with pytest.raises(NotFittedError):
        network_agop(TorchMLPClassifier(), X, 0)


def test_random_state_none_leaves_numpys_global_state_alone():
    from drfm import RFMRegressor

    X = np.random.default_rng(0).normal(size=(40, 3))
    np.random.seed(123)
    before = np.random.get_state()[1].copy(), np.random.get_state()[2]
    RFMRegressor(iters=1, random_state=None).fit(X, X[:, 0])
    after = np.random.get_state()
    assert np.array_equal(before[0], after[1]) and before[1] == after[2]


def test_very_many_iterations_warn():
    from drfm import RFMRegressor

    X = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.warns(UserWarning, match="iters=1001"):
        RFMRegressor(iters=1001, early_stopping=True, validation_fraction=0.25, n_iter_no_change=1).fit(X, X[:, 0])


def test_deep_rfm_whose_later_layer_cannot_fit_is_refused_before_layer_0(monkeypatch):
    import drfm.deep
    from drfm import DeepRFMClassifier

    X = np.random.default_rng(0).normal(size=(200, 10))
    y = (X[:, 0] > 0).astype(int)
    calls = []
    real = drfm.deep.run_rfm
    monkeypatch.setattr(drfm.deep, "run_rfm", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    # layer 1's input is 4096 wide: its d x d feature matrices alone (2 x 128 MiB in float64) exceed the budget
    with pytest.raises(ValueError, match="layer 1.*memory_budget"):
        DeepRFMClassifier(2, width=4096, memory_budget=96 * 2**20, random_state=0).fit(X, y)
    assert calls == []  # refused before layer 0 was fitted
    DeepRFMClassifier(2, width=64, memory_budget=96 * 2**20, random_state=0).fit(X, y)
    assert len(calls) == 2
