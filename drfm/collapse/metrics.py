"""Neural-collapse metrics: pure functions of (features, labels[, classifier, predictions]) -> float or dict.

They import nothing above them (no reports, networks or estimators): :mod:`drfm.collapse.report` collects them into
:class:`~drfm.collapse.report.CollapseReport` rows, :mod:`drfm.collapse.stream` accumulates them over batches.

Conventions (features H: (N, p), labels: (N,) of K classes; everything in float64):

* class means ``mu_c``; the global mean ``mu_G`` is the **mean of the class means** (the seed paper's and Papyan's
  code) unless ``global_mean="samples"``;
* ``Sigma_W = (1/N) sum_i (h_i - mu_{c_i})(h_i - mu_{c_i})^T`` (textbook), ``Sigma_B = (1/K) sum_c (mu_c - mu_G)(...)^T``;
* p x p matrices are never formed: traces come from sums of squares and the pseudo-inverse of Sigma_B lives on the
  (at most K-1)-dimensional span of the centred means.

Metrics: :func:`nc1` (tr Sigma_W / tr Sigma_B; ``scale="seed"`` divides by K as the seed paper's code does),
:func:`nc1_papyan` (tr(Sigma_W Sigma_B^+) / K), :func:`nc2` (distance of the normalised mean Gram matrix to a simplex
ETF), :func:`nc2_equinorm`, :func:`nc2_equiangularity`, :func:`nc3` (self-duality with a linear classifier),
:func:`nc4` (nearest-class-mean vs predictions), :func:`cdnv`, :func:`linear_cka`; for regression (n target columns)
:func:`nrc1`, :func:`nrc2`, :func:`nrc3` (neural regression collapse, Andriopoulos et al. 2024).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "class_means",
    "nc1",
    "nc1_papyan",
    "nc2",
    "nc2_equinorm",
    "nc2_equiangularity",
    "nc3",
    "nc4",
    "cdnv",
    "linear_cka",
    "least_squares_classifier",
    "feature_spectrum",
    "sphere",
    "label_alignment",
    "nc1_sphere",
    "nc2_sphere",
    "nc3_sphere",
    "nc3_uniform",
    "nc5",
    "nc2_uniformity",
    "uniformity_energy",
    "UNIFORMITY_KERNELS",
    "layer_cka",
    "within_share",
    "between_share",
    "within_total_paper",
    "between_total_paper",
    "feature_matrix_sparsity",
    "effective_features",
    "mf_share",
    "mf_share_gd",
    "MF_VARIANCE_SHARE",
    "nrc1",
    "nrc2",
    "nrc3",
    "class_gram",
    "LAYER_METRICS",
    "METRICS",
]


#: net log10 reductions at or below this many decades (2.3% of the metric) count as no net change
MIN_NET_LOG10 = 0.01


def _prep(features, labels):
    H = np.asarray(features, dtype=np.float64)
    if H.ndim != 2:
        raise ValueError(f"features must be a 2-D array (N, p), got shape {H.shape}")
    labels = np.asarray(labels)
    if labels.shape != (H.shape[0],):
        raise ValueError(f"labels must have shape ({H.shape[0]},) to match features, got {labels.shape}")
    if labels.dtype.kind == "f" and np.isnan(labels).any() or labels.dtype.kind == "O" and any(
            isinstance(v, float) and v != v for v in labels):
        raise ValueError("labels contain NaN: every sample needs a class")
    if not np.isfinite(H).all():
        raise ValueError("features contain NaN or infinity")
    classes, idx = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"collapse metrics need at least 2 classes, got {len(classes)}")
    return H, idx, len(classes)


def class_means(features, labels, *, global_mean: str = "classes"):
    """(K, p) class means, (p,) global mean (mean of class means, or of samples), (N,) class index, K."""
    H, idx, K = _prep(features, labels)
    counts = np.bincount(idx, minlength=K).astype(np.float64)
    means = np.zeros((K, H.shape[1]))
    np.add.at(means, idx, H)
    means /= counts[:, None]
    if global_mean == "classes":
        mu_g = means.mean(0)
    elif global_mean == "samples":
        mu_g = H.mean(0)
    else:
        raise ValueError(f"global_mean must be 'classes' or 'samples', got {global_mean!r}")
    return H, means, mu_g, idx, K


def _within(H, means, idx):
    return H - means[idx]


def nc1(features, labels, *, scale: str = "textbook", global_mean: str = "classes") -> float:
    """Trace ratio ``tr(Sigma_W) / tr(Sigma_B)``; ``scale='seed'`` gives the seed paper's values (divided by K)."""
    H, means, mu_g, idx, K = class_means(features, labels, global_mean=global_mean)
    tr_w = float(np.sum(_within(H, means, idx) ** 2)) / H.shape[0]
    tr_b = float(np.sum((means - mu_g) ** 2)) / K
    if scale not in ("textbook", "seed"):
        raise ValueError(f"scale must be 'textbook' or 'seed', got {scale!r}")
    val = tr_w / tr_b if tr_b > 0 else math.inf
    return val / K if scale == "seed" else val


