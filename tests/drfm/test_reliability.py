"""Defects a real user hits first (the reliability issue), one test per defect."""
import json
import math
import warnings

import numpy as np
import pytest

from drfm import DeepRFMClassifier, KernelScaleWarning, RFMRegressor
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
    assert "layer(s) 1, 2 left out of the sums: a stage's value is zero or infinite" in text
    assert "readout" not in text
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


# 4. no raw torch errors: overflowing AGOPs and powers are ValueErrors naming the cause
def test_overflowing_agop_and_power_are_value_errors():
    from drfm import RFMRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = X[:, 0] * X[:, 1]
    with pytest.raises(ValueError, match="AGOP .*not finite.*badly scaled"):
        RFMRegressor(iters=1).fit(X, y * 1e19)
    with pytest.raises(ValueError, match="The 'agop_power' parameter of RFMRegressor"):
        RFMRegressor(iters=2, agop_power=1e6).fit(X, y)


# 5. inputs beyond the working precision are an error, not NaN or class 0
def test_inputs_beyond_float32_range():
    from drfm import RFMClassifier, RFMRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    reg = RFMRegressor(iters=1).fit(X, X[:, 0])
    clf = RFMClassifier(iters=1).fit(X, X[:, 0] > 0)
    for model in (reg, clf):
        with pytest.raises(ValueError, match="beyond the float32 range.*dtype='float64'"):
            model.predict(X[:2] * 1e39)
    with pytest.raises(ValueError, match="beyond the float32 range"):
        RFMRegressor(iters=1).fit(X * 1e39, X[:, 0])
    # float64 takes them (finite there)
    assert np.isfinite(RFMRegressor(iters=0, dtype="float64", bandwidth=1e40).fit(X * 1e39, X[:, 0]).predict(
        X[:2] * 1e39)).all()


# 4. the MLP's weights are planned against the memory available before anything is allocated
def test_mlp_that_cannot_fit_in_memory_is_refused_before_allocating():
    from drfm import TorchMLPClassifier

    X, y = np.random.default_rng(0).normal(size=(40, 4)), np.arange(40) % 2
    with pytest.raises(ValueError, match="The 'width' parameter of TorchMLPClassifier.*needs .*weights"):
        TorchMLPClassifier(1, 10**9, epochs=1).fit(X, y)


# 4. divergence is a ValueError too (the CLI reports it in one line)
def test_diverged_training_is_a_value_error(tmp_path, capsys):
    from drfm import TorchMLPClassifier

    X, y = np.random.default_rng(0).normal(size=(40, 4)), np.arange(40) % 2
    with pytest.raises(ValueError, match="diverged.*lower 'lr'"):
        TorchMLPClassifier(1, 8, lr=1e30, init_gain=1e6, epochs=3).fit(X * 1e30, y)
    with pytest.raises(FloatingPointError):  # still the documented class
        TorchMLPClassifier(1, 8, lr=1e30, init_gain=1e6, epochs=3).fit(X * 1e30, y)


