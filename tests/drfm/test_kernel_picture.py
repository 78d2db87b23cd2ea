"""The kernel picture's spectrum as its source defines it (``feature_spectrum(centred=False)``, ``mf_share_gd``):
the eigenfunctions of the gradient-descent operator of a linear readout, checked against gradient descent itself."""
import numpy as np
import pytest

from drfm.collapse import feature_spectrum, mf_share, mf_share_gd


def _features(N=300, p=12, K=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, N)
    H = rng.standard_normal((N, p)) * np.linspace(2.0, 0.2, p) + 0.8 + np.eye(K, p)[y] * 1.5
    return H, y


def test_gd_spectrum_predicts_gradient_descent_on_a_linear_readout():
    H, y = _features()
    N, K = len(H), 4
    Y = np.eye(K)[y]
    spec = feature_spectrum(H, y, centred=False)
    lam, share = spec["eigenvalues"], spec["label_share"]
    eta = 1.0 / lam[0]
    W = np.zeros((H.shape[1], K))
    for t in range(1, 41):  # full-batch gradient descent on (1/2N) ||H W - Y||^2 from zero
        W -= eta * H.T @ (H @ W - Y) / N
        if t in (1, 5, 40):
            fitted = np.sum((H @ W) ** 2) / np.sum(Y**2)
            # ||F_t||^2 = sum_i (1 - (1 - eta l_i)^t)^2 ||u_i^T Y||^2
            predicted = float(np.sum(share * (1 - (1 - eta * lam) ** t) ** 2))
            assert fitted == pytest.approx(predicted, rel=1e-9)
    # the centred spectrum (drfm's variant) is not this operator's: it cannot predict the same dynamics
    c = feature_spectrum(H, y)
    assert float(np.sum(c["label_share"] * (1 - (1 - eta * c["eigenvalues"]) ** 40) ** 2)) != pytest.approx(
        fitted, rel=1e-3)


def test_mf_share_gd_counts_the_top_k_eigenvalues_of_the_uncentred_second_moment():
    rng = np.random.default_rng(1)
    N, K = 400, 3
    y = np.arange(N) % K
    Q = np.linalg.qr(rng.standard_normal((N, 6)))[0] * np.sqrt(N)  # (1/N) Q^T Q = I
    s = np.array([3.0, 2.5, 2.0, 1.0, 0.5, 0.3])
    H = Q * s  # (1/N) H^T H = diag(s^2), uncentred
    assert mf_share_gd(H, y) == pytest.approx(np.sum(s[:K] ** 2) / np.sum(s**2), rel=1e-10)
    assert mf_share(H, y) != pytest.approx(mf_share_gd(H, y), rel=1e-3)  # (K - 1 centred directions differ)
    assert feature_spectrum(H, y, centred=False)["n_classes"] == K


def test_mf_share_gd_is_a_report_metric():
    from drfm.collapse import stage_report

    H, y = _features(seed=2)
    rep = stage_report([{"input": H}], y, metrics=("mf_share", "mf_share_gd"), model_name="m")
    vals = {r["metric"]: r["value"] for r in rep.rows}
    assert vals["mf_share_gd"] == pytest.approx(mf_share_gd(H, y)) and vals["mf_share"] == pytest.approx(
        mf_share(H, y))