def _trace_shares(features, labels):
    H, means, _, idx, K = class_means(features, labels, global_mean="samples")
    N = H.shape[0]
    mu = H.mean(0)
    tr_t = float(np.sum((H - mu) ** 2)) / N
    tr_w = float(np.sum(_within(H, means, idx) ** 2)) / N
    counts = np.bincount(idx, minlength=K).astype(np.float64)
    tr_b = float(np.sum(counts[:, None] * (means - mu) ** 2)) / N
    return tr_w, tr_b, tr_t


def within_share(features, labels) -> float:
    """``tr(Sigma_W) / tr(Sigma_T)`` (a training panel of the seed paper): the share of the total variance (about
    the sample mean) inside the classes; with ``between_share`` it sums to 1 (Sigma_B weighted by class sizes)."""
    tr_w, _, tr_t = _trace_shares(features, labels)
    return tr_w / tr_t if tr_t > 0 else math.nan


def between_share(features, labels) -> float:
    """``tr(Sigma_B) / tr(Sigma_T)``, Sigma_B weighted by class sizes (see :func:`within_share`)."""
    _, tr_b, tr_t = _trace_shares(features, labels)
    return tr_b / tr_t if tr_t > 0 else math.nan


def _paper_traces(features, labels):
    """The seed paper code's traces: ``Sigma_B = (1/K) sum_c (mu_c - mu_G)(.)^T`` (unweighted, mu_G the mean of the
    class means), ``Sigma_W`` and ``Sigma_T`` (about mu_G) summed over the samples and divided by K N."""
    H, means, mu_g, idx, K = class_means(features, labels)
    N = H.shape[0]
    tr_w = float(np.sum(_within(H, means, idx) ** 2)) / (K * N)
    tr_t = float(np.sum((H - mu_g) ** 2)) / (K * N)
    tr_b = float(np.sum((means - mu_g) ** 2)) / K
    return tr_w, tr_b, tr_t


def within_total_paper(features, labels) -> float:
    """The seed paper's within-class training panel, normalised as its code does: ``tr(Sigma_W) / tr(Sigma_T)`` with
    both divided by K N (:func:`_paper_traces`). Equals :func:`within_share` for balanced classes."""
    tr_w, _, tr_t = _paper_traces(features, labels)
    return tr_w / tr_t if tr_t > 0 else math.nan


def between_total_paper(features, labels) -> float:
    """The seed paper's between-class training panel as its code normalises it: ``tr(Sigma_B) / tr(Sigma_T)`` with
    Sigma_B divided by K and Sigma_T by K N. Unlike :func:`between_share` it does not sum to 1 with the within panel:
    for balanced classes it is K (1 - within), K at full collapse."""
    _, tr_b, tr_t = _paper_traces(features, labels)
    return tr_b / tr_t if tr_t > 0 else math.nan


def nc1_papyan(features, labels, *, global_mean: str = "classes", rcond: float = 1e-10) -> float:
    """Papyan et al.'s ``tr(Sigma_W Sigma_B^+) / K``, with the pseudo-inverse on the span of the centred means."""
    H, means, mu_g, idx, K = class_means(features, labels, global_mean=global_mean)
    Mc = means - mu_g  # (K, p); Sigma_B = Mc^T Mc / K
    if not np.any(Mc):
        return math.inf  # all class means coincide: Sigma_B = 0, no collapse (as nc1 is inf there)
    sv, Vt = _mean_span(Mc, rcond)
    proj = _within(H, means, idx) @ Vt.T  # (N, r): coordinates of within-class deviations on the span
    return _papyan_of((proj**2).sum(0) / H.shape[0], sv, K)


def _mean_span(Mc, rcond):
    """Singular values and right singular vectors of the centred means (K, p), those above ``rcond`` of the largest."""
    _, sv, Vt = np.linalg.svd(Mc, full_matrices=False)
    keep = sv > rcond * max(sv.max(), 1e-300)
    return sv[keep], Vt[keep]


def _papyan_of(within_var, sv, K) -> float:
    """``tr(Sigma_W Sigma_B^+) / K = sum_j (K / s_j^2) v_j^T Sigma_W v_j / K`` from the within-class variance along each
    kept direction v_j of the centred means and their singular values s_j."""
    return float(np.sum(within_var * (K / sv**2))) / K


def _normalised_centred_means(features, labels, global_mean):
    _, means, mu_g, _, K = class_means(features, labels, global_mean=global_mean)
    Mc = means - mu_g
    norms = np.linalg.norm(Mc, axis=1)
    return Mc / np.maximum(norms, 1e-300)[:, None], norms, K


def nc2(features, labels, *, global_mean: str = "classes") -> float:
    """ETF distance ``||G - Sigma_ETF||_F^2 / K^2``, G the Gram matrix of normalised centred class means and
    ``Sigma_ETF`` with ones on the diagonal and ``-1/(K-1)`` off it (0 for a simplex ETF)."""
    m, _, _ = _normalised_centred_means(features, labels, global_mean)
    return _etf_distance(m)


