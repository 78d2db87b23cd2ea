"""scikit-learn's estimator contract, check by check."""
from sklearn.utils.estimator_checks import parametrize_with_checks

from drfm import RFMClassifier, RFMRegressor

# Small, fast configurations. Every check runs on the float64 configuration; the float32 ones are excused from one
# check (below) and run all the others.
ESTIMATORS = [
    RFMRegressor(iters=2, random_state=0),
    RFMClassifier(iters=2, random_state=0),
    RFMRegressor(iters=1, diag=True, validation_fraction=0.2, dtype="float64", random_state=0),
    RFMClassifier(iters=1, centering=True, dtype="float64", random_state=0),
]

FLOAT32_EXCUSED = {
    "check_methods_subset_invariance": (
        "float32 arithmetic: the float32 GEMM forming a tile's dot products sums in an order that depends on the "
        "block's size, so a row predicted alone differs from the same row in a batch at ~1e-6 of the output (the "
        "reliability tests hold it under 1e-5 of the output's std), above this check's 1e-7; the float64 "
        "configurations pass it"
    ),
}


def expected_failures(estimator):
    return FLOAT32_EXCUSED if estimator.dtype == "float32" else {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failures)
def test_sklearn_compatible(estimator, check):
    check(estimator)
