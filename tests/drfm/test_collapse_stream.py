"""Streaming collapse metrics == one-shot (1e-10), generalised NC2, uniform NC3, NC5 against known answers."""
import math

import numpy as np
import pytest

from drfm import collapse as C
from drfm.collapse import CollapseAccumulator
from drfm.collapse_stream import STREAM_METRICS


def _features(N=900, p=12, K=4, seed=0, noise=0.5):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((K, p)) * 3
    y = rng.integers(0, K, N)
    H = centres[y] + noise * rng.standard_normal((N, p)) + 50.0  # a large offset: the sums must stay centred
    return H, y


def _stream(H, y, seed=1, second_moments=True):
    rng = np.random.default_rng(seed)
    acc = CollapseAccumulator(second_moments=second_moments)
    cuts = np.sort(rng.choice(np.arange(1, len(H)), 7, replace=False))
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(H)]):
        acc.update(H[a:b], y[a:b])
    return acc


@pytest.mark.parametrize("labels", ["ints", "strings"])
def test_streaming_equals_one_shot(labels):
    H, y = _features()
    if labels == "strings":
        y = np.array(["cat", "dog", "emu", "fox"])[y]
    # batches of different sizes; the first batch holds only some classes
    order = np.argsort(y == y[0], kind="stable")
    H, y = H[order], y[order]
    acc = _stream(H, y)
    got = acc.metrics(STREAM_METRICS)
    for name in STREAM_METRICS:
        ref = C.METRICS[name](H, y)
        assert got[name] == pytest.approx(ref, rel=1e-10, abs=1e-12), name
    spec, ref = acc.spectrum(), C.feature_spectrum(H, y)
    np.testing.assert_allclose(spec["eigenvalues"], ref["eigenvalues"], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(spec["label_share"], ref["label_share"], rtol=1e-8, atol=1e-10)
    W = C.least_squares_classifier(H, y)
    assert acc.nc3(W) == pytest.approx(C.nc3(H, y, W), rel=1e-10)
    assert acc.nc3_uniform(W) == pytest.approx(C.nc3_uniform(H, y, W), rel=1e-9, abs=1e-14)
    ood = np.random.default_rng(5).standard_normal((50, H.shape[1])) + 50.0
    acc_ood = CollapseAccumulator(second_moments=False).update(ood[:20], np.zeros(20)).update(ood[20:], np.ones(30))
    assert acc.nc5(acc_ood) == pytest.approx(C.nc5(H, y, ood), rel=1e-10)
    assert acc.n_samples == len(H)


def test_nearly_collapsed_features_stay_accurate():
    # NC1 ~ 1e-12: E[h^2] - E[h]^2 would lose every digit; the pairwise merges keep them
    H, y = _features(noise=1e-6)
    assert C.nc1(H, y) < 1e-9
    assert _stream(H, y).nc1() == pytest.approx(C.nc1(H, y), rel=1e-6)


def test_memory_is_independent_of_the_number_of_samples():
    rng = np.random.default_rng(2)
    acc = CollapseAccumulator(second_moments=True)
    for _ in range(20):  # 20 000 x 64 features, never held together
        y = rng.integers(0, 10, 1000)
        acc.update(rng.standard_normal((1000, 64)) + y[:, None], y)
    assert acc.n_samples == 20000
    assert acc.nbytes <= 64 * 64 * 8 + 10 * 64 * 8 + 2 * 10 * 8
    assert CollapseAccumulator(second_moments=False).update(np.ones((3, 64)), [0, 1, 1]).nbytes < 64 * 64 * 8
    with pytest.raises(ValueError, match="second_moments=True"):
        CollapseAccumulator(second_moments=False).update(*_features()).nc1_papyan()


def test_accumulator_input_errors():
    acc = CollapseAccumulator().update(np.zeros((4, 3)), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="batch has 2 features"):
        acc.update(np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="labels must have shape"):
        acc.update(np.zeros((2, 3)), [0])
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.full((1, 3), np.nan), [0])
    with pytest.raises(ValueError, match="at least 2 classes"):
        CollapseAccumulator().update(np.zeros((3, 2)), [1, 1, 1]).nc1()
    with pytest.raises(ValueError, match="cannot be accumulated"):
        acc.metrics(["nc4"])


def _simplex(K, p, radius=1.0):
    E = np.eye(K) - 1.0 / K
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((p, K)))
    return radius * E @ Q.T  # (K, p) rows: a simplex ETF in R^p