# 4. output paths are checked before any fitting; a directory is named as one
def test_cli_checks_output_paths_before_fitting(tmp_path, capsys):
    adir = tmp_path / "adir"
    adir.mkdir()
    for argv, needle in (
        (["fit", "--dataset", "digits", "--save", str(adir)], "is a directory"),
        (["fit", "--dataset", "digits", "--save", str(tmp_path / "missing" / "m.pkl")], "does not exist"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    model = tmp_path / "m.pkl"
    assert main(["fit", "--dataset", "digits", "--param", "iters=0", "--save", str(model)]) == 0
    capsys.readouterr()
    X = np.random.default_rng(0).normal(size=(3, 64))
    np.save(tmp_path / "x.npy", X)
    out_dir = tmp_path / "out.csv"
    out_dir.mkdir()
    for argv, needle in (
        (["predict", str(model), str(tmp_path / "x.npy"), "-o", str(out_dir)], "is a directory"),
        (["predict", str(model), str(tmp_path / "x.npy"), "-o", str(tmp_path / "p.txtx")], "must be .npy or .csv"),
        (["predict", str(adir), str(tmp_path / "x.npy")], "is a directory"),
        (["predict", str(model), str(adir)], "is a directory"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err


# 5. network AGOP of nothing, and collapse metrics that would be NaN or wrong
def test_network_agop_needs_samples():
    from drfm import dnn

    net = dnn.build_mlp(4, 2, depth=1, width=8)
    X = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(ValueError, match="X has no rows"):
        dnn.network_agop(net, np.zeros((0, 4)), 0)
    with pytest.raises(ValueError, match="sample_size must be a positive int"):
        dnn.network_agop(net, X, 0, sample_size=0)


def test_collapse_metrics_undefined_cases():
    from drfm.collapse import nc1, nc1_papyan, nc3, nc4

    rng = np.random.default_rng(0)
    H, labels = rng.normal(size=(60, 3)), np.arange(60) % 3
    with pytest.raises(ValueError, match="classifier is all zeros"):
        nc3(H, labels, np.zeros((3, 3)))
    # every class has mean exactly 1 (deviations of +-0.5, exact in binary), with spread within the classes
    same = 1.0 + 0.5 * np.where((np.arange(60) // 3) % 2 == 0, 1.0, -1.0)[:, None] * np.array([1.0, -1.0, 1.0])
    assert nc1(same, labels) == math.inf and nc1_papyan(same, labels) == math.inf
    with pytest.raises(ValueError, match="labels contain NaN"):
        nc1(H, np.where(labels == 0, np.nan, labels))
    with pytest.raises(ValueError, match="predictions must have shape \\(60,\\)"):
        nc4(H, labels, np.array([0]))


# 8. mixed label types get a message saying so
def test_mixed_label_types():
    from drfm import RFMClassifier

    X = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError, match="y mixes label types"):
        RFMClassifier(iters=1).fit(X, np.array([1, "a"] * 20, dtype=object))


# 7. the MLP never touches torch's global RNG and is deterministic with Dropout
def test_mlp_global_rng_and_dropout_determinism():
    import torch
    from torch import nn

    from drfm import TorchMLPClassifier

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), np.arange(60) % 2
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))
    for kw in ({"module": net}, {"depth": 1, "width": 8, "bias": True}):
        torch.manual_seed(0)
        expected = torch.rand(3)
        torch.manual_seed(0)
        a = TorchMLPClassifier(epochs=3, lr=1e-2, random_state=0, **kw).fit(X, y)
        assert torch.equal(torch.rand(3), expected)
        b = TorchMLPClassifier(epochs=3, lr=1e-2, random_state=0, **kw).fit(X, y)
        np.testing.assert_array_equal(a.decision_function(X), b.decision_function(X))


# 8. nfa_correlations: bad layers or initial weights name the argument
def test_nfa_correlations_argument_errors():
    from drfm import dnn

    net = dnn.build_mlp(4, 2, depth=1, width=8)
    X = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(ValueError, match="layers must be indices in \\[0, 1\\]"):
        dnn.nfa_correlations(net, X, layers=[5])
    with pytest.raises(ValueError, match="initial has no weight for Linear layer 0"):
        dnn.nfa_correlations(net, X, initial={})
    bad = {k: v[:, :2] if v.dim() == 2 else v for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="initial weight of Linear layer 0 has shape"):
        dnn.nfa_correlations(net, X, initial=bad)


# 8. a non-finite kernel matrix is named as such (not a silent NaN solution or "jitter nan")
def test_direct_solve_refuses_a_non_finite_matrix():
    import torch

    from kernels import solve_direct

    K = torch.eye(4, dtype=torch.float64)
    K[0, 1] = float("nan")
    with pytest.raises(ValueError, match="K has non-finite entries"):
        solve_direct(K, torch.ones(4, dtype=torch.float64), reg=1e-3)
    # the check is a sum confirmed elementwise: a finite K whose float32 sum overflows is solved, not refused
    big = torch.eye(3) * 3e38
    big[2, 2] = 1.0
    x = solve_direct(big, torch.ones(3)).x
    assert torch.isfinite(x).all() and float(x[2]) == pytest.approx(1.0)


# 11. a network that ends at chance level says so, and the comparison report carries it
def test_mlp_at_chance_warns_and_compare_reports_it():
    from sklearn.exceptions import ConvergenceWarning

    from drfm import TorchMLPClassifier, dnn

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6))
    y = (X[:, 0] > 0).astype(int)
    with pytest.warns(ConvergenceWarning, match="chance level"):
        m = TorchMLPClassifier(2, 16, epochs=1, lr=1e-6, random_state=0).fit(X, y)
    assert m.at_chance_
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        good = TorchMLPClassifier(2, 16, epochs=30, lr=1e-2, random_state=0).fit(X, y)
    assert not good.at_chance_
    with pytest.warns(ConvergenceWarning):
        rep = dnn.compare(X[:150], y[:150], X[150:], y[150:], depth=2,
                          mlp_params=dict(width=16, epochs=1, lr=1e-6), deep_params=dict(width=16))
    assert rep.meta["mlp"]["at_chance"] and "chance" in rep.meta["warnings"][0]


