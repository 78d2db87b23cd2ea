"""Collapse metrics on features whose answer is known, against direct (p x p) formulas."""
import json

import numpy as np
import pytest

from drfm.collapse import (
    CollapseReport, cdnv, linear_cka, nc1, nc1_papyan, nc2, nc2_equiangularity, nc2_equinorm, nc3, nc4,
)


def simplex_etf(K, p, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((p, K)))
    M = np.sqrt(K / (K - 1)) * (np.eye(K) - np.ones((K, K)) / K)  # K x K, columns form a simplex ETF
    return (Q @ M).T  # (K, p)


def features_around(means, n_per, noise, seed=0):
    rng = np.random.default_rng(seed)
    K, p = means.shape
    labels = np.repeat(np.arange(K), n_per)
    return means[labels] + noise * rng.standard_normal((K * n_per, p)), labels


def test_perfect_collapse_gives_zero_nc1():
    means = simplex_etf(4, 10)
    H, y = features_around(means, 20, 0.0)
    # means computed from identical rows carry round-off ~1e-16, so "0" is up to that
    assert nc1(H, y) < 1e-25 and nc1_papyan(H, y) < 1e-25 and cdnv(H, y) < 1e-25


def test_simplex_etf_gives_zero_nc2_and_orthogonal_means_known_value():
    H, y = features_around(simplex_etf(5, 12) * 3.0, 10, 0.0)
    assert nc2(H, y) == pytest.approx(0.0, abs=1e-12)
    assert nc2_equinorm(H, y) == pytest.approx(0.0, abs=1e-12)
    assert nc2_equiangularity(H, y) == pytest.approx(0.0, abs=1e-12)
    # orthogonal equal-norm means: centred by the mean of the means they become a simplex ETF
    H, y = features_around(np.eye(4, 7) * 2.0, 5, 0.0)
    assert nc2(H, y) == pytest.approx(0.0, abs=1e-12)
    # square corners in 2-D: cosines 0 (adjacent) and -1 (opposite) vs -1/3 -> (4 * (2/9 + 4/9)) / 16 = 1/6
    H, y = features_around(np.array([[1.0, 0], [0, 1], [-1, 0], [0, -1]]), 3, 0.0)
    assert nc2(H, y) == pytest.approx(1.0 / 6.0, rel=1e-12)
    assert nc2_equinorm(H, y) == pytest.approx(0.0, abs=1e-12)
    assert nc2_equiangularity(H, y) == pytest.approx((8 * (1 / 3) + 4 * (2 / 3)) / 12, rel=1e-12)


def test_nc1_matches_direct_scatter_formula_and_seed_scale():
    rng = np.random.default_rng(3)
    H, y = features_around(rng.standard_normal((3, 6)), 30, 0.7, seed=1)
    K = 3
    mus = np.stack([H[y == c].mean(0) for c in range(K)])
    mu_g = mus.mean(0)
    Sw = sum(np.outer(h - mus[c], h - mus[c]) for h, c in zip(H, y)) / len(H)
    Sb = sum(np.outer(m - mu_g, m - mu_g) for m in mus) / K
    assert nc1(H, y) == pytest.approx(np.trace(Sw) / np.trace(Sb), rel=1e-12)
    assert nc1(H, y, scale="seed") == pytest.approx(np.trace(Sw) / np.trace(Sb) / K, rel=1e-12)
    assert nc1_papyan(H, y) == pytest.approx(np.trace(Sw @ np.linalg.pinv(Sb)) / K, rel=1e-9)


def test_nc1_papyan_float32_input_and_many_features():
    rng = np.random.default_rng(4)
    H, y = features_around(rng.standard_normal((4, 300)), 25, 0.3, seed=2)
    K = 4
    mus = np.stack([H[y == c].mean(0) for c in range(K)])
    W = H - mus[y]
    Sw = W.T @ W / len(H)
    Mc = mus - mus.mean(0)
    ref = np.trace(Sw @ np.linalg.pinv(Mc.T @ Mc / K)) / K
    assert nc1_papyan(H.astype(np.float32), y) == pytest.approx(ref, rel=1e-5)


