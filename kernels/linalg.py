"""PSD matrix functions: one home for powers and compact factors of symmetric positive semi-definite matrices.

* :func:`psd_power`: ``A^p = V diag(max(w, 0)^p) V^T`` from a float64 ``eigh`` of the symmetrised matrix (a diagonal
  given as a vector is raised elementwise);
* :func:`compact_factor`: a (d, r) factor ``F`` of a symmetric PSD ``R`` with ``||x F|| = ||x R||`` up to the
  eigen-directions dropped below ``rtol * max`` -- kernel GEMMs then run over r instead of d columns.
"""
from __future__ import annotations

import torch

__all__ = ["COMPACT_RTOL", "compact_factor", "eigh_workspace_bytes", "psd_power"]

#: eigen-directions of the data map R = M^{1/2} below this fraction of its largest eigenvalue are dropped from the
#: compact factor (their share of any squared distance is below 1e-6 relative, under float32 round-off)
COMPACT_RTOL = 1e-3


def eigh_workspace_bytes(d: int) -> int:
    """Peak float64 bytes of one PSD matrix function of a (d, d) matrix: the float64 copy, its symmetrisation,
    the eigenvectors, LAPACK's divide-and-conquer workspace (about 2 d^2) and the product's two temporaries."""
    return 7 * d * d * 8


def psd_power(a: torch.Tensor, power: float) -> torch.Tensor:
    """``A^power`` of a symmetric PSD matrix (eigh in float64, negative eigenvalues clipped to 0), or of a diagonal.

    Returns a float64 tensor of ``a``'s shape; ``a`` may be (d, d) or a diagonal (d,).
    """
    a = a.double()
    if a.dim() == 1:
        return a.clamp_min(0.0).pow(power)
    a = 0.5 * (a + a.T)
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp_min(0.0).pow(power)) @ v.T


def compact_factor(sqrt_m: torch.Tensor | None, rtol: float = COMPACT_RTOL):
    """A (d, r) factor F with ``||x F|| = ||x R||`` up to the dropped directions, for a symmetric PSD (d, d) ``R``.

    ``R = V diag(w) V^T`` gives ``||x R|| = ||x V diag(w)||``; keeping the r directions with ``w > rtol * max(w)``
    turns every kernel GEMM from d into r columns. A learned M is typically of low rank (a handful of directions on
    the low-rank task), so this cuts the cost of kernel products. None and diagonal factors are returned as they are;
    so is R when nothing would be dropped. The result has ``sqrt_m``'s dtype.
    """
    if sqrt_m is None or sqrt_m.dim() == 1:
        return sqrt_m
    r = sqrt_m.double()
    w, v = torch.linalg.eigh(0.5 * (r + r.T))
    keep = w > rtol * w.abs().max()
    if bool(keep.all()) or not bool(keep.any()):
        return sqrt_m
    return (v[:, keep] * w[keep]).to(sqrt_m.dtype)