def _etf_distance(m) -> float:
    """``||m m^T - Sigma_ETF||_F^2 / K^2`` for the (K, p) normalised centred class means ``m``."""
    K = len(m)
    etf = np.full((K, K), -1.0 / (K - 1))
    np.fill_diagonal(etf, 1.0)
    return float(np.sum((m @ m.T - etf) ** 2)) / K**2


def nc2_equinorm(features, labels, *, global_mean: str = "classes") -> float:
    """``std_c ||mu_c - mu_G|| / mean_c ||mu_c - mu_G||`` (0 when all centred means have equal norms)."""
    _, norms, _ = _normalised_centred_means(features, labels, global_mean)
    return float(norms.std() / norms.mean()) if norms.mean() > 0 else math.inf


def nc2_equiangularity(features, labels, *, global_mean: str = "classes") -> float:
    """Mean over class pairs of ``|cos(mu_c, mu_c') + 1/(K-1)|`` (0 for a simplex ETF)."""
    m, _, _ = _normalised_centred_means(features, labels, global_mean)
    return _equiangularity(m)


def _equiangularity(m) -> float:
    """Mean over pairs of ``|cos + 1/(K-1)|`` for the (K, p) normalised centred class means ``m``."""
    K = len(m)
    off = ~np.eye(K, dtype=bool)
    return float(np.mean(np.abs((m @ m.T)[off] + 1.0 / (K - 1))))


def _classifier(classifier, shape) -> np.ndarray:
    W = np.asarray(classifier, dtype=np.float64)
    if W.shape != shape:
        raise ValueError(f"classifier must have shape {shape} (classes x features), got {W.shape}")
    if not np.any(W):
        raise ValueError("classifier is all zeros: its alignment with the class means is undefined")
    return W


def _self_duality(classifier, Mc) -> float:
    W = _classifier(classifier, Mc.shape)
    if not np.any(Mc):
        return math.inf  # all class means coincide: no direction to align with (as nc1 is inf there)
    return float(np.sum((W / np.linalg.norm(W) - Mc / np.linalg.norm(Mc)) ** 2))


def nc3(features, labels, classifier, *, global_mean: str = "classes") -> float:
    """Self-duality ``|| W/||W||_F - Mc/||Mc||_F ||_F^2`` for a linear classifier W (K, p), classes in sorted order."""
    _, means, mu_g, _, _ = class_means(features, labels, global_mean=global_mean)
    return _self_duality(classifier, means - mu_g)


def _cosines(A, B) -> np.ndarray:
    """Row-wise cosines of A and B (0 where a row is zero)."""
    na, nb = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
    dots = np.einsum("ij,ij->i", A, B)
    return np.divide(dots, na * nb, out=np.zeros_like(dots), where=(na > 0) & (nb > 0))


def _uniform_duality(classifier, Mc) -> float:
    return float(np.var(_cosines(_classifier(classifier, Mc.shape), Mc)))


def nc3_uniform(features, labels, classifier, *, global_mean: str = "classes") -> float:
    """Uniform NC3: the variance over classes of ``cos(w_c, mu_c - mu_G)`` -- 0 when every class's classifier row
    makes the same angle with its centred mean (whatever their norms), as self-duality up to per-class scale needs."""
    _, means, mu_g, _, _ = class_means(features, labels, global_mean=global_mean)
    return _uniform_duality(classifier, means - mu_g)


def _ood_orthogonality(Mc, ood_direction) -> float:
    return float(np.mean(np.abs(_cosines(Mc, np.broadcast_to(ood_direction, Mc.shape)))))


def nc5(features, labels, ood_features, *, global_mean: str = "classes") -> float:
    """NC5 (ID / OOD orthogonality): the mean over classes of ``|cos(mu_c - mu_G, mu_OOD - mu_G)|``, mu_OOD the mean
    of out-of-distribution features of the same layer; 0 when the OOD mean lies orthogonal to every centred class
    mean (or at the global mean)."""
    _, means, mu_g, _, _ = class_means(features, labels, global_mean=global_mean)
    O = np.asarray(ood_features, dtype=np.float64)
    if O.ndim != 2 or O.shape[1] != means.shape[1] or len(O) == 0:
        raise ValueError(f"ood_features must be (M >= 1, {means.shape[1]}), got shape {O.shape}")
    return _ood_orthogonality(means - mu_g, O.mean(0) - mu_g)


#: the kernels of hyperspherical uniformity (generalised NC2); each an energy, lower = more uniform
UNIFORMITY_KERNELS = ("log", "riesz", "distance")


