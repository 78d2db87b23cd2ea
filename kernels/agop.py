"""Closed-form gradients and the AGOP of a kernel predictor, batched over sample points and centres.

For ``f_c(x) = sum_i alpha_ic k(x, x_i)`` with a radial kernel of the family (:mod:`kernels.family`; e.g. the Laplace
kernel ``k_M(x, z) = exp(-||x - z||_M / L)``):

    grad f_c(x) = sum_i alpha_ic w(x, x_i) M (x_i - x),      w = (p / s) d2^(p/2 - 1) k   (Laplace: k / (L ||x - x_i||_M))

Terms with a (numerically) zero distance are dropped: the Laplace kernel is not differentiable there, and they are
a point's own term when the sample points are training points (see ``_kt_tile`` for how, without a masking pass). The average gradient outer product over samples S:

    AGOP = (1/|S|) sum_{x in S} sum_c grad f_c(x) grad f_c(x)^T                       (d x d)

With ``W = w(B, X)`` for a block of samples B (zero where the distance is ~0) the gradients of the block are

    G[b, c, :] = (W @ (alpha (x) XM))[b, c, :] - (W @ alpha)[b, c] * (M x_b)

two GEMMs per tile; tiles run over samples and over centres under a byte budget. The product Laplace kernel
``exp(-|x R - z R|_1 / L)`` has ``grad f_c(x) = (1/L) R sum_i alpha_ic k(x, x_i) sign(x_i R - x R)``: one GEMM per
coordinate of ``x R`` on a cache-sized tile. ``centering`` subtracts the mean
gradient over the whole sample (per output channel), giving a gradient covariance instead of a second moment.

The feature-matrix update that follows the AGOP in RFM is :func:`feature_matrix_update`:
``R = (A / max|A_ij|)^power`` (the data map; ``M = R R``).
"""
from __future__ import annotations

import torch

from .family import as_kernel
from .laplace import apply_sqrt_m, folded_cols, folded_rows, sq_norms
from .linalg import eigh_workspace_bytes, psd_power
from .memory import TILE_ELEMENTS, BlockPlan, default_memory_budget, plan_blocks
from .operators import Points
from .phases import phase

__all__ = ["laplace_gradients", "laplace_agop", "agop_moments", "agop_from_moments", "duplicate_tolerance",
           "feature_matrix_update",
           "feature_matrix_workspace_bytes", "plan_agop",
           "workspace_bytes"]


def duplicate_tolerance(dtype: torch.dtype) -> float:
    """Relative squared-distance floor: ``||x - z||^2`` is floored at ``tol * 2 ||x||^2`` (in the M-geometry).

    That is the round-off floor of the GEMM distance formula, below which two points count as the same point.
    """
    return 100.0 * torch.finfo(dtype).eps


def _kt_tile(rows, cols, zb_sq, kernel, out, scratch):
    """The gradient weights ``w(b, i)`` of a radial kernel for a tile (Laplace: ``k(b, i) / (L ||z_b - z_i||)``),
    written into ``out``; ``rows`` / ``cols`` are the samples' and centres' augmented copies
    (:func:`~kernels.laplace.folded_rows` / :func:`~kernels.laplace.folded_cols`), whose one GEMM gives the squared
    distances norms included; ``zb_sq`` the samples' squared norms; ``scratch`` is a tile-sized work buffer.

    Numerically zero distances (a point's own term, exact duplicates) are floored at the round-off level instead of
    masked: their contribution carries the factor ``M (x_i - x_b) = 0``, so flooring drops them up to rounding while
    keeping every value finite, at no extra pass over the tile.
    """
    d2 = torch.mm(rows, cols.T, out=out)
    floor = zb_sq.mul(2.0 * duplicate_tolerance(zb_sq.dtype)).add_(torch.finfo(zb_sq.dtype).tiny ** 0.5)
    if kernel.power < 1.0:
        # weights ~ d^(p-2) grow faster than 1/d^2 near 0: the floored terms' round-off (weight x eps) would show,
        # so they are masked (d2 = inf gives weight 0) at one more pass over the tile
        d2.masked_fill_(d2 < floor.unsqueeze(1), float("inf"))
        return kernel.gradient_weights(d2, scratch)
    cap = kernel.d2_cap(d2.dtype)
    if cap is None:
        torch.maximum(d2, floor.unsqueeze(1), out=d2)
    else:  # the floor and the exponent's cap (kernels.laplace.exp_floor) in one pass
        torch.clamp(d2, min=floor.unsqueeze(1), max=d2.new_tensor(cap), out=d2)
    return kernel.gradient_weights(d2, scratch, capped=True)


