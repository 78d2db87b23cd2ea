"""Blocked rectangular kernel products ``K_M(X, Z) @ V`` under a byte budget.

The tile comes from :func:`kernels.memory.plan_blocks`; the product streams tiles through one reused buffer and never
holds the whole ``n x m`` kernel matrix unless it fits. (The symmetric ``K(X, X)`` as an operator is in
:mod:`kernels.operators`.)
"""
from __future__ import annotations

import torch

from .laplace import apply_sqrt_m, laplace_kernel_transformed, sq_norms
from .memory import TILE_ELEMENTS, default_memory_budget, plan_blocks
from .operators import Points

__all__ = ["kernel_matmul"]


def kernel_matmul(
    x: torch.Tensor | Points,
    z: torch.Tensor | Points,
    v: torch.Tensor,
    *,
    bandwidth: float,
    sqrt_m: torch.Tensor | None = None,
    memory_budget: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Blocked ``K_M(x, z) @ v`` without materialising the full kernel matrix.

    Parameters
    ----------
    x : (n, d) tensor of rows to evaluate at, or :class:`~kernels.operators.Points` (already transformed).
    z : (m, d) tensor of centres, or :class:`~kernels.operators.Points` (already transformed).
    v : (m,) or (m, c) tensor of coefficients.
    bandwidth : float, Laplace bandwidth L.
    sqrt_m : optional factor R of M (see :func:`kernels.laplace.laplace_kernel`), applied to tensor inputs.
    memory_budget : bytes for the kernel tiles and temporaries (default: a fraction of available memory).
    out : optional (n, c) output tensor.

    Returns
    -------
    (n,) or (n, c) tensor ``sum_j k(x_i, z_j) v_j``.
    """
    squeeze = v.dim() == 1
    v2 = v.unsqueeze(1) if squeeze else v
    xr = x.z if isinstance(x, Points) else apply_sqrt_m(x, sqrt_m)
    zp = z if isinstance(z, Points) else Points.of(z, sqrt_m)
    zr, z_sq = zp.z, zp.z_sq
    n, m, c = xr.shape[0], zr.shape[0], v2.shape[1]
    itemsize = xr.element_size()
    if memory_budget is None:
        memory_budget = default_memory_budget(xr.device)
    plan = plan_blocks(
        n, m, itemsize=itemsize, budget=memory_budget, per_row_bytes=2 * c * itemsize,
        max_row_block=max(64, TILE_ELEMENTS // max(m, 1)),
    )
    if out is None:
        out = torch.empty((n, c), dtype=xr.dtype, device=xr.device)
    rb, cb = plan.row_block, plan.col_block
    buf = torch.empty(min(rb, n) * min(cb, m), dtype=xr.dtype, device=xr.device)
    for i in range(0, n, rb):
        xi = xr[i : i + rb]
        xi_sq = sq_norms(xi)
        oi = out[i : i + rb]
        for j in range(0, m, cb):
            zj = zr[j : j + cb]
            tile = buf[: xi.shape[0] * zj.shape[0]].view(xi.shape[0], zj.shape[0])
            laplace_kernel_transformed(xi, zj, bandwidth=bandwidth, x_sq=xi_sq, z_sq=z_sq[j : j + cb], out=tile)
            if j == 0:
                torch.mm(tile, v2[j : j + cb], out=oi)
            else:
                oi.addmm_(tile, v2[j : j + cb])
    return out.squeeze(1) if squeeze else out