def uniformity_energy(points, *, kernel: str = "log", s: float = 1.0) -> float:
    """Mean pairwise energy of unit vectors (K, p): ``log``: mean ``log(1 / d)``; ``riesz``: mean ``d^(-s)``;
    ``distance``: mean ``-d`` (d the Euclidean distance between two of them). A simplex ETF minimises each for
    K <= p + 1 (all distances ``sqrt(2K / (K - 1))``)."""
    if kernel not in UNIFORMITY_KERNELS:
        raise ValueError(f"kernel must be one of {UNIFORMITY_KERNELS}, got {kernel!r}")
    if not s > 0:
        raise ValueError(f"s must be > 0, got {s!r}")
    m = np.asarray(points, dtype=np.float64)
    iu = np.triu_indices(len(m), 1)
    sq = (m**2).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * m @ m.T, 0.0))[iu]
    if kernel == "distance":
        return float(-d.mean())
    if np.any(d == 0):
        return math.inf  # two coinciding means: infinite energy
    return float(np.mean(-np.log(d)) if kernel == "log" else np.mean(d ** (-s)))


def nc2_uniformity(features, labels, *, kernel: str = "log", s: float = 1.0, global_mean: str = "classes") -> float:
    """Generalised NC2 (hyperspherical uniformity): :func:`uniformity_energy` of the normalised centred class means."""
    m, _, _ = _normalised_centred_means(features, labels, global_mean)
    return uniformity_energy(m, kernel=kernel, s=s)


def nc4(features, labels, predictions) -> float:
    """Fraction of points whose nearest-class-mean label differs from the model's prediction."""
    H, means, _, _, _ = class_means(features, labels)
    predictions = np.asarray(predictions)
    if predictions.shape != (H.shape[0],):
        raise ValueError(f"predictions must have shape ({H.shape[0]},) to match features, got {predictions.shape}")
    classes = np.unique(np.asarray(labels))
    # squared distances by GEMM, (N, K)
    d2 = (H**2).sum(1)[:, None] - 2.0 * H @ means.T + (means**2).sum(1)[None, :]
    ncc = classes[np.argmin(d2, axis=1)]
    return float(np.mean(ncc != predictions))


def cdnv(features, labels) -> float:
    """Class-distance normalised variance: mean over pairs of ``(Var_c + Var_c') / (2 ||mu_c - mu_c'||^2)``."""
    H, means, _, idx, K = class_means(features, labels)
    w = _within(H, means, idx)
    return _cdnv_of(np.bincount(idx, weights=(w**2).sum(1), minlength=K) / np.bincount(idx, minlength=K), means)


def _cdnv_of(var, means) -> float:
    """CDNV from per-class variances (K,) and class means (K, p)."""
    K = len(means)
    sq = (means**2).sum(1)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * means @ means.T, 1e-300)
    iu = np.triu_indices(K, 1)
    return float(np.mean((var[:, None] + var[None, :])[iu] / (2.0 * dist2[iu])))


