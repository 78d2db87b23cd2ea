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
    deep = DeepRFMRegressor(1, feature_map="none", standardize=False, bandwidth=2.0, dtype="float64",
                            random_state=0).fit(X, y)
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
    deep = DeepRFMRegressor(1, feature_map="none", standardize=False, bandwidth=2.0, dtype="float64",
                            iter_sample_size=120, random_state=0).fit(X, y)
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


DEEP = [DeepRFMClassifier(2, width=64, sigma=0.5, random_state=0), DeepRFMRegressor(2, feature_map="relu", width=8, random_state=0)]


@parametrize_with_checks(DEEP, expected_failed_checks=lambda e: {
    "check_methods_subset_invariance": "float32 arithmetic: BLAS kernels differ by row-block size (~1e-6)",
})
def test_sklearn_compatible(estimator, check):
    check(estimator)
