import json
import subprocess
import sys
from pathlib import Path

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
    assert len(lines) == 3 and all("error" not in r for r in lines)
    fits = [r for r in lines if r["kind"] == "fit"]
    assert {r["model"] for r in fits} == {"drfm.RFMRegressor", "sklearn.KernelRidge"}
    for r in fits:
        assert r["peak_rss_bytes"] > 0 and r["fit_seconds"] > 0 and "torch" in r["env"]
    build = [r for r in lines if r["kind"] == "kernel_build"][0]
    assert build["ratio"] > 0


def test_console_script_entry_point():
    res = subprocess.run([sys.executable, "-m", "drfm.cli", "datasets"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "digits" in res.stdout
