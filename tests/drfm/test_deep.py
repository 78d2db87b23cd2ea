import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from drfm import RFMRegressor
from drfm.collapse import collapse_report, nc1
from drfm.datasets import load
from drfm.deep import DeepRFMClassifier, DeepRFMRegressor


@pytest.fixture(scope="module")
def digits():
    return load("digits", n_train=600, n_test=200)


def test_depth1_identity_map_equals_one_iteration_rfm_on_normalised_rows():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 6))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2]
    Xte = rng.standard_normal((50, 6))
    deep = DeepRFMRegressor(1, feature_map="none", standardize=False, layer=RFMRegressor(2.0, iters=1),
                            dtype="float64", random_state=0).fit(X, y)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    rfm = RFMRegressor(2.0, iters=1, dtype="float64", random_state=0).fit(unit, y)
    np.testing.assert_allclose(deep.layers_[0].M, rfm.M_, rtol=1e-8, atol=1e-12)
    unit_te = Xte / np.linalg.norm(Xte, axis=1, keepdims=True)
    np.testing.assert_allclose(deep.predict(Xte), rfm.predict(unit_te), rtol=1e-7, atol=1e-9)


def test_layer_subset_m_is_agop_of_the_subset_machine():
    import torch

    from kernels.agop import laplace_agop

    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 6))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2]
    deep = DeepRFMRegressor(1, feature_map="none", standardize=False, dtype="float64",
                            layer=RFMRegressor(2.0, iters=1, iter_sample_size=120), random_state=0).fit(X, y)
    rows = deep.layers_[0].extra["iter_rows"]
    assert len(rows) == 120
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    km = RFMRegressor(2.0, iters=0, dtype="float64").fit(unit[rows], y[rows])
    agop = laplace_agop(torch.tensor(unit), torch.tensor(unit[rows]), torch.tensor(km.dual_coef_),
                        bandwidth=2.0).numpy()
    np.testing.assert_allclose(deep.layers_[0].M, agop / np.abs(agop).max(), rtol=1e-6, atol=1e-10)
    assert deep.final_.X_fit_.shape[0] == 300  # the final machine uses every point


def test_layer_features_shapes_and_stages(digits):
    m = DeepRFMClassifier(3, feature_map="relu", width=40, random_state=0).fit(digits.X_train, digits.y_train)
    feats = m.layer_features(digits.X_test)
    assert len(feats) == 3 and list(feats[0]) == ["input", "linear", "nonlinear"]
    assert feats[0]["input"].shape == (200, 64) and feats[0]["nonlinear"].shape == (200, 40)
    assert feats[1]["input"].shape == (200, 40)
    np.testing.assert_allclose(np.linalg.norm(feats[1]["input"], axis=1), 1.0)
    np.testing.assert_allclose(feats[0]["linear"], feats[0]["input"] @ m.layers_[0].sqrt_m, rtol=1e-12)
    np.testing.assert_allclose(m.transform(digits.X_test, layer=1), feats[1]["nonlinear"])
    np.testing.assert_allclose(m.layers_[0].sqrt_m @ m.layers_[0].sqrt_m, m.layers_[0].M, atol=1e-10)
    assert np.abs(m.layers_[0].M).max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="layer must be"):
        m.transform(digits.X_test, layer=5)


def test_deterministic_under_random_state(digits):
    a = DeepRFMClassifier(3, random_state=7).fit(digits.X_train, digits.y_train)
    b = DeepRFMClassifier(3, random_state=7).fit(digits.X_train, digits.y_train)
    c = DeepRFMClassifier(3, random_state=8).fit(digits.X_train, digits.y_train)
    np.testing.assert_array_equal(a.layers_[2].W, b.layers_[2].W)
    np.testing.assert_array_equal(a.decision_function(digits.X_test), b.decision_function(digits.X_test))
    assert not np.array_equal(a.layers_[0].W, c.layers_[0].W)


def test_collapse_forms_with_depth_and_report(digits):
    m = DeepRFMClassifier(5, feature_map="relu", random_state=0).fit(digits.X_train, digits.y_train)
    assert m.score(digits.X_test, digits.y_test) > 0.85
    rep = collapse_report(m, digits.X_train, digits.y_train, metrics=("nc1", "nc2"))
    vals = {(r["layer"], r["stage"]): r["value"] for r in rep.values("nc1")}
    assert vals[(4, "nonlinear")] < vals[(0, "input")] / 5  # collapse deepens with depth
    for layer in range(5):  # the linear map M^{1/2} reduces NC1 at every layer
        assert vals[(layer, "linear")] < vals[(layer, "input")]
    feats = m.layer_features(digits.X_train)
    assert vals[(2, "linear")] == pytest.approx(nc1(feats[2]["linear"], digits.y_train))
    assert len(rep.rows) == 5 * 3 * 2


