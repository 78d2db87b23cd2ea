"""Neural regression collapse (NRC1-3, Andriopoulos et al. 2024) against constructions with known answers: features
with an exactly known principal subspace (the residual computed row by row in their own coordinates), weights with
the unconstrained-feature model's structure, and a brute-force scan over gamma with scipy's matrix square root."""
import numpy as np
import pytest
from scipy.linalg import sqrtm

from drfm.collapse import nrc1, nrc2, nrc3


def _orthonormal_centred(N, k, rng):
    """k orthonormal columns over N rows, each summing to 0 (the span of centred columns is orthogonal to 1)."""
    A = rng.standard_normal((N, k))
    return np.linalg.qr(A - A.mean(0))[0]


def _rotation(p, rng):
    return np.linalg.qr(rng.standard_normal((p, p)))[0]


def _split_features(N=400, n=2, q=6, a=3.0, b=0.4, seed=0):
    """Features whose centred covariance is exactly diag(a^2 (n times), b^2 (q times)) / N in hidden coordinates,
    rotated; returns them, the rotation and the per-row residual share outside the first n hidden coordinates."""
    rng = np.random.default_rng(seed)
    Q = _orthonormal_centred(N, n + q, rng)
    hidden = np.hstack([a * Q[:, :n], b * Q[:, n:]])
    R = _rotation(n + q, rng)
    share = np.sum(hidden[:, n:] ** 2, 1) / np.sum(hidden**2, 1)
    return hidden @ R + 5.0, R, float(share.mean())  # (+5: a global mean the metrics must remove)


def test_nrc1_is_the_rows_share_outside_the_top_principal_subspace():
    H, _, expected = _split_features()
    y = np.zeros((len(H), 2))
    y[:, 0] = np.arange(len(H))
    assert nrc1(H, y) == pytest.approx(expected, rel=1e-10)
    assert 0.05 < expected < 0.5  # (a value the test can tell from 0 and from 1)


def test_nrc1_is_zero_on_collapsed_features_and_near_one_minus_n_over_p_on_random_ones():
    rng = np.random.default_rng(1)
    y = rng.standard_normal((500, 3))
    H = y @ rng.standard_normal((3, 40)) + 2.0  # features in the targets' 3-dimensional span
    assert nrc1(H, y) < 1e-12
    R = rng.standard_normal((20000, 40))
    assert nrc1(R, y[:1].repeat(20000, 0)) == pytest.approx(1 - 3 / 40, abs=0.01)


def test_nrc2_measures_the_distance_to_the_readouts_row_space():
    H, R, expected = _split_features(seed=2)
    rng = np.random.default_rng(2)
    W_in = rng.standard_normal((2, 2)) @ R[:2]  # rows spanning the top principal subspace (rotated coordinates)
    assert nrc2(H, W_in) == pytest.approx(expected, rel=1e-10)
    W_out = rng.standard_normal((2, 2)) @ R[2:4]  # rows spanning two of the small directions
    hidden = (H - H.mean(0)) @ R.T
    unit = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
    assert nrc2(H, W_out) == pytest.approx(float(np.mean(1 - np.sum(unit[:, 2:4] ** 2, 1))), rel=1e-10)


def _targets_with_covariance(S, N, rng):
    Q = _orthonormal_centred(N, S.shape[0], rng)
    return np.sqrt(N) * Q @ np.real(sqrtm(S)) + 1.5


def _nrc3_brute(W, S, gammas):
    G = W @ W.T
    G = G / np.linalg.norm(G)
    root = np.real(sqrtm(S))
    vals = []
    for g in gammas:
        T = root - np.sqrt(g) * np.eye(len(S))
        vals.append(np.sum((G - T / np.linalg.norm(T)) ** 2))
    return min(vals)