def linear_cka(X, Y) -> float:
    """Linear centred kernel alignment ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` between two
    representations of the same N points (p_x, p_y features), via whichever side (features or samples) is smaller."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of rows, got {X.shape[0]} and {Y.shape[0]}")
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    if X.shape[0] <= max(X.shape[1], Y.shape[1]):
        Kx, Ky = X @ X.T, Y @ Y.T
        num, dx, dy = np.sum(Kx * Ky), np.linalg.norm(Kx), np.linalg.norm(Ky)
    else:
        num = np.sum((Y.T @ X) ** 2)
        dx, dy = np.linalg.norm(X.T @ X), np.linalg.norm(Y.T @ Y)
    return float(num / (dx * dy)) if dx > 0 and dy > 0 else 0.0


def layer_cka(features_a, features_b=None) -> np.ndarray:
    """Linear CKA between every pair of layers: ``features_a`` and ``features_b`` are lists of (N, p_l) arrays for the
    same N points (e.g. a Deep RFM's and an MLP's layers); without ``features_b``, the layers of one model against
    each other (a symmetric matrix with ones on the diagonal). Returns (L_a, L_b)."""
    same = features_b is None
    features_b = features_a if same else features_b
    out = np.zeros((len(features_a), len(features_b)))
    for i, A in enumerate(features_a):
        for j, B in enumerate(features_b):
            if same and j < i:
                out[i, j] = out[j, i]
            else:
                out[i, j] = linear_cka(A, B)
    return out


#: the share of diag(M) the "input directions used" count must carry
INPUT_SHARE_MASS = 0.9


def feature_matrix_sparsity(M) -> dict:
    """How sparse a learned feature matrix is: a layer's M (Deep RFM; a vector for a diagonal M) or ``W^T W`` of a
    network layer. ``effective_rank``: the participation ratio ``(sum l)^2 / sum l^2`` of M's eigenvalues (1 for a
    rank-one M, d for a multiple of the identity); ``input_share``: the smallest share of the d input coordinates
    whose diagonal entries of M carry INPUT_SHARE_MASS of its trace (1/d when one coordinate carries it, about 0.9 for
    the identity)."""
    M = np.asarray(M, dtype=np.float64)
    if M.ndim == 1:
        lam, dg = np.clip(M, 0.0, None), np.clip(M, 0.0, None)
    elif M.ndim == 2 and M.shape[0] == M.shape[1]:
        lam = np.clip(np.linalg.eigvalsh(0.5 * (M + M.T)), 0.0, None)
        dg = np.clip(np.diag(M), 0.0, None)
    else:
        raise ValueError(f"M must be a square matrix or a diagonal vector, got shape {M.shape}")
    if not np.isfinite(M).all():
        raise ValueError("M contains NaN or infinity")
    total, dsum = float(lam.sum()), float(dg.sum())
    er = total**2 / float(np.sum(lam**2)) if total > 0 else 0.0
    if dsum > 0:
        cum = np.cumsum(np.sort(dg)[::-1]) / dsum
        used = int(np.searchsorted(cum, INPUT_SHARE_MASS - 1e-12) + 1)
    else:
        used = 0
    return {"effective_rank": float(er), "input_share": used / len(dg), "inputs_used": used, "d": len(dg)}


# ---- the kernel picture of collapse: the spectrum of a layer's centred features --------------------------------------
#: the minimal-feature (MF) verdict: the top K - 1 eigenvalues of the centred feature covariance (K classes; centred
#: class means span K - 1 directions) carry at least this share of the variance; otherwise extended-feature (EF)
MF_VARIANCE_SHARE = 0.9


def feature_spectrum(features, labels, *, top: int | None = None, centred: bool = True) -> dict:
    """The eigen-decomposition of a layer's centred feature covariance on the training set (the kernel picture of
    collapse), in O(p^2) memory for p features.

    Returns a dict: ``eigenvalues`` (descending, ``top`` of them, default all), ``participation_ratio``
    ``(sum l)^2 / sum l^2`` (an effective number of features), ``n_above_1pct`` (eigenvalues above 1% of the largest),
    ``label_share`` (per eigenfunction, the share of the centred one-hot label vectors it carries; the eigenfunctions
    are ``u_i = H_c v_i / sqrt(N l_i)``, orthonormal over the N training points), ``mf_share`` (variance share of the
    top K - 1 eigenvalues) and ``verdict``: 'MF' when ``mf_share >= MF_VARIANCE_SHARE`` (as many dominant
    eigenfunctions as the class structure needs), else 'EF'.

    ``centred=False`` is the kernel picture's own definition: the eigenfunctions of the gradient-descent operator of a
    linear readout on these features, ``(1/N) H^T H`` (uncentred: a readout with no bias sees the mean too), against
    the uncentred one-hot labels, with the top K eigenvalues (not K - 1) counted in ``mf_share``. Gradient descent on
    the squared loss fits the labels' component along eigenfunction i at the rate ``1 - (1 - eta l_i)^t``.
    """
    H = np.asarray(features, dtype=np.float64)
    if H.ndim != 2 or H.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, p), got shape {H.shape}")
    if not np.isfinite(H).all():
        raise ValueError("features contain NaN or infinity")
    classes, idx = np.unique(np.asarray(labels), return_inverse=True)
    if len(idx) != H.shape[0]:
        raise ValueError(f"labels has {len(idx)} entries for {H.shape[0]} feature rows")
    (N, p), K = H.shape, len(classes)
    side = min(N, p)
    _check_spectrum_memory(side)
    Yc = np.eye(K)[idx]
    if centred:
        Hc, Yc = H - H.mean(0), Yc - Yc.mean(0)
    else:
        Hc = H
    dominant = K - 1 if centred else K
    if N < p:  # the smaller side: the N x N Gram matrix has the covariance's nonzero eigenvalues
        return _spectrum_from_gram(_gram(Hc) / N, Yc, p, K, top, dominant)
    return _spectrum_of(Hc.T @ Hc / N, Hc.T @ Yc, float(np.sum(Yc**2)), N, K, top, dominant)


#: rows of H per block of the Gram product (bounded temporaries whatever p is)
_GRAM_BLOCK = 256


def _gram(Hc: np.ndarray) -> np.ndarray:
    """``H_c H_c^T`` (N x N) by row blocks (each block a bounded GEMM; a single p x p or N x N product with a wide
    inner dimension crashed OpenBLAS at p = 20 000)."""
    N = Hc.shape[0]
    G = np.empty((N, N))
    for i in range(0, N, _GRAM_BLOCK):
        G[i : i + _GRAM_BLOCK] = Hc[i : i + _GRAM_BLOCK] @ Hc.T
    return 0.5 * (G + G.T)


def _check_spectrum_memory(side: int) -> None:
    """The eigen-decomposition holds a few ``side x side`` float64 matrices: refused before any work when they do
    not fit the memory available."""
    from kernels.memory import available_memory

    need = 4 * side * side * 8
    have = available_memory("cpu")
    if need > have:
        raise ValueError(f"the feature spectrum of {side} x {side} needs about {need / 2**30:.1f} GiB ("
                         f"min(samples, features) = {side}); {have / 2**30:.1f} GiB are available: pass fewer rows")


def _finish_spectrum(lam, N, K, k, share, dominant=None) -> dict:
    total = float(lam.sum())
    mf = float(lam[: max(K - 1 if dominant is None else dominant, 1)].sum() / total) if total > 0 else 0.0
    return {"eigenvalues": lam[:k], "participation_ratio": float(total**2 / np.sum(lam**2)) if total > 0 else 0.0,
            "n_above_1pct": int(np.sum(lam > 0.01 * lam[0])) if total > 0 else 0, "label_share": share,
            "mf_share": mf, "verdict": "MF" if mf >= MF_VARIANCE_SHARE else "EF", "n_classes": K}


def _spectrum_from_gram(G, Yc, p, K, top=None, dominant=None) -> dict:
    """:func:`feature_spectrum` from the Gram side ``G = H_c H_c^T / N`` (N x N, N < p): its eigenvectors are the
    eigenfunctions u_i themselves, so the label share is ``||u_i^T Y_c||^2 / ||Y_c||^2``; the covariance's other
    p - N eigenvalues are 0. Eigenvalues only when no eigenfunction is asked for (``top=0``)."""
    N = G.shape[0]
    k = p if top is None else min(int(top), p)
    if k == 0:
        lam, U = np.linalg.eigvalsh(G), None
    else:
        lam, U = np.linalg.eigh(G)
        U = U[:, ::-1]
    lam = np.concatenate([np.clip(lam[::-1], 0.0, None), np.zeros(p - N)])
    ynorm = float(np.sum(Yc**2))
    share = np.zeros(k)
    kk = min(k, N)
    keep = lam[:kk] > lam[0] * 1e-12 if lam.sum() > 0 else np.zeros(kk, bool)
    if ynorm > 0 and keep.any():
        share[:kk][keep] = np.sum((U[:, :kk][:, keep].T @ Yc) ** 2, axis=1) / ynorm
    return _finish_spectrum(lam, N, K, k, share, dominant)


def _spectrum_of(cov, hy, ynorm, N, K, top=None, dominant=None) -> dict:
    """:func:`feature_spectrum` from the centred feature covariance (p, p), the features' products with the centred
    one-hot labels ``H_c^T Y_c`` (p, K) and ``||Y_c||_F^2``: the eigenfunctions ``u_i = H_c v_i / sqrt(N l_i)`` carry
    ``||u_i^T Y_c||^2 = ||v_i^T H_c^T Y_c||^2 / (N l_i)`` of the labels (no per-sample quantity needed).
    Eigenvalues only when no eigenfunction is asked for (``top=0``)."""
    if top is not None and int(top) == 0:
        return _finish_spectrum(np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None), N, K, 0, np.zeros(0), dominant)
    lam, V = np.linalg.eigh(cov)
    lam, V = np.clip(lam[::-1], 0.0, None), V[:, ::-1]
    total = float(lam.sum())
    k = len(lam) if top is None else min(int(top), len(lam))
    keep = lam[:k] > lam[0] * 1e-12 if total > 0 else np.zeros(k, bool)
    share = np.zeros(k)
    if ynorm > 0 and keep.any():
        proj = (V[:, :k][:, keep].T @ hy) / np.sqrt(N * lam[:k][keep])[:, None]
        share[keep] = np.sum(proj**2, axis=1) / ynorm
    return _finish_spectrum(lam, N, K, k, share, dominant)


def effective_features(features, labels) -> float:
    """Participation ratio of the centred feature covariance's eigenvalues (:func:`feature_spectrum`)."""
    return feature_spectrum(features, labels, top=0)["participation_ratio"]


