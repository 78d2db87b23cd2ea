"""Mahalanobis Laplace kernel.

    k_M(x, z) = exp(-||x - z||_M / L),     ||v||_M = sqrt(v^T M v),

an L2 (Euclidean after the transform) Laplace kernel, *not* the L1 ``laplacian_kernel`` of scikit-learn.
With a factor R of M (``M = R R^T``, e.g. the symmetric square root) the kernel is the plain Laplace kernel on the
transformed rows ``x R``, so every evaluation is: transform once, then squared distances by one GEMM
``||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b``, clamped at 0 before the square root (round-off makes it negative). In
every dtype the entries below that formula's round-off floor are recomputed directly (:data:`SMALL_DISTANCE_FACTOR`).
"""
from __future__ import annotations

import torch

__all__ = ["apply_sqrt_m", "sq_norms", "sq_distances", "laplace_kernel", "laplace_kernel_transformed", "rounding_shift",
           "exp_floor", "distance_cap"]


def exp_floor(dtype: torch.dtype) -> float:
    """The most negative argument every kernel's ``exp`` is given in ``dtype``: -707 in float64, -87 otherwise.

    torch's CPU ``exp`` leaves its vectorised path wherever the result is subnormal or zero (measured with torch 2.13 on
    AVX-512, one thread: float32 0.17 ns per value down to -87.33, 35 ns below it, 14 ns where the result is 0; float64
    0.4 ns down to -707.5, 9-140 ns below). Far pairs in a learned metric reach those arguments: every kernel value is
    therefore computed as ``exp(max(t, floor))``, which changes a value below ``e^floor`` (1.6e-38 in float32, 9e-308
    in float64; k(x, x) = 1) by less than ``e^floor`` -- below the round-off of any sum with a term of order one -- and
    keeps every kernel value normal and positive. The clamp rides on a pass the kernels make anyway (the distances'
    clamp at 0).
    """
    return -707.0 if dtype == torch.float64 else -87.0


def distance_cap(dtype: torch.dtype, scale: float, power: float = 1.0) -> float | None:
    """The squared distance beyond which ``exp(-d2^(p/2) / s)`` has its exponent below :func:`exp_floor`: the cap of
    the distances' clamp; None where it lies beyond the dtype's range (it would clamp nothing)."""
    try:
        cap = (-exp_floor(dtype) * scale) ** (2.0 / power)
    except OverflowError:
        return None
    return cap if cap < torch.finfo(dtype).max else None


def apply_sqrt_m(x: torch.Tensor, sqrt_m: torch.Tensor | None) -> torch.Tensor:
    """Map rows ``x`` (n, d) to ``x R`` where ``R = sqrt_m``.

    ``sqrt_m`` is ``None`` (identity), a vector (d,) (diagonal factor) or a matrix (d, d') with ``M = R R^T``.
    """
    if sqrt_m is None:
        return x
    if sqrt_m.dim() == 1:
        return x * sqrt_m
    return x @ sqrt_m


def rounding_shift(x: torch.Tensor) -> torch.Tensor | None:
    """The point to subtract from every row before computing kernels in a narrow dtype: the mean row of ``x``.

    Distances do not change under a common shift, but the round-off of ``||a||^2 + ||b||^2 - 2 a.b`` is proportional to
    the squared norms: for rows far from the origin (a feature with a large offset) centring them first makes every
    float32 kernel value more accurate. ``None`` in float64 (nothing to gain there) and for an empty ``x``.
    """
    if x.dtype == torch.float64 or x.shape[0] == 0:
        return None
    return x.double().mean(0).to(x.dtype)


def sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean row norms of ``x`` (n, d) -> (n,)."""
    return torch.einsum("ij,ij->i", x, x)


def sq_distances(
    x: torch.Tensor,
    z: torch.Tensor,
    *,
    x_sq: torch.Tensor | None = None,
    z_sq: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    cap: float | None = None,
    folded: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Squared Euclidean distances ``||x_i - z_j||^2`` by one GEMM, clamped at 0 (and at ``cap`` when given).

    Parameters
    ----------
    x : (n, d) tensor
    z : (m, d) tensor, same dtype and device as ``x``.
    x_sq, z_sq : optional (n,) and (m,) precomputed squared row norms.
    out : optional (n, m) tensor to write into (saves an allocation in blocked loops).
        When ``x`` and ``z`` are row ranges of one matrix, the self-distances are set to exactly 0.
    cap : optional upper clamp, in the same pass as the clamp at 0 (the kernels' :func:`exp_floor`).
    folded : optional ``(folded_rows(x, x_sq), folded_cols(z, z_sq))``: the norms ride in the GEMM as two more columns,
        which saves the pass that adds them (callers that keep the columns' copy across tiles: the m-centre model).

    Returns
    -------
    (n, m) tensor of squared distances, ``>= 0``.
    """
    if x_sq is None:
        x_sq = sq_norms(x)
    if z_sq is None:
        z_sq = sq_norms(z)
    if folded is not None:  # [x, |x|^2, 1] [-2 z, 1, |z|^2]^T: both norms inside the one GEMM
        d2 = torch.mm(folded[0], folded[1].T, out=out)
    else:  # one GEMM with the z-norms folded in as the (broadcast) additive term: z_sq - 2 x z^T
        d2 = torch.addmm(z_sq.unsqueeze(0), x, z.T, beta=1.0, alpha=-2.0, out=out)
        d2.add_(x_sq.unsqueeze(1))
    if d2.numel() == 0:
        return d2
    diag = _shared_diagonal(x, z)
    if d2.dtype in _REFINED:
        _refine_small(d2, x, z, x_sq, z_sq, diag)
    if cap is not None and not cap >= 0:
        raise ValueError(f"cap must be a number >= 0, got {cap!r}")
    if cap is None or not cap < torch.finfo(d2.dtype).max:  # (a cap beyond the dtype's range clamps nothing)
        d2.clamp_min_(0.0)
    else:
        d2.clamp_(0.0, cap)
    if diag is not None:
        # self-distances are exactly 0; the GEMM formula leaves round-off of order eps * ||x||^2 there
        d2.diagonal(diag).zero_()
    return d2