def test_random_features_nc1_in_expected_range():
    rng = np.random.default_rng(5)
    H = rng.standard_normal((2000, 20))
    y = rng.integers(0, 4, 2000)
    # no class structure: between-class scatter ~ p/n_c per class, within ~ p -> nc1 ~ n_c = 500, large
    assert nc1(H, y) > 50


def test_invariances():
    rng = np.random.default_rng(6)
    H, y = features_around(rng.standard_normal((3, 5)), 20, 0.5)
    Q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    for f in (nc1, nc1_papyan, nc2, nc2_equinorm, nc2_equiangularity, cdnv):
        assert f(H @ Q, y) == pytest.approx(f(H, y), rel=1e-9), f.__name__
        assert f(3.7 * H, y) == pytest.approx(f(H, y), rel=1e-9), f.__name__
        assert f(H + 5.0, y) == pytest.approx(f(H, y), rel=1e-9), f.__name__


def test_string_labels_and_errors():
    H, y = features_around(simplex_etf(3, 4), 4, 0.1)
    names = np.array(["a", "b", "c"])[y]
    assert nc1(H, names) == pytest.approx(nc1(H, y))
    with pytest.raises(ValueError, match="at least 2 classes"):
        nc1(H, np.zeros(len(H)))
    with pytest.raises(ValueError, match="labels must have shape"):
        nc1(H, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        nc1(np.full_like(H, np.nan), y)


def test_linear_cka_against_direct_hsic():
    rng = np.random.default_rng(7)
    X, Y = rng.standard_normal((40, 6)), rng.standard_normal((40, 9))
    def hsic(K, L):
        n = len(K)
        Hc = np.eye(n) - np.ones((n, n)) / n
        return np.trace(K @ Hc @ L @ Hc) / (n - 1) ** 2

    K, L = X @ X.T, Y @ Y.T
    ref = hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))
    assert linear_cka(X, Y) == pytest.approx(ref, rel=1e-10)
    assert linear_cka(X, X @ np.linalg.qr(rng.standard_normal((6, 6)))[0] * 2) == pytest.approx(1.0)
    wide = rng.standard_normal((10, 50))
    assert linear_cka(wide, wide[:, :30]) == pytest.approx(
        hsic(wide @ wide.T, wide[:, :30] @ wide[:, :30].T)
        / np.sqrt(hsic(wide @ wide.T, wide @ wide.T) * hsic(wide[:, :30] @ wide[:, :30].T, wide[:, :30] @ wide[:, :30].T)),
        rel=1e-10,
    )


def test_nc3_and_nc4():
    means = simplex_etf(3, 6)
    H, y = features_around(means, 10, 0.05)
    assert nc3(H, y, means) == pytest.approx(0.0, abs=1e-3)
    assert nc3(H, y, -means) > 3.0
    assert nc4(H, y, y) == 0.0
    assert nc4(H, y, (y + 1) % 3) == 1.0


def test_report_rendering_and_linear_share(tmp_path):
    r = CollapseReport()
    for layer, (a, b, c) in enumerate([(1.0, 0.1, 0.2), (0.2, 0.02, 0.04)]):
        for stage, v in zip(("input", "linear", "nonlinear"), (a, b, c)):
            r.add(model="m", layer=layer, stage=stage, metric="nc1", value=v, n_samples=10)
    share = r.linear_share("nc1")
    assert share[0]["linear_log10_reduction"] == pytest.approx(1.0)
    assert share[0]["nonlinear_log10_reduction"] == pytest.approx(-np.log10(2))
    assert share[0]["linear_share"] == pytest.approx(1.0 / (1.0 - np.log10(2)))
    table = r.to_markdown()
    assert "nc1 (linear)" in table and table.count("\n") == 3
    data = json.loads(r.to_json(tmp_path / "r.json"))
    assert len(data["rows"]) == 6 and json.loads((tmp_path / "r.json").read_text()) == data
    assert "linear stages" in r.summary()
    both = r + CollapseReport([{**row, "model": "mlp"} for row in r.rows])
    assert {row["model"] for row in both.rows} == {"m", "mlp"}
    assert len(both.to_frame()) == 12
    pytest.importorskip("matplotlib")
    out = r.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000 and out == tmp_path / "p.png"