def test_every_rfm_parameter_reaches_each_layer_machine(digits):
    m = DeepRFMClassifier(3, feature_map="relu", width=30, random_state=0)
    m.set_params(layer__solver="cg", layer__solver_tol=1e-7, layer__agop_sample_size=123, layer__diag=True)
    assert m.get_params()["layer__solver_tol"] == 1e-7 and m.layer.agop_sample_size == 123
    m.fit(digits.X_train, digits.y_train)
    for layer in m.layers_:
        km = layer.machine
        assert (km.solver, km.solver_tol, km.agop_sample_size, km.diag) == ("cg", 1e-7, 123, True)
        # and they took effect: CG to 1e-7, the AGOP over 123 rows, a diagonal M per layer
        rec = layer.history[0]
        assert rec["solver"] == "cg" and rec["solver_converged"] and rec["solver_residual"] <= 1e-7
        assert rec["agop_rows"] == 123
        assert layer.M.ndim == 1 and layer.M.shape == (layer.sqrt_m.shape[0],)
    # the template given is not modified by fitting, and the final machine is the template with iters=0
    assert m.layer.iters == 1 and m.final_.iters == 0 and m.final_.solver == "cg"
    # the diagonal linear stage is X_l * r (elementwise)
    feats = m.layer_features(digits.X_test[:20])
    np.testing.assert_allclose(feats[0]["linear"], feats[0]["input"] * m.layers_[0].sqrt_m)


def test_nested_parameters_and_template_errors():
    from sklearn.base import clone

    m = DeepRFMClassifier(2)
    params = m.get_params(deep=True)
    assert params["layer"] is None and params["layer__bandwidth"] == 2.0 and params["layer__iters"] == 1
    c = clone(m.set_params(layer__reg=0.5))
    assert c.layer.reg == 0.5 and c.layer is not m.layer
    X, y = np.random.default_rng(0).normal(size=(40, 3)), np.arange(40) % 2
    with pytest.raises(ValueError, match="The 'layer' parameter of DeepRFMClassifier must have iters >= 1"):
        DeepRFMClassifier(2, layer=RFMRegressor(iters=0)).fit(X, y)
    with pytest.raises(ValueError, match="The 'layer' parameter of DeepRFMClassifier must be an RFMRegressor"):
        DeepRFMClassifier(2, layer="rfm").fit(X, y)
    with pytest.raises(ValueError, match="The 'reg' parameter of RFMRegressor"):
        DeepRFMClassifier(2, layer=RFMRegressor(reg=-1.0)).fit(X, y)


def test_layer_features_budget_is_checked_before_fitting():
    X, y = np.random.default_rng(0).normal(size=(200, 5)), np.arange(200) % 2
    with pytest.raises(ValueError, match=r"layer 0 needs at least .* memory_budget is 64.0 MiB .*width 50000"):
        DeepRFMClassifier(2, width=50000, memory_budget=64 * 2**20).fit(X, y)


DEEP = [DeepRFMClassifier(2, width=64, sigma=0.5, random_state=0), DeepRFMRegressor(2, feature_map="relu", width=8, random_state=0)]


@parametrize_with_checks(DEEP, expected_failed_checks=lambda e: {
    "check_methods_subset_invariance": "float32 arithmetic: BLAS kernels differ by row-block size (~1e-6)",
})
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_every_estimator_imports_from_drfm():
    import drfm
    from drfm import dnn
    from drfm.mlp import TorchMLPClassifier

    assert drfm.DeepRFMClassifier is DeepRFMClassifier and drfm.DeepRFMRegressor is DeepRFMRegressor
    assert drfm.TorchMLPClassifier is TorchMLPClassifier is dnn.TorchMLPClassifier
    assert {"RFMRegressor", "RFMClassifier", "DeepRFMClassifier", "DeepRFMRegressor", "TorchMLPClassifier"} <= set(
        drfm.__all__)


def test_pandas_output_in_a_pipeline():
    pd = pytest.importorskip("pandas")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.standard_normal((150, 4)), columns=list("abcd"))
    y = (X["a"] > 0).astype(int).to_numpy()
    pipe = make_pipeline(StandardScaler(), DeepRFMClassifier(depth=2, width=32, random_state=0))
    pipe.set_output(transform="pandas")
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.8
    deep = pipe[-1]
    out = deep.transform(pipe[0].transform(X))
    assert isinstance(out, pd.DataFrame) and list(out.columns) == list(deep.get_feature_names_out())
    assert out.shape == (150, len(deep.get_feature_names_out()))


def test_verbose_shows_the_final_machines_solver_progress(capfd):
    # the final machine's solve takes minutes at 50 000 rows: with verbose=1 its CG shows beside the layer bar,
    # while the layers' own machines stay quiet
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(300, 6)), rng.integers(0, 3, 300)
    layer = RFMRegressor(solver="cg", iters=1)
    DeepRFMClassifier(2, layer=layer, random_state=0, verbose=1).fit(X, y)
    err = capfd.readouterr().err
    assert "DeepRFMClassifier" in err and "cg" in err and "rel_res" in err
    assert err.count("RFMRegressor") == err.count("RFMRegressor", err.index("2/2")) > 0  # only after the layers
    DeepRFMClassifier(2, layer=layer, random_state=0, verbose=0).fit(X, y)
    assert capfd.readouterr().err == ""