@pytest.mark.parametrize("kernel,s", [("log", 1.0), ("riesz", 1.0), ("riesz", 2.5), ("distance", 1.0)])
def test_uniformity_energy_of_a_simplex_is_its_formula_and_the_minimum(kernel, s):
    K, p = 5, 8
    etf = _simplex(K, p)
    d = math.sqrt(2 * K / (K - 1))
    expected = {"log": -math.log(d), "riesz": d ** (-s), "distance": -d}[kernel]
    assert C.uniformity_energy(etf, kernel=kernel, s=s) == pytest.approx(expected, rel=1e-12)
    rng = np.random.default_rng(3)
    for _ in range(20):
        r = rng.standard_normal((K, p))
        r /= np.linalg.norm(r, axis=1, keepdims=True)
        assert C.uniformity_energy(r, kernel=kernel, s=s) > expected
    # as a collapse metric: features collapsed onto a simplex reach it
    y = np.repeat(np.arange(K), 10)
    assert C.nc2_uniformity(etf[y] * 4.0, y, kernel=kernel, s=s) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="kernel must be"):
        C.uniformity_energy(etf, kernel="gauss")


def test_uniform_nc3_and_nc5_known_answers():
    K, p = 4, 6
    etf = _simplex(K, p)
    y = np.repeat(np.arange(K), 5)
    H = etf[y] + 10.0
    # classifier rows along the centred means with per-class scales: every cosine 1, variance 0 (plain NC3 is not 0)
    W = etf * np.array([1.0, 2.0, 3.0, 4.0])[:, None]
    assert C.nc3_uniform(H, y, W) == pytest.approx(0.0, abs=1e-15)
    assert C.nc3(H, y, W) > 1e-2
    W2 = W.copy()
    W2[0] = -W2[0]  # one class's cosine -1: variance 3/4 of (1 - (-1))^2 / 4
    assert C.nc3_uniform(H, y, W2) == pytest.approx(0.75, rel=1e-12)
    # NC5: an OOD mean orthogonal to every class mean -> 0; on a class mean's direction -> mean |cos| of that ETF row
    ortho = np.linalg.svd(etf)[2][-1]  # a direction orthogonal to the means' span
    assert C.nc5(H, y, 10.0 + ortho[None, :] * np.ones((3, 1))) == pytest.approx(0.0, abs=1e-12)
    along = C.nc5(H, y, 10.0 + etf[:1] * 2.0)
    assert along == pytest.approx((1 + (K - 1) / (K - 1)) / K, rel=1e-12)  # |cos| 1 with itself, 1/(K-1) others
    with pytest.raises(ValueError, match="ood_features"):
        C.nc5(H, y, np.zeros((2, p + 1)))


def test_new_metrics_in_reports():
    from drfm.collapse import check_metrics, stage_report

    H, y = _features(N=200)
    check_metrics(["nc2_uniformity", "nc3_uniform"])
    rep = stage_report([{"input": H}], y, metrics=["nc2_uniformity", "nc3_uniform"], model_name="m")
    vals = {r["metric"]: r["value"] for r in rep.rows}
    assert vals["nc2_uniformity"] == pytest.approx(C.nc2_uniformity(H, y))
    assert vals["nc3_uniform"] == pytest.approx(C.nc3_uniform(H, y, C.least_squares_classifier(H, y)))


def test_layer_cka_matrix():
    rng = np.random.default_rng(7)
    A = rng.standard_normal((300, 8))
    Q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    layers = [A, A @ Q * 3.0 + 1.0, rng.standard_normal((300, 5))]
    m = C.layer_cka(layers)
    assert m.shape == (3, 3) and np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    assert m[0, 1] == pytest.approx(1.0, abs=1e-12)  # CKA is invariant to rotation, scale and offset
    assert m[0, 2] < 0.2
    cross = C.layer_cka(layers[:2], layers[1:])
    assert cross.shape == (2, 2) and cross[0, 0] == pytest.approx(1.0, abs=1e-12)
    assert cross[1, 1] == pytest.approx(C.linear_cka(layers[1], layers[2]))


def test_feature_matrix_sparsity_known_answers():
    d = 20
    one = np.zeros((d, d))
    one[3, 3] = 5.0
    sp = C.feature_matrix_sparsity(one)
    assert sp["effective_rank"] == pytest.approx(1.0) and sp["inputs_used"] == 1 and sp["input_share"] == 1 / d
    iso = C.feature_matrix_sparsity(np.eye(d))
    assert iso["effective_rank"] == pytest.approx(d) and iso["inputs_used"] == 18  # 90% of 20 equal entries
    # a rank-2 M over coordinates 0 and 1 (the low-rank task's learned M): 2 directions, 2 inputs
    u = np.zeros((d, 2))
    u[0, 0] = u[1, 1] = 1.0
    low = C.feature_matrix_sparsity(u @ np.diag([2.0, 1.0]) @ u.T)
    assert low["effective_rank"] == pytest.approx(9 / 5) and low["inputs_used"] == 2
    assert C.feature_matrix_sparsity(np.array([0.0, 1.0, 1.0, 0.0]))["inputs_used"] == 2  # a diagonal M
    with pytest.raises(ValueError, match="square"):
        C.feature_matrix_sparsity(np.zeros((2, 3)))