def test_report_takes_nc3_nc4_and_label_cka_per_layer():
    from drfm import DeepRFMClassifier
    from drfm.collapse import collapse_report, least_squares_classifier, linear_cka, nc3, nc4

    rng = np.random.default_rng(0)
    # K orthogonal class means + small noise: the readout aligns with the means, NCC agrees with the labels
    K, p, n = 3, 6, 300
    y = np.arange(n) % K
    means = 5.0 * np.eye(K, p)
    H = means[y] + 0.05 * rng.standard_normal((n, p))
    W = least_squares_classifier(H, y)
    assert W.shape == (K, p) and nc3(H, y, W) < 0.05
    assert nc4(H, y, y) == 0.0
    assert linear_cka(H, np.eye(K)[y]) > 0.9
    # through collapse_report on a fitted Deep RFM, next to nc1
    X = rng.standard_normal((200, 5))
    yy = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    model = DeepRFMClassifier(depth=2, random_state=0).fit(X, yy)
    rep = collapse_report(model, X, yy, metrics=("nc1", "nc3", "nc4", "linear_cka"))
    got = {r["metric"] for r in rep.rows}
    assert got == {"nc1", "nc3", "nc4", "linear_cka"}
    assert all(np.isfinite(r["value"]) for r in rep.rows)
    assert all(0 <= r["value"] <= 1 for r in rep.rows if r["metric"] in ("nc4", "linear_cka"))
    with pytest.raises(ValueError, match="available: .*nc3"):
        collapse_report(model, X, yy, metrics=("nc9",))


def test_collapse_study_records_its_parameters_and_versions():
    from drfm.studies import collapse_study

    rep = collapse_study("digits", depth=1, sigma=0.1, bandwidth=3.0, seed=2, width=64)
    params = rep.meta["parameters"]
    assert params["sigma"] == 0.1 and params["bandwidth"] == 3.0 and params["seed"] == 2 and params["width"] == 64
    assert {"drfm", "torch", "numpy", "sklearn", "python"} <= set(rep.meta["versions"])
    assert json.loads(rep.to_json())["meta"]["parameters"]["depth"] == 1


