"""Collapse metrics accumulated over batches of features: a 50 000 x 4096 layer measured without holding it.

:class:`CollapseAccumulator` keeps, per class, the count, the mean and the within-class sum of squares, merged batch
by batch with the pairwise (Chan et al.) update -- numerically the one-shot centred sums, not ``E[h^2] - E[h]^2`` --
and, with ``second_moments=True``, the p x p within-class scatter merged the same way. That is O(K p) memory, or
O(p^2 + K p): the (N, p) features are never held. Every metric it serves equals the one-shot function of
:mod:`drfm.collapse` on the concatenated batches (tested to 1e-10):

* from the class means and counts: ``nc1``, ``nc2``, ``nc2_equinorm``, ``nc2_equiangularity``, ``cdnv``,
  :func:`nc2_uniformity`, ``nc3`` / ``nc3_uniform`` (given a classifier), ``nc5`` (given an out-of-distribution
  accumulator);
* with the scatter (``second_moments=True``): ``nc1_papyan``, ``effective_features``, ``mf_share``,
  ``label_alignment`` and the whole :func:`~drfm.collapse.feature_spectrum` (the centred label vectors' projections
  are ``n_c (mu_c - mu)``, so no per-sample quantity is needed).

Normalised-feature collapse streams too: feed ``sphere(batch)``. NC4 needs every sample against the final means
(a second pass) and is not served.
"""
from __future__ import annotations

import math

import numpy as np

from . import metrics as C

__all__ = ["CollapseAccumulator", "STREAM_METRICS"]

#: metrics :meth:`CollapseAccumulator.metrics` serves (those after the first five need ``second_moments=True``)
STREAM_METRICS = ("nc1", "nc2", "nc2_equinorm", "nc2_equiangularity", "cdnv", "nc2_uniformity", "nc1_papyan",
                  "effective_features", "mf_share", "label_alignment")
_NEEDS_SCATTER = ("nc1_papyan", "effective_features", "mf_share", "label_alignment")