def test_sparsity_report_of_deep_rfm_and_mlp():
    from drfm import DeepRFMClassifier, TorchMLPClassifier

    rng = np.random.default_rng(8)
    X = rng.standard_normal((200, 6))
    y = (X[:, 0] > 0).astype(int)
    deep = DeepRFMClassifier(2, random_state=0).fit(X, y)
    rep = C.sparsity_report(deep, model_name="deep_rfm")
    ranks = [r["value"] for r in rep.rows if r["metric"] == "m_effective_rank"]
    assert len(ranks) == 2
    assert ranks[0] == pytest.approx(C.feature_matrix_sparsity(deep.layers_[0].M)["effective_rank"])
    mlp = TorchMLPClassifier(2, 16, epochs=2, lr=1e-2, random_state=0).fit(X, y)
    rows = C.sparsity_report(mlp, model_name="mlp").rows
    W0 = mlp.network_[0].weight.detach().double().numpy()
    assert [r["layer"] for r in rows if r["metric"] == "m_input_share"] == [0, 1]
    assert rows[0]["value"] == pytest.approx(C.feature_matrix_sparsity(W0.T @ W0)["effective_rank"])


def test_spectra_kept_per_layer_and_plotted(tmp_path):
    pytest.importorskip("matplotlib")
    from drfm import DeepRFMClassifier

    rng = np.random.default_rng(9)
    X = rng.standard_normal((150, 5))
    y = rng.integers(0, 3, 150)
    deep = DeepRFMClassifier(2, random_state=0).fit(X, y)
    rep = C.collapse_report(deep, X, y, metrics=["nc1"], spectra=10)
    feats = deep.layer_features(X)
    for layer in range(2):
        ref = C.feature_spectrum(feats[layer]["nonlinear"], y)["eigenvalues"][:10]
        np.testing.assert_allclose(rep.meta["spectra"]["deep_rfm"]["nonlinear"][layer], ref)
    both = rep + C.stage_report(feats, y, metrics=["nc1"], model_name="other", spectra=5)
    assert set(both.meta["spectra"]) == {"deep_rfm", "other"}
    out = both.plot_spectra(tmp_path / "spectra.png")
    assert (tmp_path / "spectra.png").stat().st_size > 1000 and out == tmp_path / "spectra.png"
    with pytest.raises(ValueError, match="no spectra"):
        C.collapse_report(deep, X, y, metrics=["nc1"]).plot_spectra(tmp_path / "x.png")
    # every stage by default (one panel per model and stage), or one stage; a stage never measured is an error
    import matplotlib.pyplot as plt

    drawn = []
    real = plt.subplots
    plt.subplots = lambda *a, **k: drawn.append(a) or real(*a, **k)
    try:
        both.plot_spectra(tmp_path / "all.png")
        both.plot_spectra(tmp_path / "one.png", stage="linear")
    finally:
        plt.subplots = real
    assert drawn == [(2, 3), (2, 1)]
    with pytest.raises(ValueError, match="no spectra at stage 'final'"):
        both.plot_spectra(tmp_path / "x.png", stage="final")


def test_plots_tell_models_apart_by_style_and_stages_by_colour():
    import matplotlib.pyplot as plt

    from drfm.collapse.report import _line_styles

    rows = [{"model": m, "layer": 0, "stage": st} for m in ("deep_rfm", "mlp") for st in ("input", "linear")]
    style = _line_styles(rows, "layer", plt)
    assert style(("deep_rfm", "input"))["color"] == style(("mlp", "input"))["color"]
    assert style(("deep_rfm", "input"))["color"] != style(("deep_rfm", "linear"))["color"]
    assert style(("deep_rfm", "input"))["ls"] != style(("mlp", "input"))["ls"]
    assert style(("deep_rfm", "input"))["marker"] != style(("mlp", "input"))["marker"]