def mf_share(features, labels) -> float:
    """Variance share of the top K - 1 eigenvalues; >= MF_VARIANCE_SHARE is the minimal-feature regime."""
    return feature_spectrum(features, labels, top=0)["mf_share"]


def mf_share_gd(features, labels) -> float:
    """The kernel picture's minimal-feature share as its source defines it: the share of the top K eigenvalues of the
    gradient-descent operator ``(1/N) H^T H`` (uncentred; :func:`feature_spectrum` with ``centred=False``).
    :func:`mf_share` is drfm's centred variant with K - 1 directions (the span of the centred class means)."""
    return feature_spectrum(features, labels, top=0, centred=False)["mf_share"]


def label_alignment(features, labels, k: int | None = None) -> float:
    """The share of the centred one-hot label vectors inside the span of the top ``k`` left singular vectors of the
    centred features (default k = K - 1, the dimension class means span): 1 when the labels are among a layer's k
    strongest directions, about k / N for random features. Uses the p x p covariance: O(p^2) memory."""
    return _alignment_of(feature_spectrum(features, labels), k)


def _alignment_of(spec: dict, k: int | None = None) -> float:
    k = max(spec["n_classes"] - 1, 1) if k is None else int(k)
    return float(np.sum(spec["label_share"][:k]))


#: report metrics read off one :func:`feature_spectrum` (stage_report computes it once per layer and stage)
_FROM_SPECTRUM = {"effective_features": lambda spec: spec["participation_ratio"],
                  "mf_share": lambda spec: spec["mf_share"], "label_alignment": _alignment_of}


# ---- collapse with normalised features ----------------------------------------------------------------------------
def sphere(features) -> np.ndarray:
    """Rows projected onto the unit sphere (zero rows stay zero), as in normalised-feature training."""
    H = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(H, axis=1, keepdims=True)
    return np.divide(H, norms, out=np.zeros_like(H), where=norms > 0)


