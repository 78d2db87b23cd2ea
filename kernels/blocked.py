"""Blocked rectangular kernel products ``K_M(X, Z) @ V`` under a byte budget.

The tile comes from :func:`kernels.memory.plan_blocks`; the product streams tiles through one reused buffer and never
holds the whole ``n x m`` kernel matrix unless it fits. (The symmetric ``K(X, X)`` as an operator is in
:mod:`kernels.operators`.)
"""
from __future__ import annotations

import torch

from .family import as_kernel
from .laplace import apply_sqrt_m, sq_norms
from .memory import TILE_ELEMENTS, default_memory_budget, plan_blocks
from .operators import Points

__all__ = ["kernel_matmul"]


def kernel_matmul(
    x: torch.Tensor | Points,
    z: torch.Tensor | Points,
    v: torch.Tensor,
    *,
    bandwidth: float | None = None,
    sqrt_m: torch.Tensor | None = None,
    memory_budget: int | None = None,
    out: torch.Tensor | None = None,
    accumulate: torch.dtype | None = None,
    kernel=None,
) -> torch.Tensor:
    """Blocked ``K_M(x, z) @ v`` without materialising the full kernel matrix.

    Parameters
    ----------
    x : (n, d) tensor of rows to evaluate at, or :class:`~kernels.operators.Points` (already transformed).
    z : (m, d) tensor of centres, or :class:`~kernels.operators.Points` (already transformed).
    v : (m,) or (m, c) tensor of coefficients.
    bandwidth : float, Laplace bandwidth L (or pass ``kernel``).
    sqrt_m : optional factor R of M (see :func:`kernels.laplace.laplace_kernel`), applied to tensor inputs.
    memory_budget : bytes for the kernel tiles and temporaries (default: a fraction of available memory).
    out : optional (n, c) output tensor (of the ``accumulate`` dtype when that is given).
    accumulate : optional wider dtype (``torch.float64``) for the sum over centres: each kernel tile is computed in
        the input dtype, then widened for its product with ``v``. In float32 with large coefficients (a small ridge,
        duplicated rows) the float32 sum's round-off, of order eps * sum_j |k_ij v_j|, is what separates a row
        predicted alone from the same row predicted in a batch; the wide sum removes it for one extra tile copy (counted
        in the memory plan).
    kernel : a :class:`~kernels.family.Kernel` of the family (default: the Laplace kernel with ``bandwidth``).

    Returns
    -------
    (n,) or (n, c) tensor ``sum_j k(x_i, z_j) v_j`` (in the ``accumulate`` dtype when given).
    """
    kern = as_kernel(kernel, bandwidth)
    squeeze = v.dim() == 1
    v2 = v.unsqueeze(1) if squeeze else v
    xr = x.z if isinstance(x, Points) else apply_sqrt_m(x, sqrt_m)
    zp = z if isinstance(z, Points) else Points.of(z, sqrt_m)
    zr, z_sq = zp.z, zp.z_sq
    n, m, c = xr.shape[0], zr.shape[0], v2.shape[1]
    itemsize = xr.element_size()
    acc = xr.dtype if accumulate is None or accumulate == xr.dtype else accumulate
    wide = acc != xr.dtype
    acc_size = torch.empty((), dtype=acc).element_size()
    if memory_budget is None:
        memory_budget = default_memory_budget(xr.device)
    plan = plan_blocks(
        n, m, itemsize=itemsize + (acc_size if wide else 0), budget=memory_budget, per_row_bytes=2 * c * acc_size,
        per_col_bytes=c * acc_size if wide else 0, max_row_block=max(64, TILE_ELEMENTS // max(m, 1)),
    )
    if out is None:
        out = torch.empty((n, c), dtype=acc, device=xr.device)
    v2 = v2.to(acc)
    rb, cb = plan.row_block, plan.col_block
    buf = torch.empty(min(rb, n) * min(cb, m), dtype=xr.dtype, device=xr.device)
    wide_buf = torch.empty(buf.numel() if wide else 0, dtype=acc, device=xr.device)
    for i in range(0, n, rb):
        xi = xr[i : i + rb]
        xi_sq = sq_norms(xi)
        oi = out[i : i + rb]
        for j in range(0, m, cb):
            zj = zr[j : j + cb]
            tile = buf[: xi.shape[0] * zj.shape[0]].view(xi.shape[0], zj.shape[0])
            kern.matrix(xi, zj, x_sq=xi_sq, z_sq=z_sq[j : j + cb], out=tile)
            if wide:
                tile = wide_buf[: tile.numel()].view(tile.shape).copy_(tile)
            if j == 0:
                torch.mm(tile, v2[j : j + cb], out=oi)
            else:
                oi.addmm_(tile, v2[j : j + cb])
    return out.squeeze(1) if squeeze else out
