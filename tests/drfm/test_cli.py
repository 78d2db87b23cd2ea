import json
import subprocess
import sys
from pathlib import Path

import pytest

from drfm.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_demo_json(capsys):
    assert main(["demo", "--iters", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dataset"] == "digits" and res["test_accuracy"] > 0.9
    assert len(res["top_agop_eigenvalues"]) == 8 and res["top_agop_eigenvalues"][0] > 0


def test_demo_table(capsys):
    assert main(["demo", "--iters", "1"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "top AGOP eigvals" in out


def test_datasets_lists_offline_sets(capsys):
    assert main(["datasets", "--json"]) == 0
    names = json.loads(capsys.readouterr().out)
    assert {"digits", "lowrank", "classif10"} <= set(names)


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