def nc1_sphere(features, labels) -> float:
    """NC1 of the features projected onto the unit sphere (collapse with normalised features)."""
    return nc1(sphere(features), labels)


def nc2_sphere(features, labels) -> float:
    """NC2 (ETF distance of the class means) of the features projected onto the unit sphere."""
    return nc2(sphere(features), labels)


def nc3_sphere(features, labels, classifier) -> float:
    """NC3 of normalised features against a row-normalised classifier (each class's weight vector on the sphere)."""
    return nc3(sphere(features), labels, sphere(classifier))


#: metrics computed from (features, labels) alone; used by collapse_report
METRICS = {
    "nc1": nc1,
    "nc1_papyan": nc1_papyan,
    "nc2": nc2,
    "nc2_equinorm": nc2_equinorm,
    "nc2_equiangularity": nc2_equiangularity,
    "cdnv": cdnv,
    "effective_features": effective_features,
    "mf_share": mf_share,
    "mf_share_gd": mf_share_gd,
    "nc1_sphere": nc1_sphere,
    "nc2_sphere": nc2_sphere,
    "label_alignment": label_alignment,
    "nc2_uniformity": nc2_uniformity,
    "within_share": within_share,
    "between_share": between_share,
    "within_total_paper": within_total_paper,
    "between_total_paper": between_total_paper,
}


def least_squares_classifier(features, labels, *, ridge: float = 1e-6) -> np.ndarray:
    """The linear readout of a layer, (K, p): ridge regression of the centred one-hot labels on the centred features
    (``ridge`` relative to the features' mean squared entry); classes in sorted order, as :func:`nc3` expects."""
    H = np.asarray(features, dtype=np.float64)
    classes, idx = np.unique(np.asarray(labels), return_inverse=True)
    if H.ndim != 2 or len(idx) != H.shape[0]:
        raise ValueError(f"features must be (N, p) with one label per row; got shape {H.shape} and {len(idx)} labels")
    Y = np.eye(len(classes))[idx]
    Hc, Yc = H - H.mean(0), Y - Y.mean(0)
    lam = ridge * max(float(np.mean(Hc**2)), 1e-300) * len(H)
    if H.shape[1] <= H.shape[0]:
        W = np.linalg.solve(Hc.T @ Hc + lam * np.eye(H.shape[1]), Hc.T @ Yc)
    else:  # more features than samples: the dual form
        W = Hc.T @ np.linalg.solve(Hc @ Hc.T + lam * np.eye(H.shape[0]), Yc)
    return W.T


def _layer_metric(name, feats, y, predictions):
    """The metrics that need more than (features, labels), defined per layer: NC3 against the layer's least-squares
    readout, NC4 against the model's predictions (or that readout's), linear CKA against the one-hot labels."""
    if name in ("nc3", "nc3_uniform"):
        return (nc3 if name == "nc3" else nc3_uniform)(feats, y, least_squares_classifier(feats, y))
    if name == "nc4":
        if predictions is None:
            H = np.asarray(feats, dtype=np.float64)
            W = least_squares_classifier(H, y)
            predictions = np.unique(np.asarray(y))[np.argmax((H - H.mean(0)) @ W.T, axis=1)]
        return nc4(feats, y, predictions)
    classes, idx = np.unique(np.asarray(y), return_inverse=True)
    return linear_cka(feats, np.eye(len(classes))[idx])


#: metrics defined per layer from (features, labels[, the model's predictions]); see _layer_metric
LAYER_METRICS = ("nc3", "nc3_uniform", "nc4", "linear_cka")




# ---- neural regression collapse (Andriopoulos et al. 2024) --------------------------------------------------------
def _matrix(a, name: str, *, vector_as: str = "column") -> np.ndarray:
    """``a`` as a finite float64 2-D array (a vector as one column, or one row with ``vector_as='row'``)."""
    A = np.asarray(a, dtype=np.float64)
    if A.ndim == 1:
        A = A.reshape(-1, 1) if vector_as == "column" else A.reshape(1, -1)
    if A.ndim != 2:
        raise ValueError(f"{name} must be a vector or a 2-D array, got shape {np.shape(a)}")
    if not np.isfinite(A).all():
        raise ValueError(f"{name} contain NaN or infinity")
    return A


def _regression_inputs(features, targets):
    H = np.asarray(features, dtype=np.float64)
    if H.ndim != 2 or H.shape[0] < 2:
        raise ValueError(f"features must be a 2-D array (N >= 2, p), got shape {H.shape}")
    H = _matrix(H, "features")
    Y = _matrix(targets, "targets")
    if Y.shape[0] != H.shape[0]:
        raise ValueError(f"targets must have the features' {H.shape[0]} rows (a vector or (N, n)), got shape "
                         f"{np.shape(targets)}")
    return H, Y


def _normalised_centred(H):
    """``(h_i - h_G) / ||h_i - h_G||``: the rows centred by the global mean, each on the unit sphere (zero rows stay
    zero), as the NRC definitions use them."""
    return sphere(H - H.mean(0))


