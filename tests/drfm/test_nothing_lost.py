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