def test_nrc3_is_zero_at_the_unconstrained_feature_models_structure():
    rng = np.random.default_rng(3)
    S = np.array([[4.0, 1.2, 0.3], [1.2, 2.0, 0.5], [0.3, 0.5, 1.0]])
    Y = _targets_with_covariance(S, 300, rng)
    lam_min = np.linalg.eigvalsh(S)[0]
    gamma0 = 0.4 * lam_min
    target = 7.0 * (np.real(sqrtm(S)) - np.sqrt(gamma0) * np.eye(3))  # W W^T of the model, any scale
    W = np.real(sqrtm(target)) @ _rotation(10, rng)[:3]
    assert nrc3(W, Y) < 1e-10
    assert nrc3(W, Y, gamma=gamma0) < 1e-10
    assert nrc3(W, Y, gamma=0.0) > 1e-3  # (the fixed wrong gamma is told apart)


def test_nrc3_matches_a_brute_force_scan_over_gamma():
    rng = np.random.default_rng(4)
    S = np.diag([4.0, 1.0])
    Y = _targets_with_covariance(S, 200, rng)
    W = _rotation(5, rng)[:2]  # orthonormal rows: W W^T = I
    brute = _nrc3_brute(W, S, np.linspace(0.0, 1.0, 20001))
    assert nrc3(W, Y) == pytest.approx(brute, abs=1e-7)
    assert brute > 0.05  # uncorrelated targets of unequal variance do not want orthonormal rows
    W2 = rng.standard_normal((2, 5))
    assert nrc3(W2, Y) == pytest.approx(_nrc3_brute(W2, S, np.linspace(0.0, 1.0, 20001)), abs=1e-7)


@pytest.mark.parametrize("call, name", [
    (lambda: nrc1(np.ones((5, 2)), np.ones((4, 1))), "targets"),
    (lambda: nrc1(np.ones((5, 2)), np.ones((5, 3))), "features"),
    (lambda: nrc2(np.ones((5, 2)), np.ones((1, 3))), "weights"),
    (lambda: nrc3(np.ones((2, 3)), np.ones((5, 3))), "weights"),
    (lambda: nrc3(np.zeros((1, 3)), np.arange(5.0)), "weights"),
    (lambda: nrc3(np.ones((1, 3)), np.arange(5.0), gamma=-1.0), "gamma"),
    (lambda: nrc1(np.full((5, 2), np.nan), np.ones(5)), "features"),
])
def test_bad_input_is_refused_naming_it(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_the_papers_training_panels_as_its_code_normalises_them():
    """Against the paper code's definitions written out: Sigma_B over K (unweighted, about the mean of the class
    means), Sigma_W and Sigma_T summed over the samples and divided by K N."""
    from drfm.collapse import between_share, between_total_paper, within_share, within_total_paper

    rng = np.random.default_rng(5)
    K, N = 4, 400
    y = np.arange(N) % K  # balanced
    H = rng.standard_normal((N, 6)) + 2.0 * np.eye(K, 6)[y]
    means = np.stack([H[y == c].mean(0) for c in range(K)])
    mu_g = means.mean(0)
    tr_b = sum(np.sum((means[c] - mu_g) ** 2) for c in range(K)) / K
    tr_w = sum(np.sum((H[y == c] - means[c]) ** 2) for c in range(K)) / (K * N)
    tr_t = sum(np.sum((H[y == c] - mu_g) ** 2) for c in range(K)) / (K * N)
    assert within_total_paper(H, y) == pytest.approx(tr_w / tr_t, rel=1e-12)
    assert between_total_paper(H, y) == pytest.approx(tr_b / tr_t, rel=1e-12)
    # balanced classes: the within panel is drfm's share, the between panel K times its complement (not 1 - within)
    assert within_total_paper(H, y) == pytest.approx(within_share(H, y), rel=1e-12)
    assert between_total_paper(H, y) == pytest.approx(K * (1 - within_share(H, y)), rel=1e-12)
    assert between_total_paper(H, y) != pytest.approx(between_share(H, y), rel=1e-3)