def folded_rows(x: torch.Tensor, x_sq: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``[x, |x|^2, 1]`` (n, d + 2): the row side of :func:`sq_distances`' ``folded`` GEMM (into ``out`` when given)."""
    n, d = x.shape
    a = torch.empty((n, d + 2), dtype=x.dtype, device=x.device) if out is None else out[:n]
    a[:, :d] = x
    a[:, d] = x_sq
    a[:, d + 1] = 1.0
    return a


def folded_cols(z: torch.Tensor, z_sq: torch.Tensor) -> torch.Tensor:
    """``[-2 z, 1, |z|^2]`` (m, d + 2): the column side of :func:`sq_distances`' ``folded`` GEMM."""
    m, d = z.shape
    a = torch.empty((m, d + 2), dtype=z.dtype, device=z.device)
    torch.mul(z, -2.0, out=a[:, :d])
    a[:, d] = 1.0
    a[:, d + 1] = z_sq
    return a


# Squared distances below SMALL_DISTANCE_FACTOR * eps * (max ||x||^2 + max ||z||^2) are recomputed directly as
# sum((x - z)^2). The GEMM formula's absolute error is of order eps * (||x||^2 + ||z||^2); the square root turns an
# error e in a distance near 0 into an error sqrt(e), so near-duplicate rows get kernel values off by ~1e-3 in float32
# (a kernel matrix that is not positive definite on data with duplicated rows; a row predicted alone differing from
# the same row predicted in a batch). Recomputing below the threshold bounds the distance error by
# e / (2 sqrt(threshold)) = sqrt(e / SMALL_DISTANCE_FACTOR) / 2 everywhere. float64 is refined too: there a point's
# distance to its own copy would be ~1e-8 instead of 0 (visible against exact references, e.g. m-centre solves).
SMALL_DISTANCE_FACTOR = 1024.0
_REFINED = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# workspace of the direct recomputation, in elements (bounded: a tile with many close pairs is done in pieces)
_REFINE_CHUNK = 2**18
# columns per run whose minimum is looked at first (see _refine_small)
_REFINE_RUN = 64


def _shared_diagonal(x: torch.Tensor, z: torch.Tensor) -> int | None:
    """When ``x`` and ``z`` are row ranges of the same matrix, the offset ``k`` with ``x[a]`` equal to ``z[a + k]``
    (the self-distances lie on ``d2.diagonal(k)``; e.g. ``K(X, X)``, a row block ``X[i:j]`` against all of ``X``, or
    two tiles of ``X``); otherwise None."""
    if x is z:
        return 0
    if x.dim() != 2 or z.dim() != 2 or x.shape[1] != z.shape[1] or x.stride() != z.stride() or x.numel() == 0:
        return None
    if x.untyped_storage().data_ptr() != z.untyped_storage().data_ptr():
        return None
    gap = x.storage_offset() - z.storage_offset()
    row = x.stride(0)
    if row <= 0 or gap % row or x.stride(1) != 1:
        return None
    return gap // row


def _refine_small(d2, x, z, x_sq, z_sq, diag: int | None) -> None:
    """Recompute in place the entries of ``d2`` below the GEMM formula's round-off floor (see SMALL_DISTANCE_FACTOR).

    Found by the minimum of each run of ``_REFINE_RUN`` columns of a row (one reduction over the tile) and a look at
    the runs that hold one: a tile of many rows each near some of many columns (dense low-dimensional data against
    m centres: 95% of the rows, 0.2% of the entries) costs ~35% of the tile's time instead of ~100% when every
    flagged row was scanned (measured: 131 x 8000 float32 tiles, r = 4, one thread: 3.1 against 4.8 ns per value
    for the m-centre product, 2.3 without refinement); runs of 64 cost as much there as runs of 32 and less where
    nothing is near (a 12 800 x 12 800 kernel at d = 100: +11% against +15%).
    """
    eps = torch.finfo(d2.dtype).eps
    tau = SMALL_DISTANCE_FACTOR * eps * (float(x_sq.max()) + float(z_sq.max()))
    if diag is not None:
        d2.diagonal(diag).fill_(float("inf"))  # set to exactly 0 by the caller; not a near pair to look for
    m = d2.shape[1]
    B = _REFINE_RUN if d2.stride(1) == 1 else max(m, 1)  # runs are views of a row only where its columns are adjacent
    full = m // B * B
    runs = d2[:, :full].unflatten(1, (m // B, B)) if full else None
    run_min = runs.amin(2) if full else None
    tail_min = d2[:, full:].amin(1) if full < m else None
    found = [float(t.min()) < tau for t in (run_min, tail_min) if t is not None]
    if not any(found):  # the common case: one pass over the tile finds nothing to refine
        return
    per = max(1, _REFINE_CHUNK // max(1, x.shape[1]))  # entries recomputed at a time

    def recompute(ri, cj):
        for b in range(0, ri.numel(), per):
            i, j = ri[b : b + per], cj[b : b + per]
            d2[i, j] = (x[i] - z[j]).square_().sum(1)

    if run_min is not None:
        hits = (run_min < tau).nonzero()
        step = max(1, _REFINE_CHUNK // B)  # runs looked at a time
        for a in range(0, hits.shape[0], step):
            h = hits[a : a + step]
            k, o = (runs[h[:, 0], h[:, 1]] < tau).nonzero(as_tuple=True)  # (the runs copied whole: B adjacent values)
            recompute(h[k, 0], h[k, 1] * B + o)
    if tail_min is not None:
        rows = (tail_min < tau).nonzero().squeeze(1)
        step = max(1, _REFINE_CHUNK // max(1, m - full))
        for a in range(0, rows.numel(), step):
            r = rows[a : a + step]
            ri, cj = (d2[:, full:].index_select(0, r) < tau).nonzero(as_tuple=True)
            recompute(r[ri], cj + full)


def laplace_kernel_transformed(
    xr: torch.Tensor,
    zr: torch.Tensor,
    *,
    bandwidth: float,
    x_sq: torch.Tensor | None = None,
    z_sq: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    folded: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Plain L2 Laplace kernel ``exp(-||a - b|| / L)`` on already transformed rows ``xr`` (n, d), ``zr`` (m, d).

    All elementwise work happens in place on the (n, m) result (optionally ``out``); ``folded``: see
    :func:`sq_distances`.
    """
    L = float(bandwidth)
    # distances capped at -exp_floor * L: the exponent stays >= exp_floor (see exp_floor)
    k = sq_distances(xr, zr, x_sq=x_sq, z_sq=z_sq, out=out, cap=distance_cap(xr.dtype, L), folded=folded)
    return k.sqrt_().mul_(-1.0 / L).exp_()


def laplace_kernel(
    x: torch.Tensor,
    z: torch.Tensor,
    *,
    bandwidth: float,
    sqrt_m: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mahalanobis Laplace kernel matrix ``K[i, j] = exp(-||x_i - z_j||_M / L)``.

    Parameters
    ----------
    x : (n, d) tensor
    z : (m, d) tensor
    bandwidth : float, L > 0.
    sqrt_m : None, (d,) or (d, d') tensor
        A factor R of the feature matrix, ``M = R R^T`` (``None`` means ``M = I``; a vector means a diagonal R).
    out : optional (n, m) tensor for the result.

    Returns
    -------
    (n, m) tensor, same dtype/device as ``x``.
    """
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth!r}")
    return laplace_kernel_transformed(
        apply_sqrt_m(x, sqrt_m), apply_sqrt_m(z, sqrt_m), bandwidth=bandwidth, out=out
    )