def test_plot_keeps_the_requested_panel_order_labels_axes_and_keeps_legends_off_the_data(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from drfm.collapse import CollapseReport

    rep = CollapseReport()
    for layer in range(3):
        for stage in ("input", "linear"):
            rep.add(model="m", layer=layer, stage=stage, metric="nc2", value=0.5 / (layer + 1), n_samples=10)
            rep.add(model="m", layer=layer, stage=stage, metric="nc1", value=2.0 / (layer + 1), n_samples=10)
    fig = CollapseReport._figure(plt, rep.rows, ["nc2", "nc1"], "layer", None)
    assert [ax.get_title() for ax in fig.axes] == ["nc2", "nc1"]
    assert all(ax.get_ylabel().startswith(ax.get_title()) for ax in fig.axes)
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    plt.close(fig)
    assert rep.plot(tmp_path / "p.png") == tmp_path / "p.png" and (tmp_path / "p.png").stat().st_size > 0


def test_feature_spectrum_known_answers():
    from drfm.collapse import feature_spectrum

    rng = np.random.default_rng(0)
    K, p, n = 4, 30, 800
    y = np.arange(n) % K
    # K orthogonal class means + small noise: K - 1 dominant eigenvalues (centred means), MF, labels in their span
    H = 10.0 * np.eye(K, p)[y] + 0.1 * rng.standard_normal((n, p))
    spec = feature_spectrum(H, y)
    lam = spec["eigenvalues"]
    assert spec["verdict"] == "MF" and spec["mf_share"] > 0.99
    assert lam[K - 2] > 100 * lam[K - 1]  # a gap after K - 1 eigenvalues
    assert spec["label_share"][: K - 1].sum() > 0.99 and abs(spec["participation_ratio"] - (K - 1)) < 0.1
    # independent check of the eigenvalues: the singular values of the centred features
    s = np.linalg.svd(H - H.mean(0), compute_uv=False)
    np.testing.assert_allclose(lam, s**2 / n, rtol=1e-9, atol=1e-12)
    # isotropic features: no dominant directions, EF
    iso = feature_spectrum(rng.standard_normal((n, p)), y)
    assert iso["verdict"] == "EF" and iso["participation_ratio"] > 0.8 * p and iso["mf_share"] < 0.2
    with pytest.raises(ValueError, match="labels"):
        feature_spectrum(H, y[:10])


def test_spectrum_metrics_in_reports():
    from drfm.collapse import stage_report

    rng = np.random.default_rng(1)
    y = np.arange(300) % 3
    feats = [{"input": rng.standard_normal((300, 8)), "linear": 5 * np.eye(3, 8)[y] + 0.01 * rng.standard_normal((300, 8))}]
    rep = stage_report(feats, y, metrics=("effective_features", "mf_share"), model_name="m")
    vals = {(r["stage"], r["metric"]): r["value"] for r in rep.rows}
    assert vals[("linear", "mf_share")] > 0.99 > vals[("input", "mf_share")]
    assert vals[("linear", "effective_features")] < 2.5 < vals[("input", "effective_features")]


def test_normalised_feature_collapse_of_a_simplex_etf_is_zero():
    from drfm.collapse import nc1, nc1_sphere, nc2_sphere, nc3_sphere, sphere

    K, p = 4, 6
    # an exact simplex ETF on the sphere: centred standard basis vectors, normalised
    E = np.eye(K) - 1.0 / K
    M = np.zeros((K, p))
    M[:, :K] = E / np.linalg.norm(E, axis=1, keepdims=True)
    y = np.repeat(np.arange(K), 5)
    scales = np.linspace(0.5, 3.0, len(y))[:, None]  # each point at its own radius: collapse only after normalising
    H = M[y] * scales
    assert nc1(H, y) > 0.01
    assert nc1_sphere(H, y) < 1e-20 and nc2_sphere(H, y) < 1e-20
    assert nc3_sphere(H, y, 7.0 * M) < 1e-20  # classifier = the means, at any scale
    np.testing.assert_allclose(np.linalg.norm(sphere(H), axis=1), 1.0)
    assert np.all(sphere(np.zeros((2, 3))) == 0)
    # off the ETF: positive
    rng = np.random.default_rng(0)
    assert nc2_sphere(rng.standard_normal((40, 6)), np.arange(40) % 4) > 0.01


def test_label_alignment_known_answers():
    from drfm.collapse import label_alignment

    rng = np.random.default_rng(2)
    K, n = 3, 600
    y = np.arange(n) % K
    Y = np.eye(K)[y]
    # the labels inside the top-k span: the features' two strongest directions are the (centred) label vectors
    H = np.hstack([10 * (Y - Y.mean(0))[:, :2], 0.1 * rng.standard_normal((n, 5))])
    assert label_alignment(H, y) == pytest.approx(1.0, abs=1e-3)
    # labels only in a weak direction: not in the top-2 span
    H2 = np.hstack([0.01 * (Y - Y.mean(0))[:, :2], rng.standard_normal((n, 5))])
    assert label_alignment(H2, y) < 0.05
    # independent formula: projection onto the top-k left singular vectors by SVD
    Hc = H2 - H2.mean(0)
    U = np.linalg.svd(Hc, full_matrices=False)[0][:, :4]
    Yc = Y - Y.mean(0)
    ref = np.sum((U.T @ Yc) ** 2) / np.sum(Yc**2)
    assert label_alignment(H2, y, k=4) == pytest.approx(ref, rel=1e-8)


def test_spectrum_metrics_share_one_eigendecomposition_per_stage(monkeypatch):
    import drfm.collapse as col
    import drfm.collapse.report as report_module  # (where stage_report finds feature_spectrum)

    rng = np.random.default_rng(3)
    y = np.arange(200) % 4
    feats = [{"input": rng.standard_normal((200, 7)), "linear": rng.standard_normal((200, 7))}]
    metrics = ("effective_features", "mf_share", "label_alignment")
    expected = {m: [col.METRICS[m](f, y) for f in feats[0].values()] for m in metrics}
    calls = []
    real = col.feature_spectrum
    monkeypatch.setattr(report_module, "feature_spectrum", lambda *a, **k: calls.append(1) or real(*a, **k))
    rep = col.stage_report(feats, y, metrics=metrics, model_name="m")
    assert len(calls) == 2  # one per stage, not one per metric
    for m in metrics:
        np.testing.assert_allclose([r["value"] for r in rep.rows if r["metric"] == m], expected[m], rtol=1e-12)


def test_least_squares_readout_matches_numpy_lstsq_and_checks_shapes():
    from drfm.collapse import least_squares_classifier

    rng = np.random.default_rng(4)
    H = rng.standard_normal((120, 5))
    y = rng.integers(0, 3, 120)
    Y = np.eye(3)[y]
    ref = np.linalg.lstsq(H - H.mean(0), Y - Y.mean(0), rcond=None)[0].T  # the unregularised readout
    np.testing.assert_allclose(least_squares_classifier(H, y), ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="one label per row"):
        least_squares_classifier(H, y[:10])


def test_fit_rows_report_splits_each_layer_by_its_own_fitted_rows():
    from drfm import DeepRFMClassifier, RFMClassifier
    from drfm.collapse import fit_rows_report

    rng = np.random.default_rng(3)
    X = rng.standard_normal((160, 6))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int) + (X[:, 2] > 0.8)
    model = DeepRFMClassifier(depth=2, random_state=0).set_params(layer__iter_sample_size=70).fit(X, y)
    rows = [layer.extra["iter_rows"] for layer in model.layers_]
    assert len(rows[0]) == 70 and not np.array_equal(rows[0], rows[1])  # every layer draws its own rows
    rep = fit_rows_report(model, X, y, metrics=("nc1", "nc2"), model_name="m")
    feats = model.layer_features(X)  # the reference: the stage features, split by hand
    for layer, idx in enumerate(rows):
        rest = np.setdiff1d(np.arange(len(y)), idx)
        for part, sel in (("fitted", idx), ("unfitted", rest)):
            for stage in ("input", "linear", "nonlinear"):
                got = {r["metric"]: r for r in rep.rows if (r["model"], r["layer"], r["stage"]) ==
                       (f"m/{part}", layer, stage)}
                assert got["nc1"]["value"] == pytest.approx(nc1(feats[layer][stage][sel], y[sel]), rel=1e-12)
                assert got["nc2"]["value"] == pytest.approx(nc2(feats[layer][stage][sel], y[sel]), rel=1e-12)
                assert got["nc1"]["rows"] == part and got["nc1"]["n_samples"] == len(sel)
    assert rep.meta["fit_rows"] == [70, 70]
    with pytest.raises(ValueError, match="order given to fit"):
        fit_rows_report(model, X[:50], y[:50])
    with pytest.raises(ValueError, match="X has 159 rows and y 160"):
        fit_rows_report(model, X[:-1], y)
    every = DeepRFMClassifier(depth=1, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="all training rows"):
        fit_rows_report(every, X, y)
    with pytest.raises(TypeError, match="needs a fitted Deep RFM"):
        fit_rows_report(RFMClassifier(iters=1).fit(X, y), X, y)