def _in_factor_space(sqrt_m) -> bool:
    """Whether gradients are formed in factor coordinates: for a (d, d') matrix factor (see ``_iter_gradients``)."""
    return sqrt_m is not None and sqrt_m.dim() == 2


def _diag_metric(x: torch.Tensor, sqrt_m: torch.Tensor | None) -> torch.Tensor:
    """``x M`` for ``M = diag(r)^2`` given ``r = sqrt_m`` (or M = I for None); matrix factors never get here."""
    return x if sqrt_m is None else x * (sqrt_m * sqrt_m)


def plan_agop(n_samples: int, n_centres: int, c: int, d: int, *, itemsize: int, budget: int) -> BlockPlan:
    """Sample x centre tiles of the gradient computation: two (samples x centres) tiles, per sample row the
    (c x d) accumulator and gradients and the row's augmented copy for the distance GEMM, per centre the (c x d)
    coefficient row ``alpha (x) xM``."""
    return plan_blocks(n_samples, n_centres, itemsize=itemsize, budget=budget, tile_copies=2,
                       per_row_bytes=(2 * c * d + c + 3 * d + 2) * itemsize, per_col_bytes=c * d * itemsize,
                       max_row_block=max(256, TILE_ELEMENTS // max(n_centres, 1)))


def workspace_bytes(n_centres: int, d: int, *, itemsize: int, copies: int = 2) -> int:
    """What an AGOP holds besides its tiles (:func:`plan_agop`): ``copies`` transformed copies of the centres (2 for a
    diagonal factor: ``x R`` and ``x M``; 0 when the centres are passed as Points), the centres' augmented copy for
    the norm-folded distance GEMM (d + 2 columns) and the float64 (d x d) accumulator with a block's outer product
    (working precision and its float64 copy)."""
    return (copies * (d + 1) + d + 2) * n_centres * itemsize + d * d * (16 + itemsize)


def _block_gradients(zs, zs_sq, xms, xmc, alpha, kernel, centre_block, coef_cache, bufs, folded):
    """Gradients (b, c, d) of a radial kernel's predictor at one block of samples, accumulated over centre blocks;
    ``folded``: the block's and all centres' augmented copies for the distance GEMM (see :func:`_kt_tile`)."""
    rows, cols = folded
    b = zs.shape[0]
    n_c, c = alpha.shape
    d = xmc.shape[1]
    acc = torch.zeros((b, c * d), dtype=zs.dtype, device=zs.device)
    s = torch.zeros((b, c), dtype=zs.dtype, device=zs.device)
    for j in range(0, n_c, centre_block):
        sl = slice(j, j + centre_block)
        m = cols[sl].shape[0]
        with phase("kernel", gemm_flops=2 * b * m * zs.shape[1], exp_values=b * m):
            kt = _kt_tile(rows, cols[sl], zs_sq, kernel, bufs[0][: b * m].view(b, m), bufs[1][: b * m].view(b, m))
        coef = coef_cache if coef_cache is not None else (alpha[sl].unsqueeze(2) * xmc[sl].unsqueeze(1)).reshape(m, c * d)
        acc.addmm_(kt, coef)
        s.addmm_(kt, alpha[sl])
    g = acc.view(b, c, d)
    g.sub_(s.unsqueeze(2) * xms.unsqueeze(1))
    return g.mul_(kernel.gradient_scale)


#: elements of the sign tile of the product Laplace gradients (cache-sized: one pass over it per coordinate)
L1_SIGN_TILE = 2**16


def _block_gradients_l1(zs, zc, alpha, kernel, centre_block, bufs):
    """Gradients (b, c, d') of the product Laplace predictor in the coordinates ``z = x R`` at one block of samples:
    ``(1/L) sum_i alpha_ic k(b, i) sign(z_i - z_b)``, one (rows x centres) sign tile and GEMM per coordinate."""
    b = zs.shape[0]
    n_c, c = alpha.shape
    d = zs.shape[1]
    g = torch.zeros((b, c, d), dtype=zs.dtype, device=zs.device)
    for j in range(0, n_c, centre_block):
        zcj, aj = zc[j : j + centre_block], alpha[j : j + centre_block]
        m = zcj.shape[0]
        k = kernel.matrix(zs, zcj, out=bufs[0][: b * m].view(b, m))
        rows = max(1, L1_SIGN_TILE // max(m, 1))
        for a in range(0, b, rows):
            kr, zr = k[a : a + rows], zs[a : a + rows]
            sign = bufs[1][: kr.numel()].view(kr.shape)
            for q in range(d):
                torch.sub(zcj[:, q].unsqueeze(0), zr[:, q : q + 1], out=sign).sign_().mul_(kr)
                g[a : a + rows, :, q].addmm_(sign, aj)
    return g.mul_(1.0 / kernel.bandwidth)


def _iter_gradients(samples, centres, alpha, kernel, sqrt_m, memory_budget, sample_block, centre_block):
    """Gradient blocks of the predictor over the samples.

    With a (d, d') matrix factor F (``M = F F^T``) the blocks are in factor coordinates, (b, c, d'): since
    ``x M = (x F) F^T``, every gradient is ``g_z F^T`` with ``g_z`` built from ``z = x F`` alone, so the GEMMs run over
    d' instead of d columns (a learned M is often of low rank). Otherwise (None or a diagonal factor) they are the
    (b, c, d) gradients themselves. (The product Laplace kernel's gradient is ``g_z F^T`` too, with its own ``g_z``.)
    """
    if alpha.dim() == 1:
        alpha = alpha.unsqueeze(1)
    if memory_budget is None:
        memory_budget = default_memory_budget(samples.device)
    n_s = samples.shape[0]
    n_c, c = alpha.shape
    factor = _in_factor_space(sqrt_m)
    if isinstance(centres, Points):  # already transformed by a matrix factor (or M = I): no copy
        if sqrt_m is not None and not factor:
            raise ValueError("centres given as Points need a matrix factor sqrt_m (or None); pass raw centres with a "
                             "diagonal factor")
        zc, zc_sq, xmc = centres.z, centres.z_sq, centres.z
    else:
        zc = apply_sqrt_m(centres, sqrt_m)
        zc_sq = sq_norms(zc)
        xmc = zc if factor else _diag_metric(centres, sqrt_m)
    d = xmc.shape[1]
    radial = kernel.radial
    plan = plan_agop(n_s, n_c, c, d, itemsize=samples.element_size(), budget=memory_budget)
    sb = plan.row_block if sample_block is None else int(sample_block)
    cb = plan.col_block if centre_block is None else int(centre_block)
    coef_cache = None
    if cb >= n_c and radial:
        coef_cache = (alpha.unsqueeze(2) * xmc.unsqueeze(1)).reshape(n_c, c * d)
    size = min(sb, n_s) * min(cb, n_c)
    bufs = [torch.empty(size, dtype=samples.dtype, device=samples.device) for _ in range(2)]
    # radial kernels: the centres' side of the norm-folded distance GEMM, once (saves a pass over every tile)
    fold_c = folded_cols(zc, zc_sq) if radial else None
    fold_buf = None if fold_c is None else torch.empty((min(sb, n_s), fold_c.shape[1]), dtype=samples.dtype,
                                                       device=samples.device)
    for i in range(0, n_s, sb):
        # samples are transformed block by block (only the centres are held transformed)
        xs = samples[i : i + sb]
        zs = apply_sqrt_m(xs, sqrt_m)
        if not radial:
            g = _block_gradients_l1(zs, zc, alpha, kernel, cb, bufs)
            # a diagonal factor r: grad_x = r * grad_z (a matrix factor: factor coordinates, mapped back by the caller)
            yield g if factor or sqrt_m is None else g.mul_(sqrt_m)
            continue
        xms = zs if factor else _diag_metric(xs, sqrt_m)
        zs_sq = sq_norms(zs)
        yield _block_gradients(zs, zs_sq, xms, xmc, alpha, kernel, cb, coef_cache, bufs,
                               (folded_rows(zs, zs_sq, out=fold_buf), fold_c))


def laplace_gradients(
    samples: torch.Tensor,
    centres: torch.Tensor,
    alpha: torch.Tensor,
    *,
    bandwidth: float | None = None,
    sqrt_m: torch.Tensor | None = None,
    memory_budget: int | None = None,
    sample_block: int | None = None,
    centre_block: int | None = None,
    kernel=None,
) -> torch.Tensor:
    """Gradients of ``f(x) = K_M(x, centres) @ alpha`` at each sample point.

    Parameters
    ----------
    samples : (s, d) tensor, points where the gradient is taken.
    centres : (n, d) tensor, kernel centres (training points).
    alpha : (n,) or (n, c) tensor of dual coefficients.
    bandwidth : float, L (or pass ``kernel``).
    sqrt_m : None, (d,) or (d, d') tensor R with ``M = R R^T`` (for the product Laplace kernel: the map ``x R``).
    kernel : a :class:`~kernels.family.Kernel` of the family (default: the Laplace kernel with ``bandwidth``).

    Returns
    -------
    (s, c, d) tensor: ``out[b, c] = grad f_c(samples[b])``.
    """
    kern = as_kernel(kernel, bandwidth)
    blocks = list(_iter_gradients(samples, centres, alpha, kern, sqrt_m, memory_budget, sample_block, centre_block))
    g = torch.cat(blocks, 0)
    return g @ sqrt_m.T if _in_factor_space(sqrt_m) else g


def laplace_agop(
    samples: torch.Tensor,
    centres: torch.Tensor,
    alpha: torch.Tensor,
    *,
    bandwidth: float | None = None,
    sqrt_m: torch.Tensor | None = None,
    diag: bool = False,
    centering: bool = False,
    memory_budget: int | None = None,
    sample_block: int | None = None,
    centre_block: int | None = None,
    kernel=None,
    factor_coordinates: bool = False,
) -> torch.Tensor:
    """Average gradient outer product of the kernel predictor ``f = K_M(., centres) @ alpha`` (Laplace by default).

    Parameters
    ----------
    samples : (s, d) tensor, points the average runs over (training points or a random subset).
    centres : (n, d) tensor, kernel centres; or :class:`~kernels.operators.Points` already transformed by the matrix
        factor ``sqrt_m`` (or untransformed with ``sqrt_m=None``), which saves a copy.
    alpha : (n,) or (n, c) tensor of dual coefficients.
    bandwidth : float, L (or pass ``kernel``).
    sqrt_m : None, (d,) or (d, d') tensor R with ``M = R R^T`` (for the product Laplace kernel: the map ``x R``).
    kernel : a :class:`~kernels.family.Kernel` of the family (default: the Laplace kernel with ``bandwidth``).
    diag : keep only the diagonal (per-feature importances; O(d) memory for the result).
    factor_coordinates : with a (d, r) matrix factor F, return the (r, r) AGOP ``A_F`` in its coordinates (the
        d x d AGOP is ``F A_F F^T``): what ranks all-reduce in a distributed fit (r^2 instead of d^2 values).
    centering : subtract the mean gradient over ``samples`` (per output channel) before the outer products.
    memory_budget : bytes for tiles and temporaries; ``sample_block`` / ``centre_block`` override the plan.

    Returns
    -------
    (d, d) tensor, or (d,) with ``diag=True``; accumulated and returned in float64 (the result is small).
    """
    acc, gsum = agop_moments(samples, centres, alpha, kernel=as_kernel(kernel, bandwidth), sqrt_m=sqrt_m, diag=diag,
                             centering=centering, memory_budget=memory_budget, sample_block=sample_block,
                             centre_block=centre_block)
    return agop_from_moments(acc, gsum, samples.shape[0], sqrt_m=sqrt_m, diag=diag,
                             factor_coordinates=factor_coordinates)


def agop_moments(samples, centres, alpha, *, kernel, sqrt_m=None, diag=False, centering=False, memory_budget=None,
                 sample_block=None, centre_block=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sums the AGOP is made of, over ``samples`` (arguments as :func:`laplace_agop`): ``sum_x J_f(x)^T J_f(x)``
    (d x d, or (d,) with ``diag``; in the factor's d' coordinates when ``sqrt_m`` is a (d, d') matrix) and, with
    ``centering``, the gradient sum ``sum_x J_f(x)`` (c, d') -- float64. Sums over disjoint sample sets add up, so
    processes holding different samples all-reduce them (:func:`kernels.distributed.distributed_agop`)."""
    factor = _in_factor_space(sqrt_m)
    d = sqrt_m.shape[1] if factor else samples.shape[1]
    full = factor or not diag
    acc = torch.zeros((d, d) if full else (d,), dtype=torch.float64, device=samples.device)
    gsum = None
    for g in _iter_gradients(samples, centres, alpha, kernel, sqrt_m, memory_budget, sample_block, centre_block):
        if centering:
            part = g.sum(0).double()
            gsum = part if gsum is None else gsum + part
        g2 = g.reshape(-1, d)
        if full:
            acc += (g2.T @ g2).double()
        else:
            acc += torch.einsum("kd,kd->d", g2, g2).double()
    return acc, gsum


def agop_from_moments(acc: torch.Tensor, gsum: torch.Tensor | None, n_s: int, *, sqrt_m=None, diag=False,
                      factor_coordinates=False) -> torch.Tensor:
    """The AGOP from :func:`agop_moments` over ``n_s`` samples (``acc`` is consumed): the mean outer product, minus
    the mean gradient's outer product when ``gsum`` is given (centering), mapped back from factor coordinates."""
    factor = _in_factor_space(sqrt_m)
    full = factor or not diag
    acc /= max(n_s, 1)
    if gsum is not None:
        gbar = gsum / n_s  # (c, d)
        acc -= gbar.T @ gbar if full else (gbar * gbar).sum(0)
    if factor:
        if factor_coordinates:
            return acc
        f = sqrt_m.double()
        return ((f @ acc) * f).sum(1) if diag else f @ acc @ f.T
    return acc


def feature_matrix_update(agop: torch.Tensor, *, power: float = 0.5, normalize: bool = True) -> torch.Tensor:
    """The RFM feature-matrix update: the data map ``R = A^power`` of the AGOP A (divided by its largest absolute
    entry first when ``normalize``); the effective Mahalanobis matrix is ``M = R R = A^(2 power)``.

    Parameters
    ----------
    agop : (d, d) symmetric PSD tensor, or a diagonal (d,).
    power : float > 0 (0.5: M is the normalised AGOP itself).
    normalize : divide by ``max |A_ij|`` (when it is positive).

    Returns
    -------
    float64 tensor of ``agop``'s shape (eigh in float64; see :func:`kernels.linalg.psd_power`).
    """
    if normalize:
        top = float(agop.abs().max())
        if top > 0:
            agop = agop / top
    return psd_power(agop, power)


def feature_matrix_workspace_bytes(d: int, diag: bool = False) -> int:
    """Peak bytes of :func:`feature_matrix_update` for a (d, d) AGOP (its normalised copy and the eigh)."""
    return 3 * d * 8 if diag else d * d * 8 + eigh_workspace_bytes(d)
