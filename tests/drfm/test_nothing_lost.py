"""Nothing lost, nothing silently wrong (issue 30): fault injection on every file drfm writes, CSV edge cases with
exact row counts, resumes that refuse mixed settings, crafted model files, bounded resources."""
import errno
import json
import os
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
                             "iters=100000", "--param", "early_stopping=False", "--param", "n_threads=1"],
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