def test_summary_names_a_readout_layer_as_such():
    rep = C.CollapseReport()
    for layer, vals in enumerate([(1.0, 0.5, 0.4), (0.4, 0.1, None)]):  # layer 1: a readout, no nonlinear stage
        for st, v in zip(("input", "linear", "nonlinear"), vals):
            if v is not None:
                rep.add(model="mlp", layer=layer, stage=st, metric="nc1", value=v, n_samples=10)
    text = rep.summary()
    assert "layer(s) 1 not split into stages (no nonlinear stage, as a readout layer)" in text
    assert "dead" not in text


def test_cli_collapse_writes_spectra(tmp_path):
    pytest.importorskip("matplotlib")
    from drfm.cli import main

    path = tmp_path / "s.png"
    assert main(["collapse", "--dataset", "digits", "--depth", "2", "--n-train", "300", "--spectra", str(path)]) == 0
    assert path.stat().st_size > 1000


def test_feature_learning_study_and_command(tmp_path):
    pytest.importorskip("matplotlib")
    from drfm.cli import main
    from drfm.studies import feature_learning_study

    rows = feature_learning_study(sizes=(300, 900), d=8, iters=3, n_test=500)
    assert len(rows) == 2 * 2 * 2
    err = {(r["target"], r["n"], r["iters"]): r["test_rel_mse"] for r in rows}
    # the low-rank target: feature learning helps, and more with more data
    assert err["low_rank", 900, 3] < 0.5 * err["low_rank", 900, 0]
    # the smooth target: feature learning hurts, and more with more data (measured, seeds 0 / 1: RFM's error 2.0x /
    # 1.9x the plain kernel's at n = 300, 3.1x / 3.6x at n = 900)
    harm = {n: err["smooth", n, 3] / err["smooth", n, 0] for n in (300, 900)}
    assert harm[900] > 2.0 and harm[900] > 1.2 * harm[300] > 1.2
    # the learned M concentrates on two directions for the low-rank target, not for the smooth one
    rank = {(r["target"], r["n"]): r["m_effective_rank"] for r in rows if r["iters"]}
    assert rank["low_rank", 900] < 3 < rank["smooth", 900]
    plot, out = tmp_path / "f.png", tmp_path / "f.json"
    assert main(["feature-learning", "--n", "200", "--d", "5", "--iters", "1", "--plot", str(plot),
                 "--out", str(out)]) == 0
    assert plot.stat().st_size > 1000 and len(__import__("json").loads(out.read_text())) == 4
    assert main(["feature-learning", "--n", "1"]) == 2


def _geometric_report(values, model="deep_rfm", stage="input"):
    rep = C.CollapseReport()
    for layer, v in enumerate(values):
        rep.add(model=model, layer=layer, stage=stage, metric="nc1", value=v, n_samples=10)
    return rep


def test_collapse_rate_of_an_exact_geometric_decay():
    rep = _geometric_report([2.0 * 0.7 ** k for k in range(10)])
    (fit,) = rep.collapse_rate()
    assert fit["rate"] == pytest.approx(0.7, rel=1e-12) and fit["intercept"] == pytest.approx(2.0, rel=1e-12)
    assert fit["rate_low"] == pytest.approx(0.7, rel=1e-9) and fit["rate_high"] == pytest.approx(0.7, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0) and fit["n_layers"] == 10
    # a range of layers, and values that cannot enter a log fit are left out
    bad = _geometric_report([2.0 * 0.7 ** k for k in range(5)] + [0.0, math.inf])
    (fit,) = bad.collapse_rate(layers=(1, 6))
    assert fit["n_layers"] == 4 and fit["first_layer"] == 1 and fit["rate"] == pytest.approx(0.7)
    (two,) = _geometric_report([1.0, 0.5]).collapse_rate()
    assert two["rate"] == pytest.approx(0.5) and math.isnan(two["rate_low"])
    with pytest.raises(ValueError, match="level"):
        rep.collapse_rate(level=95)
    with pytest.raises(ValueError, match="layers"):
        rep.collapse_rate(layers=(5, 1))
    with pytest.raises(ValueError, match="unknown metrics"):
        rep.collapse_rate("nc9")


def test_collapse_rate_interval_covers_the_true_rate_at_its_level():
    # Monte Carlo against the construction: log10 NC1 = a + b * layer + noise; the 90% interval of the rate covers
    # 10**b in about 90% of replicates
    rng = np.random.default_rng(0)
    true_b, covered, reps = -0.08, 0, 400
    for _ in range(reps):
        logs = 0.5 + true_b * np.arange(12) + 0.05 * rng.standard_normal(12)
        (fit,) = _geometric_report(10 ** logs).collapse_rate(level=0.9)
        covered += fit["rate_low"] <= 10 ** true_b <= fit["rate_high"]
    assert 0.85 <= covered / reps <= 0.95, covered / reps