# 9. the preprocessing of a named dataset travels in the model file; CSV columns are matched by name
def test_predict_applies_the_datasets_preprocessing(tmp_path, capsys):
    from sklearn.datasets import load_digits

    from drfm.persistence import load_model, read_header

    model_path = tmp_path / "digits.drfm"
    assert main(["fit", "--dataset", "digits", "--param", "iters=1", "--save", str(model_path)]) == 0
    capsys.readouterr()
    assert read_header(model_path)["input_scale"] == 16.0
    raw = load_digits()
    np.save(tmp_path / "raw.npy", raw.data[:200])
    assert main(["predict", str(model_path), str(tmp_path / "raw.npy"), "-o", str(tmp_path / "p.npy"),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert "divided by 16" in res["preprocessing"]
    pred = np.load(tmp_path / "p.npy")
    np.testing.assert_array_equal(pred, load_model(model_path).predict(raw.data[:200] / 16.0))
    assert np.mean(pred == raw.target[:200]) > 0.9


def test_predict_matches_csv_columns_by_name(tmp_path, capsys):
    path = _table(tmp_path / "table.csv")
    model = tmp_path / "m.drfm"
    assert main(["fit", "--data", str(path), "--target", "label", "--param", "iters=1", "--save", str(model)]) == 0
    capsys.readouterr()
    rows = [line.split(",") for line in path.read_text().splitlines()]
    order = [3, 0, 2, 1]  # features in another order, the label column dropped
    (tmp_path / "shuffled.csv").write_text("\n".join(",".join(r[j] for j in order) for r in rows) + "\n")
    (tmp_path / "plain.csv").write_text("\n".join(",".join(r[:4]) for r in rows) + "\n")
    assert main(["predict", str(model), str(tmp_path / "plain.csv"), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["predictions"]
    assert main(["predict", str(model), str(tmp_path / "shuffled.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"] == expected
    (tmp_path / "missing.csv").write_text("\n".join(",".join(r[:3]) for r in rows) + "\n")
    assert main(["predict", str(model), str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert "lacks the column(s) d" in err and len(err.strip().splitlines()) == 1


# 3. degenerate kernels are never silent; a scale-free bandwidth is one parameter away
def _lowrank(n=500, d=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, X[:, 0] * X[:, 1]


@pytest.mark.parametrize("scale, bandwidth, words", [
    (100.0, 10.0, "nearly the identity"),  # unscaled features: every point is far from every other
    (1.0, 1e-3, "nearly the identity"),
    (1.0, 1e6, "nearly constant"),
])
def test_degenerate_kernel_warns(scale, bandwidth, words):
    from drfm import KernelScaleWarning

    X, y = _lowrank()
    with pytest.warns(KernelScaleWarning, match=words + ".*bandwidth='median'"):
        RFMRegressor(bandwidth, iters=1, random_state=0).fit(X * scale, y)


def test_no_warning_on_well_scaled_data():
    import warnings

    from drfm import KernelScaleWarning

    X, y = _lowrank()
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelScaleWarning)
        RFMRegressor(iters=2, random_state=0).fit(X, y)


def test_median_bandwidth_is_scale_free():
    X, y = _lowrank(seed=1)
    Xte, yte = _lowrank(200, seed=2)
    a = RFMRegressor("median", iters=2, dtype="float64", random_state=0).fit(X, y)
    b = RFMRegressor("median", iters=2, dtype="float64", random_state=0).fit(X * 1000.0, y)
    np.testing.assert_allclose(b.predict(Xte * 1000.0), a.predict(Xte), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(b.M_, a.M_, rtol=1e-6, atol=1e-9)
    assert b.bandwidth_ == pytest.approx(1000.0 * a.bandwidth_, rel=1e-9)
    assert a.score(Xte, yte) > 0.5  # and it learns: the same task, no tuning
    fixed = RFMRegressor(10.0, iters=0).fit(X, y)
    assert fixed.bandwidth_ == 10.0
    from drfm import KernelScaleWarning

    with pytest.warns(KernelScaleWarning, match="all coinciding.*1.0 is used"):
        same = RFMRegressor("median", iters=0).fit(np.ones((20, 3)), np.arange(20.0))
    assert same.bandwidth_ == 1.0


# 12. float32 kernels on data with duplicated rows and large offsets
def _tabular_with_duplicates(n=900, seed=0):
    """Like a real tabular set: features on scales 0.01..1000 with offsets up to 5000, a tenth of the rows exact
    duplicates of others and a twentieth near duplicates (1e-6 relative)."""
    rng = np.random.default_rng(seed)
    scales = np.array([1, 1, 10, 100, 1000, 0.01, 5, 50, 200, 1, 1, 3, 30, 300, 0.1, 2, 20, 500.0])
    offsets = np.array([100, 0, 50, 1000, 5000, 0, 10, 200, 100, 0, 5, 0, 60, 900, 0, 4, 40, 800.0])
    X = rng.normal(size=(n, 18)) * scales + offsets
    dup, src = rng.choice(n, n // 10, replace=False), rng.choice(n, n // 10)
    X[dup] = X[src]
    near, src = rng.choice(n, n // 20, replace=False), rng.choice(n, n // 20)
    X[near] = X[src] * (1 + 1e-6 * rng.normal(size=(n // 20, 18)))
    z = (X - offsets) / scales
    return X, z


def test_float32_deep_rfm_fits_duplicated_rows_with_defaults():
    X, z = _tabular_with_duplicates()
    y = (z[:, 0] > 0).astype(int) + 2 * (z[:, 3] > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KernelScaleWarning)
        m32 = DeepRFMClassifier(depth=6, random_state=0).fit(X, y)  # float32 is the default
        m64 = DeepRFMClassifier(depth=6, random_state=0, dtype="float64").fit(X, y)
    assert m32.dtype == "float32"
    assert m32.score(X, y) >= m64.score(X, y) - 0.03


def test_float32_row_alone_predicts_as_in_a_batch():
    X, z = _tabular_with_duplicates()
    y = z[:, 0] * z[:, 1] + z[:, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KernelScaleWarning)
        model = RFMRegressor(iters=2, random_state=0, bandwidth="median").fit(X, y)
    rng = np.random.default_rng(1)
    Xq = np.vstack([X[:150], X[:50] * (1 + 1e-7 * rng.normal(size=(50, 18))), X[150:200] + rng.normal(size=(50, 18))])
    batch = model.predict(Xq)
    alone = np.array([model.predict(Xq[i : i + 1])[0] for i in range(len(Xq))])
    assert np.abs(batch - alone).max() <= 1e-5 * batch.std()


def test_standardisation_of_huge_float32_features_does_not_overflow():
    X = (np.random.default_rng(0).normal(size=(20, 3)) * 1e20).astype(np.float32)
    y = np.arange(20) % 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "overflow encountered in square" leaked here
        warnings.simplefilter("ignore", KernelScaleWarning)
        model = DeepRFMClassifier(depth=2, random_state=0).fit(X, y)
    np.testing.assert_allclose(model.scale_, X.astype(np.float64).std(0), rtol=1e-6)
    X64 = X.astype(np.float64) * 1e140  # squares beyond float64: the scale is taken relative to the largest |value|
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", KernelScaleWarning)
        model = DeepRFMClassifier(depth=2, random_state=0).fit(X64, y)
    np.testing.assert_allclose(model.scale_, (X64 / 1e150).std(0) * 1e150, rtol=1e-12)


def test_auto_bandwidth_is_twice_the_median_and_scale_free():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5))
    y = X[:, 0] * X[:, 1]
    med = RFMRegressor(iters=0, bandwidth="median", random_state=0).fit(X, y)
    auto = RFMRegressor(iters=0, bandwidth="auto", random_state=0).fit(X, y)
    assert auto.bandwidth_ == pytest.approx(2 * med.bandwidth_)
    scaled = RFMRegressor(iters=0, bandwidth="auto", random_state=0).fit(1000 * X, y)
    np.testing.assert_allclose(scaled.predict(1000 * X[:20]), auto.predict(X[:20]), rtol=1e-4, atol=1e-5)


def test_read_only_inputs_give_no_torch_warning():
    # pandas 3 hands out read-only arrays (copy-on-write); torch.as_tensor warned "NumPy array is not writable"
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 4))
    y = X[:, 0] * X[:, 1]
    X.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = RFMRegressor(iters=1, random_state=0).fit(X, y)
        model.predict(X)
        model.predict(X.astype(np.float32))  # same dtype as the model: the path that shared memory
    assert not X.flags.writeable
