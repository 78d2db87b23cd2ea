import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drfm.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_demo_json(capsys):
    assert main(["demo", "--iters", "1", "--depth", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dataset"] == "digits" and res["test_accuracy"] > 0.9
    assert len(res["top_agop_eigenvalues"]) == 8 and res["top_agop_eigenvalues"][0] > 0
    rows = res["deep_rfm"]["report"]["rows"]
    assert {r["stage"] for r in rows} == {"input", "linear", "nonlinear"} and len(rows) == 3 * 3 * 2


def test_demo_table(capsys):
    assert main(["demo", "--iters", "1", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "top AGOP eigvals" in out and "| deep_rfm | 1 |" in out


def test_collapse_command_writes_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "nc.png"
    argv = ["collapse", "--dataset", "gaussian", "--depth", "2", "--feature-map", "relu", "--n-train", "400",
            "--metrics", "nc1", "nc2", "nc1_papyan", "--out", str(out), "--plot", str(png)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "nc1_papyan (linear)" in text and "linear stages" in text
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 2 * 3 * 3 and png.stat().st_size > 1000


def test_collapse_regression_dataset_is_a_usage_error(capsys):
    assert main(["collapse", "--dataset", "lowrank", "--depth", "1"]) == 2
    assert "regression" in capsys.readouterr().err


def test_datasets_lists_offline_sets(capsys):
    assert main(["datasets", "--json"]) == 0
    names = json.loads(capsys.readouterr().out)
    assert {"digits", "lowrank", "classif10", "gaussian", "mnist5k", "mnist1d"} <= set(names)


@pytest.mark.parametrize(
    "argv,needle",
    [(["demo", "--device", "tpu"], "'device'"), (["bench", "no-such-suite"], "unknown benchmark suite")],
)
def test_bad_arguments_exit_2_one_line(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_bench_quick_writes_json_lines(tmp_path, capsys):
    out = tmp_path / "b.jsonl"
    assert main(["bench", "rfm", "--quick", "--out", str(out), "--json"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 7 and all("error" not in r for r in lines)
    fits = [r for r in lines if r["kind"] == "fit" and "skipped" not in r]
    assert {"drfm.RFMRegressor", "sklearn.KernelRidge", "sklearn.MLPClassifier"} <= {r["model"] for r in fits}
    xrfm = [r for r in lines if r.get("model") == "xrfm.xRFM"]
    assert len(xrfm) == 1 and ("skipped" in xrfm[0] or xrfm[0]["score"] > 0)  # optional peer
    mlp = [r for r in fits if r["model"] == "sklearn.MLPClassifier"][0]
    assert mlp["metric"] == "accuracy" and mlp["score"] > 0.5  # 5 Gaussian classes: chance is 0.2
    for r in fits:
        assert r["peak_rss_bytes"] > 0 and r["fit_seconds"] > 0 and "torch" in r["env"]
    build = [r for r in lines if r["kind"] == "kernel_build"][0]
    assert build["ratio"] > 0
    # a whole fit's phases against their floors, on the exact path and the m-centre one
    phases = [r for r in lines if r["kind"] == "phases"]
    assert {r["path"] for r in phases} == {"exact", "m-centre"}
    for r in phases:
        ph = r["phases"]
        assert {"kernel", "solve", "agop", "predict"} <= set(ph) and r["kernel_work"]["gemm_flops"] > 0
        for name in ("kernel", "solve", "agop", "predict"):
            assert ph[name]["floor_seconds"] > 0 and ph[name]["ratio"] == ph[name]["seconds"] / ph[name]["floor_seconds"]
            assert ph[name]["ratio"] <= 2.0 or ph[name]["note"]
        fit_phases = sum(v["seconds"] for k, v in ph.items() if k != "predict") - r["phases"]["kernel"]["seconds"]
        assert 0 < fit_phases < r["fit_seconds"]
    assert any(s.startswith("nystrom") for s in next(r for r in phases if r["path"] == "m-centre")["solvers"])


def test_bench_records_a_case_over_its_timeout_and_goes_on(tmp_path):
    # 0.05 s is less than any case needs (the harness process alone imports torch): every case times out, each
    # is recorded as an error line and the run still ends normally
    out = tmp_path / "t.jsonl"
    res = main(["bench", "solvers", "--quick", "--timeout", "0.05", "--out", str(out)])
    assert res == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 5 and all("timed out after 0.05 s" in r["error"] for r in lines)


def test_bench_names_a_killed_case(tmp_path):
    # a case whose process is killed (as by the out-of-memory killer) is recorded as such, not by its last log line
    suite = tmp_path / "killer.py"
    suite.write_text(
        "import os, signal, sys\n"
        "def cases(*, quick=False, sizes=None, device='auto'):\n"
        "    return [{'suite': 'killer', 'kind': 'fit', 'model': 'm', 'dataset': 'x', 'n': 1}]\n"
        "def run_case(case):\n"
        "    print('Warning: something unrelated', file=sys.stderr, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    from drfm.bench import run_suite, select_cases

    rec = run_suite(suite, select_cases(suite), tmp_path / "k.jsonl", timeout=120)[0]
    assert rec["returncode"] == -9 and rec["error"].startswith("killed by SIGKILL") and "memory" in rec["error"]


def test_console_script_entry_point():
    res = subprocess.run([sys.executable, "-m", "drfm.cli", "datasets"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "digits" in res.stdout


# ---------------------------------------------------------------------------------------------------------------------
# fit / predict / bench --compare
@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "Xnew.npy", X[:25] + 0.1)
    np.savetxt(tmp_path / "table.csv", np.c_[X, y], delimiter=",", header="a,b,c,d,label", comments="")
    np.savetxt(tmp_path / "Xnew.csv", X[:25] + 0.1, delimiter=",")
    return tmp_path, X, y


def test_fit_save_predict_round_trip_matches_python_api(files, capsys):
    from drfm import RFMClassifier
    from drfm.persistence import load_model

    d, X, y = files
    argv = ["fit", "--X", str(d / "X.npy"), "--y", str(d / "y.npy"), "--param", "iters=2", "--param",
            "bandwidth=5.0", "--test-size", "0", "--save", str(d / "m.pkl"), "--json", "--device", "cpu"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "RFMClassifier" and res["task"] == "classification" and res["saved"]
    assert res["params"]["iters"] == 2 and res["params"]["bandwidth"] == 5.0
    ref = RFMClassifier(iters=2, bandwidth=5.0, random_state=0, device="cpu").fit(X, y)
    expected = ref.predict(np.load(d / "Xnew.npy"))
    # to a .npy file, to a .csv file, and to stdout (JSON)
    assert main(["predict", str(d / "m.pkl"), str(d / "Xnew.npy"), "-o", str(d / "p.npy")]) == 0
    np.testing.assert_array_equal(np.load(d / "p.npy"), expected)
    assert main(["predict", str(d / "m.pkl"), str(d / "Xnew.csv"), "-o", str(d / "p.csv")]) == 0
    np.testing.assert_array_equal(np.loadtxt(d / "p.csv", delimiter=",").astype(int), expected)
    capsys.readouterr()
    assert main(["predict", str(d / "m.pkl"), str(d / "Xnew.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"] == expected.tolist()
    model = load_model(d / "m.pkl")
    np.testing.assert_allclose(model.decision_function(X), ref.decision_function(X))


def test_fit_csv_table_with_named_target_and_split(files, capsys):
    d, X, y = files
    assert main(["fit", "--data", str(d / "table.csv"), "--target", "label", "--model", "deep-rfm", "--param",
                 "depth=2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "DeepRFMClassifier" and res["n_features"] == 4
    assert res["n_train"] == 160 and res["n_test"] == 40 and 0 <= res["test_score"] <= 1


def test_fit_regression_dataset_and_mlp(tmp_path, capsys):
    assert main(["fit", "--dataset", "lowrank", "--n-train", "300", "--param", "iters=1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "RFMRegressor" and res["metric"] == "r2"
    path = tmp_path / "mlp.pkl"
    assert main(["fit", "--dataset", "gaussian", "--n-train", "200", "--model", "mlp", "--param", "depth=1",
                 "--param", "width=8", "--param", "epochs=2", "--save", str(path)]) == 0
    assert "TorchMLPClassifier" in capsys.readouterr().out
    from drfm.persistence import load_model, read_header

    assert read_header(path)["class"] == "drfm.mlp.TorchMLPClassifier"
    assert load_model(path).network_[0].weight.device.type == "cpu"
    # a file written before the class moved from drfm.dnn (header naming the old module) still loads
    raw = path.read_bytes().replace(b'"drfm.mlp.TorchMLPClassifier"', b'"drfm.dnn.TorchMLPClassifier"', 1)
    old = tmp_path / "old.pkl"
    old.write_bytes(raw)
    assert type(load_model(old)).__name__ == "TorchMLPClassifier"


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err.strip()
    assert needle in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_predict_refuses_files_that_are_not_drfm_models(files, capsys):
    import pickle

    d, X, y = files
    with open(d / "other.pkl", "wb") as fh:
        pickle.dump({"not": "a model"}, fh)
    assert main(["predict", str(d / "other.pkl"), str(d / "Xnew.npy")]) == 2
    _one_line_error(capsys, "is not a drfm model file")
    assert main(["predict", str(d / "missing.pkl"), str(d / "Xnew.npy")]) == 2
    _one_line_error(capsys, "does not exist")
    # a real model file cut short: the header passes, the pickle does not
    assert main(["fit", "--X", str(d / "X.npy"), "--y", str(d / "y.npy"), "--param", "iters=1", "--save",
                 str(d / "m.pkl")]) == 0
    capsys.readouterr()
    data = (d / "m.pkl").read_bytes()
    (d / "cut.pkl").write_bytes(data[: len(data) // 2])
    assert main(["predict", str(d / "cut.pkl"), str(d / "Xnew.npy")]) == 2
    _one_line_error(capsys, "damaged drfm model file")
    np.save(d / "wide.npy", np.zeros((3, 9)))
    assert main(["predict", str(d / "m.pkl"), str(d / "wide.npy")]) == 2
    _one_line_error(capsys, "has 9 columns but the model expects 4")


@pytest.mark.parametrize("argv, needle", [
    (["fit", "--X", "{d}/nothere.npy", "--y", "{d}/y.npy"], "does not exist"),
    (["fit", "--X", "{d}/corrupt.npy", "--y", "{d}/y.npy"], "not a readable .npy"),
    (["fit", "--X", "{d}/X.txtx", "--y", "{d}/y.npy"], "must be .npy or .csv"),
    (["fit", "--X", "{d}/X.npy", "--y", "{d}/short.npy"], "200 rows but targets have 5"),
    (["fit", "--X", "{d}/X.npy", "--y", "{d}/y.npy", "--param", "nope=1"], "unknown parameter(s) nope"),
    (["fit", "--X", "{d}/X.npy", "--y", "{d}/y.npy", "--param", "iters"], "KEY=VALUE"),
    (["fit", "--X", "{d}/X.npy", "--y", "{d}/y.npy", "--param", "iters=-1"], "'iters' parameter"),
    (["fit", "--dataset", "digits", "--X", "{d}/X.npy"], "exactly one data source"),
    (["fit", "--data", "{d}/ragged.csv"], "line 2 has 2 fields, line 1 has 3"),
    (["fit", "--dataset", "lowrank", "--model", "mlp"], "classification only"),
    (["bench", "--compare", "{d}/nothere.jsonl", "{d}/nothere.jsonl"], "does not exist"),
    (["bench", "--compare", "{d}/y.npy", "{d}/y.npy"], "is not JSON lines text"),
    (["bench", "--compare", "{d}/ragged.csv", "{d}/ragged.csv"], "line 1 is not JSON"),
    (["bench"], "name a SUITE"),
    (["bench", "rfm", "--only", "no-such-model"], "no case of suite 'rfm' matches"),
])
def test_bad_files_and_arguments_exit_2(files, capsys, argv, needle):
    d, X, y = files
    (d / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    (d / "X.txtx").write_text("1,2\n")
    np.save(d / "short.npy", y[:5])
    (d / "ragged.csv").write_text("1,2,3\n4,5\n")
    assert main([a.format(d=d) for a in argv]) == 2
    _one_line_error(capsys, needle)


def test_bench_compare_prints_ratios(tmp_path, capsys):
    old = {"suite": "rfm", "kind": "fit", "model": "drfm.RFMRegressor", "dataset": "lowrank", "n": 4000,
           "device": "cpu", "fit_seconds": 10.0, "predict_seconds": 1.0, "score": 0.9, "peak_rss_bytes": 100}
    new = {**old, "fit_seconds": 5.0, "score": 0.99, "peak_rss_bytes": 150}
    other = {**old, "n": 999}
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(other) + "\n")
    (tmp_path / "new.jsonl").write_text(json.dumps(new) + "\n")
    assert main(["bench", "--compare", str(tmp_path / "old.jsonl"), str(tmp_path / "new.jsonl"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    r = rows[0]["ratios"]
    assert r["fit_seconds"] == pytest.approx(0.5) and r["score"] == pytest.approx(1.1) and r["peak_rss_bytes"] == 1.5
    assert main(["bench", "--compare", str(tmp_path / "old.jsonl"), str(tmp_path / "new.jsonl")]) == 0
    assert "fit_seconds 0.500" in capsys.readouterr().out


def test_compare_command(tmp_path, capsys):
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    argv = ["compare", "--dataset", "gaussian", "--n-train", "300", "--depth", "2", "--width", "16", "--epochs", "3",
            "--lr", "1e-2", "--measure-every", "3", "--out", str(out), "--plot", str(png)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Deep RFM   test accuracy" in text and "NFA corr" in text and "| 2 |" in text
    data = json.loads(out.read_text())
    assert {r["model"] for r in data["rows"]} == {"deep_rfm", "mlp", "mlp_init", "deep_rfm_vs_mlp"}
    assert png.stat().st_size > 1000 and (tmp_path / "c-epochs.png").stat().st_size > 1000


def test_help_texts(capsys):
    for cmd in ("fit", "predict", "compare", "bench", "collapse"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: drfm " + cmd)
        if cmd == "predict":
            assert "trust" in out


@pytest.mark.parametrize("name", ["2026-11-24-rfm-cpu2core.jsonl", "2026-11-24-solvers-cpu2core.jsonl",
                                  "2026-11-24-compare-cpu2core.jsonl"])
def test_committed_reference_results_compare(name, tmp_path, capsys):
    # the reference results ship with the repository (not ignored), and --compare reads them: a file against a copy
    # of its first record with doubled fit time gives ratio 2 on that run and matches nothing else
    ref = ROOT / "benchmarks" / "results" / name
    records = [json.loads(line) for line in ref.read_text().splitlines() if line.strip()]
    assert records and all("env" in r for r in records if "error" not in r and "skipped" not in r)
    first = next(r for r in records if "fit_seconds" in r)
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({**first, "fit_seconds": 2 * first["fit_seconds"]}) + "\n")
    assert main(["bench", "--compare", str(ref), str(new), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["ratios"]["fit_seconds"] == pytest.approx(2.0)


def test_version_help_descriptions_and_param_keys(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("drfm ")
    for command in ("demo", "collapse", "fit", "predict", "compare", "datasets", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        # a description paragraph between the usage and the options
        assert text.split("\n\n")[1].strip() and not text.split("\n\n")[1].startswith("options"), command
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "early_stopping" in capsys.readouterr().out.replace("\n", " ").replace("  ", "")


def test_compare_takes_metrics_and_checks_them_first(capsys):
    assert main(["compare", "--dataset", "digits", "--metrics", "nc9"]) == 2
    assert "unknown metrics ['nc9']" in capsys.readouterr().err
    assert main(["compare", "--dataset", "digits", "--depth", "1", "--epochs", "2", "--width", "16",
                 "--metrics", "nc1", "effective_features", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {r["metric"] for r in res["report"]["rows"]} >= {"nc1", "effective_features"}


def test_a_closed_pipe_is_not_a_traceback():
    # `drfm datasets --json | head -c 1`: the reader goes away before drfm writes
    proc = subprocess.Popen([sys.executable, "-m", "drfm.cli", "datasets", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_building_the_parser_constructs_no_model(monkeypatch, capsys):
    # `drfm --help` and every subcommand's parser are built without constructing an estimator; `fit --help` lists
    # the parameters only when shown
    from drfm.cli import build_parser
    from drfm.rfm import _BaseRFM

    def refuse(*a, **k):
        raise AssertionError("a model was constructed while building the parser")

    monkeypatch.setattr(_BaseRFM, "__init__", refuse)
    build_parser()
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "usage: drfm predict" in capsys.readouterr().out


def test_integer_labels_from_a_csv_stay_integers(tmp_path, capsys):
    """Issue 31: classes read from a CSV as '0', '1', '2' are ints in the model, its header and every output."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 3))
    lab = np.digitize(X[:, 0], [-0.4, 0.4])
    (tmp_path / "t.csv").write_text("a,b,c,label\n" + "".join(
        f"{a:.5f},{b:.5f},{c:.5f},{k}\n" for (a, b, c), k in zip(X, lab)))
    model = tmp_path / "m.drfm"
    assert main(["fit", "--data", str(tmp_path / "t.csv"), "--param", "iters=1", "--param", "early_stopping=false",
                 "--save", str(model)]) == 0
    from drfm.data.models import load_model, read_header

    classes = read_header(model)["classes"]
    assert classes == [0, 1, 2] and all(type(c) is int for c in classes)
    assert load_model(model).get_params()["early_stopping"] is False
    np.save(tmp_path / "x.npy", X[:4])
    capsys.readouterr()
    assert main(["predict", str(model), str(tmp_path / "x.npy"), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)["predictions"]
    assert all(isinstance(p, int) for p in preds)
    assert main(["predict", str(model), str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.csv")]) == 0
    assert all(line.strip().isdigit() for line in (tmp_path / "p.csv").read_text().splitlines())


def test_warnings_in_the_cli_are_one_line_without_source(tmp_path):
    """Issue 31: a warning shows as `drfm CMD: Category: message`, not a source path and a code line."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)) * 1e4  # unscaled: the kernel is nearly the identity at bandwidth 10
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", X[:, 0])
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "drfm.cli", "fit", "--X", str(tmp_path / "X.npy"), "--y",
                           str(tmp_path / "y.npy"), "--param", "iters=0", "--param", "n_threads=1"],
                          capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("drfm fit: ") for ln in lines), proc.stderr
    assert any("KernelScaleWarning" in ln for ln in lines) and ".py:" not in proc.stderr
    assert "--standardize" in proc.stderr and "standardize=True" not in proc.stderr  # advice this command can take


# --- the first hour (#31): whole errors, data folders, progress on a terminal, threads, advice in CLI spelling ---

def test_missing_dataset_error_is_whole(tmp_path, capsys, monkeypatch):
    # the folders searched and how to get the files reach the user (indented below the error line), not only the
    # first line of the message
    monkeypatch.delenv("DRFM_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main(["fit", "--dataset", "mnist", "--data-home", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.rstrip().splitlines()
    assert err[0].startswith("drfm fit: error: dataset 'mnist' was not found in any of:"), err
    assert all(line.startswith("  ") for line in err[1:]) and len(err) > 3, err
    text = "\n".join(err)
    assert str(tmp_path / "nowhere" / "mnist") in text and "IDX files" in text and "--data-home" in text


def test_datasets_lists_image_sets_and_where(tmp_path, capsys, monkeypatch):
    from tests.drfm.test_localdata import write_idx_set

    monkeypatch.delenv("DRFM_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_idx_set(tmp_path / "data" / "mnist")
    assert main(["datasets", "--json", "--data-home", str(tmp_path / "data")]) == 0
    names = json.loads(capsys.readouterr().out)
    assert "found in " + str((tmp_path / "data" / "mnist").resolve()) in names["mnist"]
    assert "not found in " + str(tmp_path / "data") in names["fashion-mnist"] and "--data-home" in names["cifar10"]


def test_unknown_dataset_names_the_local_image_sets(capsys):
    assert main(["fit", "--dataset", "no-such-set"]) == 2
    err = capsys.readouterr().err
    assert "mnist, fashion-mnist, cifar10" in err and "network" not in err.split("svhn")[0]


def test_bench_all_cases_skipped_is_an_error_with_the_reason(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DRFM_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = tmp_path / "r.jsonl"
    code = main(["bench", "rfm", "--only", "mnist", "fit", "RFMClassifier", "--n", "100", "--data-home",
                 str(tmp_path / "nowhere"), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "was skipped" in err and str(tmp_path / "nowhere") in err, err
    assert out.is_file() and all("skipped" in json.loads(line) for line in out.read_text().splitlines())


def _stderr_of(argv, *, terminal):
    """stderr of `python -m drfm.cli ARGV`, written to a pseudo-terminal or to a pipe."""
    import pty

    root = Path(__file__).resolve().parents[2]
    if not terminal:
        proc = subprocess.run([sys.executable, "-m", "drfm.cli", *argv], capture_output=True, text=True, cwd=root,
                              timeout=300)
        return proc.returncode, proc.stderr
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    # a terminal 120 columns wide (a new pseudo-terminal has 0, and progress bars fit themselves to the width)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "drfm.cli", *argv], stdout=subprocess.DEVNULL, stderr=follower,
                            cwd=root)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=300), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_by_default_on_a_terminal_only(terminal):
    argv = ["fit", "--dataset", "digits", "--param", "iters=1", "--threads", "1"]
    code, err = _stderr_of(argv, terminal=terminal)
    assert code == 0, err
    assert ("solve/s" in err or "s/solve" in err) == terminal, err
    if terminal:  # --quiet silences it
        code, err = _stderr_of(argv + ["--quiet"], terminal=True)
        assert code == 0 and "solve" not in err, err


def test_threads_option_holds_for_the_whole_command(monkeypatch):
    import argparse

    import torch

    from drfm.cli import _run

    seen = []
    args = argparse.Namespace(threads=1, command="demo", func=lambda a: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    _run(args)
    assert seen == [1] and torch.get_num_threads() == before


def test_library_log_warning_is_one_cli_line(capsys, monkeypatch):
    # a logged warning of the library (e.g. contention) reaches the user as one line in the command's spelling
    import logging

    from drfm.cli import datasets as datasets_cmd

    def noisy(args):
        logging.getLogger("drfm.rfm").warning("busy cores: pass n_threads='auto' (idle cores) or n_threads=1.")
        return {"digits": "x"}

    monkeypatch.setattr(datasets_cmd, "cmd_datasets", noisy)
    assert main(["datasets"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["drfm datasets: warning: busy cores: pass --threads auto (idle cores) or --threads 1."], err


def test_standardize_flag(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3)) * np.array([1e4, 1.0, 1e-3])
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", X[:, 1])
    argv = ["fit", "--X", str(tmp_path / "X.npy"), "--y", str(tmp_path / "y.npy"), "--param", "iters=1", "--json"]
    assert main(argv + ["--standardize"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["params"]["standardize"] is True
    # every model family has the parameter (a Deep RFM standardises its input before the first layer)
    base = ["fit", "--X", str(tmp_path / "X.npy"), "--y", str(tmp_path / "y.npy"), "--json"]
    assert main(base + ["--standardize", "--model", "deep-rfm", "--param", "depth=1"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["standardize"] is True


def test_csv_text_columns_are_categorical_features(tmp_path, capsys):
    # a column of text in a CSV is a categorical feature: `drfm fit` passes it to RFM as one (one-hot block), the
    # saved model reads the same column as text in `drfm predict`; other models say what to do
    rng = np.random.default_rng(0)
    colour = rng.choice(["red", "green", "blue"], 120)
    a = rng.normal(size=120)
    label = (colour == "red").astype(int)
    lines = ["a,colour,label"] + [f"{x:.4f},{c},{t}" for x, c, t in zip(a, colour, label)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    model = tmp_path / "m.drfm"
    assert main(["fit", "--data", str(tmp_path / "t.csv"), "--target", "label", "--param", "iters=1",
                 "--save", str(model), "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["params"]["categorical_features"] == [1] and res["test_score"] == 1.0
    (tmp_path / "new.csv").write_text("a,colour\n0.1,red\n-0.3,blue\n0.2,green\n")
    assert main(["predict", str(model), str(tmp_path / "new.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"] == [1, 0, 0]
    assert main(["fit", "--data", str(tmp_path / "t.csv"), "--target", "label", "--model", "mlp"]) == 2
    assert "'colour' hold text" in capsys.readouterr().err
    (tmp_path / "gap.csv").write_text("a,colour,label\n1,red,0\n2,,1\n3,blue,0\n")
    assert main(["fit", "--data", str(tmp_path / "gap.csv"), "--target", "label"]) == 2
    err = capsys.readouterr().err
    assert "data row 2, column 2 ('colour'): is empty (missing values are not supported" in err, err
