"""Defects a real user hits first (the reliability issue), one test per defect."""
import json
import math

import numpy as np
import pytest

from drfm import DeepRFMClassifier, RFMRegressor
from drfm.cli import main
from drfm.collapse import CollapseReport


def _table(path, header=True, label_text=True, n=120):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 4))
    labels = np.where(X[:, 0] > 0, "cat", "dog") if label_text else (X[:, 0] > 0).astype(int)
    with open(path, "w") as fh:
        if header:
            fh.write("a,b,c,d,label\n")
        for row, lab in zip(X, labels):
            fh.write(",".join(f"{v:.5f}" for v in row) + f",{lab}\n")
    return path


# 1. the README's own example: a CSV with a header and a text label column
@pytest.mark.parametrize("target", [["--target", "label"], [], ["--target", "4"], ["--target", "-1"]])
def test_fit_csv_with_header_and_text_labels(tmp_path, capsys, target):
    path = _table(tmp_path / "table.csv")
    assert main(["fit", "--data", str(path), *target, "--json", "--param", "iters=1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["task"] == "classification" and res["n_features"] == 4 and res["test_score"] > 0.8


def test_header_detection_does_not_eat_a_data_row(tmp_path):
    from drfm.io import read_array

    arr, names = read_array(str(_table(tmp_path / "h.csv")), "--data", numeric=False)
    assert names == ["a", "b", "c", "d", "label"] and arr.shape == (120, 5)
    arr, names = read_array(str(_table(tmp_path / "n.csv", header=False)), "--data", numeric=False)
    assert names is None and arr.shape == (120, 5)
    arr, names = read_array(str(_table(tmp_path / "i.csv", label_text=False)), "--data")
    assert names == ["a", "b", "c", "d", "label"] and arr.shape == (120, 5) and arr.dtype == np.float64


# 2. an index beyond the table is an error, not a wrap-around onto another column
@pytest.mark.parametrize("index", ["5", "7", "-6"])
def test_target_index_out_of_range_is_an_error(tmp_path, capsys, index):
    path = _table(tmp_path / "table.csv")
    assert main(["fit", "--data", str(path), "--target", index]) == 2
    err = capsys.readouterr().err.strip()
    assert "out of range" in err and "5 columns" in err and len(err.splitlines()) == 1


def _report(values_by_layer):
    rep = CollapseReport(meta={})
    for layer, values in enumerate(values_by_layer):
        for stage, v in zip(("input", "linear", "nonlinear"), values):
            rep.add(model="m", layer=layer, stage=stage, metric="nc1", value=v, n_samples=10)
    return rep


# 6. a dead layer (an infinite value) does not break the report
def test_report_with_infinite_values(tmp_path):
    rep = _report([(1.0, 0.5, 0.6), (1.0, math.inf, 2.0), (math.inf, math.inf, math.inf)])
    text = rep.summary()
    assert "layer(s) 1, 2 left out of the sums" in text
    shares = rep.linear_share()
    assert [s["layer"] for s in shares] == [0]
    data = json.loads(rep.to_json())  # standard JSON: infinities are written as null
    assert any(r["value"] is None for r in data["rows"])
    rep.to_json(tmp_path / "r.json")
    assert rep.to_markdown().count("inf") >= 1


# 10. the summary's words follow the numbers
def test_summary_says_no_net_collapse_when_the_metric_rose():
    rep = _report([(1.68, 1.0, 1.70), (1.70, 1.2, 1.74)])
    text = rep.summary()
    assert "no net collapse" in text and "all of the net collapse" not in text
    # a tiny net change has no meaningful linear share
    tiny = _report([(1.0, 0.5, 0.998)])
    assert tiny.linear_share()[0]["linear_share"] is None
    clear = _report([(1.0, 0.1, 0.2)])
    assert clear.linear_share()[0]["linear_share"] == pytest.approx(1 / (1 - math.log10(2)))


# 8. unclear inputs get a message naming the argument
def test_transform_layer_must_be_an_int():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(80, 5)), np.arange(80) % 2
    m = DeepRFMClassifier(2, width=8, random_state=0).fit(X, y)
    for bad in (0.7, True, "1"):
        with pytest.raises(TypeError, match="layer must be an int"):
            m.transform(X, layer=bad)
    np.testing.assert_array_equal(m.transform(X, layer=np.int64(0)), m.transform(X, layer=0))


def test_negative_random_state_names_the_parameter():
    X = np.random.default_rng(0).normal(size=(30, 3))
    with pytest.raises(ValueError, match="The 'random_state' parameter of RFMRegressor"):
        RFMRegressor(random_state=-1).fit(X, X[:, 0])