class CollapseAccumulator:
    """Running per-class statistics of a layer's features (see the module text).

    Parameters
    ----------
    second_moments : keep the p x p within-class scatter (for the spectrum metrics and ``nc1_papyan``).

    Use ``update(features_batch, labels_batch)`` for every batch (any sizes; a batch may miss classes), then
    ``metrics([...])`` or the single-metric methods.
    """

    def __init__(self, *, second_moments: bool = True):
        self.second_moments = bool(second_moments)
        self.p = None
        self.labels: list = []  # in order of first appearance
        self._index: dict = {}
        self.n = np.zeros(0)
        self.mean = np.zeros((0, 0))
        self.ss = np.zeros(0)  # per class: sum of squared distances to the class mean
        self.scatter = None  # (p, p): sum over classes of the within-class scatter

    # -- accumulation ---------------------------------------------------------------------------------------------
    def update(self, features, labels) -> "CollapseAccumulator":
        """Add one batch: features (b, p), labels (b,)."""
        H = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels)
        if H.ndim != 2:
            raise ValueError(f"features must be a 2-D batch (b, p), got shape {H.shape}")
        if labels.shape != (H.shape[0],):
            raise ValueError(f"labels must have shape ({H.shape[0]},) to match the batch, got {labels.shape}")
        if self.p is None:
            self.p = H.shape[1]
            self.mean = np.zeros((0, self.p))
            if self.second_moments:
                self.scatter = np.zeros((self.p, self.p))
        elif H.shape[1] != self.p:
            raise ValueError(f"batch has {H.shape[1]} features, earlier batches {self.p}")
        if not np.isfinite(H).all():
            raise ValueError("features contain NaN or infinity")
        if H.shape[0] == 0:
            return self
        uniq, idx = np.unique(labels, return_inverse=True)
        slots = np.array([self._slot(v.item() if isinstance(v, np.generic) else v) for v in uniq])
        kb = len(uniq)
        nb = np.bincount(idx, minlength=kb).astype(np.float64)
        mb = np.zeros((kb, self.p))
        np.add.at(mb, idx, H)
        mb /= nb[:, None]
        w = H - mb[idx]
        ssb = np.bincount(idx, weights=np.einsum("ij,ij->i", w, w), minlength=kb)
        na = self.n[slots]
        delta = mb - self.mean[slots]
        tot = na + nb
        corr = na * nb / tot  # 0 for classes new in this batch
        self.ss[slots] += ssb + corr * np.einsum("ij,ij->i", delta, delta)
        if self.scatter is not None:
            self.scatter += w.T @ w
            self.scatter += (delta * corr[:, None]).T @ delta
        self.mean[slots] += delta * (nb / tot)[:, None]
        self.n[slots] = tot
        return self

    def _slot(self, label) -> int:
        if label not in self._index:
            self._index[label] = len(self.labels)
            self.labels.append(label)
            self.n = np.append(self.n, 0.0)
            self.ss = np.append(self.ss, 0.0)
            self.mean = np.vstack([self.mean, np.zeros((1, self.p))])
        return self._index[label]

    # -- the finished statistics, classes in sorted order (as the one-shot functions) ------------------------------
    def _sorted(self):
        if len(self.labels) < 2:
            raise ValueError(f"collapse metrics need at least 2 classes, got {len(self.labels)}")
        order = (np.argsort(np.array(self.labels, dtype=object)) if _sortable(self.labels)
                 else np.arange(len(self.labels)))
        return self.n[order], self.mean[order], self.ss[order]

    @property
    def n_samples(self) -> int:
        return int(self.n.sum())

    @property
    def nbytes(self) -> int:
        """Bytes held: O(K p), plus p^2 with second moments (never O(N))."""
        return int(self.mean.nbytes + self.n.nbytes + self.ss.nbytes + (0 if self.scatter is None else
                                                                        self.scatter.nbytes))

    def _centred_means(self):
        n, mean, _ = self._sorted()
        return n, mean, mean - mean.mean(0)

    def nc1(self) -> float:
        n, mean, mc = self._centred_means()
        tr_b = float(np.sum(mc**2)) / len(n)
        tr_w = float(self.ss.sum()) / n.sum()
        return tr_w / tr_b if tr_b > 0 else math.inf

    def _unit_means(self):
        _, _, mc = self._centred_means()
        norms = np.linalg.norm(mc, axis=1)
        return mc / np.maximum(norms, 1e-300)[:, None], norms

    def nc2(self) -> float:
        return C._etf_distance(self._unit_means()[0])

    def nc2_equinorm(self) -> float:
        _, norms = self._unit_means()
        return float(norms.std() / norms.mean()) if norms.mean() > 0 else math.inf

    def nc2_equiangularity(self) -> float:
        return C._equiangularity(self._unit_means()[0])

    def nc2_uniformity(self, kernel: str = "log", s: float = 1.0) -> float:
        return C.uniformity_energy(self._unit_means()[0], kernel=kernel, s=s)

    def cdnv(self) -> float:
        n, mean, ss = self._sorted()
        return C._cdnv_of(ss / n, mean)

    def nc3(self, classifier) -> float:
        return C._self_duality(classifier, self._centred_means()[2])

    def nc3_uniform(self, classifier) -> float:
        return C._uniform_duality(classifier, self._centred_means()[2])

    def nc5(self, ood: "CollapseAccumulator") -> float:
        """NC5 against another accumulator holding out-of-distribution features (any labels)."""
        _, mean, mc = self._centred_means()
        ood_mean = (ood.mean * ood.n[:, None]).sum(0) / ood.n.sum()
        return C._ood_orthogonality(mc, ood_mean - mean.mean(0))

    def _within_scatter(self):
        if self.scatter is None:
            raise ValueError("this metric needs the p x p within-class scatter: CollapseAccumulator(second_moments="
                             "True)")
        return self.scatter

    def nc1_papyan(self, rcond: float = 1e-10) -> float:
        n, _, mc = self._centred_means()
        if not np.any(mc):
            return math.inf
        sv, Vt = C._mean_span(mc, rcond)
        within_var = np.einsum("jp,pq,jq->j", Vt, self._within_scatter(), Vt) / n.sum()
        return C._papyan_of(within_var, sv, len(n))

    def spectrum(self, top: int | None = None) -> dict:
        """:func:`drfm.collapse.feature_spectrum` of the accumulated features."""
        n, mean, _ = self._sorted()
        N = n.sum()
        mu = (mean * n[:, None]).sum(0) / N
        between = mean - mu
        cov = (self._within_scatter() + (between * n[:, None]).T @ between) / N
        # H_c^T Y_c = (n_c (mu_c - mu))^T and ||Y_c||^2 = sum_c n_c - n_c^2 / N
        return C._spectrum_of(cov, (between * n[:, None]).T, float(np.sum(n - n**2 / N)), N, len(n), top)

    def metrics(self, names=("nc1", "nc2")) -> dict:
        """The named metrics (from :data:`STREAM_METRICS`) as a dict."""
        unknown = [m for m in names if m not in STREAM_METRICS]
        if unknown:
            raise ValueError(f"metrics {unknown} cannot be accumulated over batches; available: "
                             f"{', '.join(STREAM_METRICS)}")
        out, spec = {}, None
        for m in names:
            if m in C._FROM_SPECTRUM:  # one eigendecomposition for every spectrum metric
                spec = spec or self.spectrum()
                out[m] = C._FROM_SPECTRUM[m](spec)
            else:
                out[m] = getattr(self, m)()
        return out


def _sortable(labels) -> bool:
    try:
        sorted(labels)
        return True
    except TypeError:
        return False