def _residual_share(Hn, basis):
    """Mean over rows of ``||h - P h||^2`` for the orthogonal projection P onto the span of ``basis``' columns."""
    Q = np.linalg.qr(basis)[0] if basis.size else basis
    return float(np.mean(np.sum(Hn**2, 1) - np.sum((Hn @ Q) ** 2, 1)))


def nrc1(features, targets) -> float:
    """NRC1 (feature collapse): the mean squared distance of the centred, normalised features to the span of their
    top n principal components (n the number of target columns). 0: the features lie in an n-dimensional subspace;
    random features in p dimensions give about 1 - n / p."""
    H, Y = _regression_inputs(features, targets)
    n = Y.shape[1]
    if n > H.shape[1]:
        raise ValueError(f"NRC1 needs at least as many features as targets: {H.shape[1]} features, {n} targets")
    Hc = H - H.mean(0)
    V = np.linalg.svd(Hc, full_matrices=False)[2][:n].T  # the top n principal directions (p, n)
    return _residual_share(_normalised_centred(H), V)


def nrc2(features, weights) -> float:
    """NRC2 (self-duality): the mean squared distance of the centred, normalised features to the span of the rows of
    the last layer's weights ``weights`` (n, p). 0: the features lie in the readout's row space."""
    H = np.asarray(features, dtype=np.float64)
    if H.ndim != 2:
        raise ValueError(f"features must be a 2-D array (N, p), got shape {H.shape}")
    H, W = _matrix(H, "features"), _matrix(weights, "weights", vector_as="row")
    if W.shape[1] != H.shape[1]:
        raise ValueError(f"weights must be (n, p) with the features' p = {H.shape[1]} columns, got shape "
                         f"{np.shape(weights)}")
    return _residual_share(_normalised_centred(H), W.T)


def nrc3(weights, targets, *, gamma: float | None = None) -> float:
    """NRC3 (the weights' structure): ``|| W W^T / ||W W^T||_F - (S^{1/2} - g I) / ||S^{1/2} - g I||_F ||_F^2`` with
    ``S`` the targets' covariance (n x n), ``S^{1/2}`` its symmetric square root and ``g = sqrt(gamma)``, gamma in
    [0, the smallest eigenvalue of S] minimising it unless given (the unconstrained-feature model's optimum has
    ``W W^T`` proportional to ``S^{1/2} - sqrt(gamma) I``, gamma set by the regularisation). 0 at that structure;
    for uncorrelated targets of equal variance, 0 means orthogonal rows of equal norm."""
    from scipy.optimize import minimize_scalar

    W, Y = _matrix(weights, "weights", vector_as="row"), _matrix(targets, "targets")
    if Y.shape[1] != W.shape[0] or Y.shape[0] < 2:
        raise ValueError(f"weights (n, p) and targets (N >= 2, n) must share n; got shapes {np.shape(weights)} and "
                         f"{np.shape(targets)}")
    G = W @ W.T
    g_norm = np.linalg.norm(G)
    if g_norm == 0:
        raise ValueError("weights are all zero: NRC3 is undefined")
    G = G / g_norm
    Yc = Y - Y.mean(0)
    lam, U = np.linalg.eigh(Yc.T @ Yc / Y.shape[0])
    lam = np.clip(lam, 0.0, None)
    root = (U * np.sqrt(lam)) @ U.T
    eye = np.eye(W.shape[0])

    def value(gam):
        target = root - np.sqrt(max(gam, 0.0)) * eye
        t_norm = np.linalg.norm(target)
        return float(np.sum((G - target / t_norm) ** 2)) if t_norm > 0 else 2.0

    if gamma is not None:
        gamma = float(gamma)
        if not (0.0 <= gamma <= lam[0]):
            raise ValueError(f"gamma must lie in [0, {lam[0]:.6g}] (the targets' smallest variance direction), "
                             f"got {gamma!r}")
        return value(gamma)
    if lam[0] <= 0:
        return value(0.0)
    best = minimize_scalar(value, bounds=(0.0, float(lam[0])), method="bounded", options={"xatol": 1e-12 * lam[0]})
    return min(float(best.fun), value(0.0), value(float(lam[0])))


# ---- the seed paper's Gram-matrix figure ----------------------------------------------------------------------------
def class_gram(features, labels, *, per_class: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The cosine Gram matrix of a layer's features centred by the global mean (the mean of the class means), on up to
    ``per_class`` random rows of every class, rows sorted by class: the block structure of the seed paper's Gram
    figure. At full collapse onto a simplex ETF it is 1 inside the diagonal blocks and -1/(K-1) outside. Returns
    (G of shape (m, m), the m rows' labels)."""
    if int(per_class) < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class!r}")
    H, means, mu_g, idx, K = class_means(features, labels)
    classes = np.unique(np.asarray(labels))
    rng = np.random.default_rng(seed)
    rows = np.concatenate([np.sort(rng.permutation(np.flatnonzero(idx == c))[: int(per_class)]) for c in range(K)])
    Z = sphere(H[rows] - mu_g)
    return Z @ Z.T, classes[idx[rows]]
