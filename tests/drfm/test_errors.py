"""Bad input gets a clear error, in scikit-learn's message style, before any heavy work."""
import re

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from drfm import RFMClassifier, RFMRegressor

rng = np.random.default_rng(0)
X = rng.standard_normal((30, 4))
y = X[:, 0]


@pytest.mark.parametrize(
    "params,message",
    [
        ({"bandwidth": -1}, "The 'bandwidth' parameter of RFMRegressor must be a float in the range (0, inf) or a str among {'median', 'auto'}. Got -1 instead."),
        ({"bandwidth": 0.0}, "The 'bandwidth' parameter of RFMRegressor must be a float in the range (0, inf) or a str among {'median', 'auto'}. Got 0.0 instead."),
        ({"reg": -0.1}, "The 'reg' parameter of RFMRegressor must be a float in the range [0, inf) or a str among {'auto'}. Got -0.1 instead."),
        ({"iters": 1.5}, "The 'iters' parameter of RFMRegressor must be an int in the range [0, inf). Got 1.5 instead."),
        ({"solver": "magic"}, "The 'solver' parameter of RFMRegressor must be a str among {'auto', 'direct', 'cg', 'eigenpro', 'nystrom'}. Got 'magic' instead."),
        ({"device": "tpu"}, "The 'device' parameter of RFMRegressor must be a str among"),
        ({"dtype": "float16"}, "The 'dtype' parameter of RFMRegressor must be a str among {'float32', 'float64'}. Got 'float16' instead."),
        ({"validation_fraction": 1.0}, "The 'validation_fraction' parameter of RFMRegressor must be a float in the range (0, 1) or None. Got 1.0 instead."),
        ({"diag": "yes"}, "The 'diag' parameter of RFMRegressor must be an instance of 'bool'. Got 'yes' instead."),
    ],
)
def test_bad_parameters(params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RFMRegressor(**params).fit(X, y)


def test_bad_parameter_is_also_typeerror():
    with pytest.raises(TypeError):
        RFMRegressor(bandwidth="wide").fit(X, y)


def test_unavailable_cuda_device():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="'device'.*CUDA is not available"):
        RFMRegressor(device="cuda").fit(X, y)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_in_X_and_y(bad):
    Xb = X.copy()
    Xb[3, 1] = bad
    with pytest.raises(ValueError, match="Input X contains (NaN|infinity)"):
        RFMRegressor().fit(Xb, y)
    yb = y.copy()
    yb[2] = bad
    with pytest.raises(ValueError, match="Input y contains (NaN|infinity)"):
        RFMRegressor().fit(X, yb)


def test_wrong_feature_count_at_predict():
    m = RFMRegressor(iters=0).fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but RFMRegressor is expecting 4 features as input"):
        m.predict(X[:, :3])


def test_predict_before_fit():
    with pytest.raises(NotFittedError):
        RFMRegressor().predict(X)
    with pytest.raises(NotFittedError):
        RFMClassifier().decision_function(X)


def test_one_class_only():
    with pytest.raises(ValueError, match="at least 2 classes.*only one class: 'a'"):
        RFMClassifier().fit(X, ["a"] * 30)


def test_empty_X():
    with pytest.raises(ValueError, match="0 sample"):
        RFMRegressor().fit(np.empty((0, 4)), np.empty(0))


def test_continuous_target_for_classifier():
    with pytest.raises(ValueError, match="Unknown label type"):
        RFMClassifier().fit(X, y)


def test_budget_too_small_for_direct_solve_says_what_fits():
    with pytest.raises(ValueError, match=r"at most \d+ training samples"):
        RFMRegressor(solver="direct", memory_budget=1000).fit(X, y)


def test_budget_too_small_for_any_solver_says_what_fits():
    with pytest.raises(ValueError, match=r"even the iterative solver needs .* about \d+ samples would fit"):
        RFMRegressor(memory_budget=1000).fit(X, y)
