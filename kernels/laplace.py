"""Mahalanobis Laplace kernel.

    k_M(x, z) = exp(-||x - z||_M / L),     ||v||_M = sqrt(v^T M v),

an L2 (Euclidean after the transform) Laplace kernel, *not* the L1 ``laplacian_kernel`` of scikit-learn.
With a factor R of M (``M = R R^T``, e.g. the symmetric square root) the kernel is the plain Laplace kernel on the
transformed rows ``x R``, so every evaluation is: transform once, then squared distances by one GEMM
``||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b``, clamped at 0 before the square root (round-off makes it negative).
"""
from __future__ import annotations

import torch

__all__ = ["apply_sqrt_m", "sq_norms", "sq_distances", "laplace_kernel", "laplace_kernel_transformed"]


def apply_sqrt_m(x: torch.Tensor, sqrt_m: torch.Tensor | None) -> torch.Tensor:
    """Map rows ``x`` (n, d) to ``x R`` where ``R = sqrt_m``.

    ``sqrt_m`` is ``None`` (identity), a vector (d,) (diagonal factor) or a matrix (d, d') with ``M = R R^T``.
    """
    if sqrt_m is None:
        return x
    if sqrt_m.dim() == 1:
        return x * sqrt_m
    return x @ sqrt_m


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
) -> torch.Tensor:
    """Squared Euclidean distances ``||x_i - z_j||^2`` by one GEMM, clamped at 0.

    Parameters
    ----------
    x : (n, d) tensor
    z : (m, d) tensor, same dtype and device as ``x``.
    x_sq, z_sq : optional (n,) and (m,) precomputed squared row norms.
    out : optional (n, m) tensor to write into (saves an allocation in blocked loops).
        When ``x is z`` (the same tensor object) the diagonal is set to exactly 0.

    Returns
    -------
    (n, m) tensor of squared distances, ``>= 0``.
    """
    if x_sq is None:
        x_sq = sq_norms(x)
    if z_sq is None:
        z_sq = sq_norms(z)
    # one GEMM with the z-norms folded in as the (broadcast) additive term: z_sq - 2 x z^T
    d2 = torch.addmm(z_sq.unsqueeze(0), x, z.T, beta=1.0, alpha=-2.0, out=out)
    d2.add_(x_sq.unsqueeze(1))
    d2.clamp_min_(0.0)
    if x is z:
        # self-distances are exactly 0; the GEMM formula leaves round-off of order eps * ||x||^2 there
        d2.diagonal().zero_()
    return d2


def laplace_kernel_transformed(
    xr: torch.Tensor,
    zr: torch.Tensor,
    *,
    bandwidth: float,
    x_sq: torch.Tensor | None = None,
    z_sq: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain L2 Laplace kernel ``exp(-||a - b|| / L)`` on already transformed rows ``xr`` (n, d), ``zr`` (m, d).

    All elementwise work happens in place on the (n, m) result (optionally ``out``).
    """
    k = sq_distances(xr, zr, x_sq=x_sq, z_sq=z_sq, out=out)
    return k.sqrt_().mul_(-1.0 / float(bandwidth)).exp_()


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
