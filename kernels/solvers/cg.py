"""Preconditioned conjugate gradients for ``(K + reg I) x = Y`` with a Nystrom preconditioner.

All columns of Y run together (one kernel product per iteration for all of them) with per-column step sizes; a column
stops moving once its relative residual ``||r_c|| / ||y_c||`` is below ``rtol`` (or ``||r_c||`` below ``atol``).
Scalars are accumulated in float64. Warm start with ``x0`` (e.g. the previous RFM iteration's solution). The
preconditioner ``M`` is any callable ``M(r) -> P^{-1} r`` (e.g. :class:`~kernels.solvers.NystromPreconditioner`).
"""
from __future__ import annotations

import warnings

from typing import Callable

import torch

from ..operators import KernelOperator
from ._result import ConvergenceWarning, SolveResult, as_columns

__all__ = ["solve_cg"]


def solve_cg(
    A: KernelOperator,
    B: torch.Tensor,
    *,
    reg: float = 0.0,
    x0: torch.Tensor | None = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_iter: int | None = None,
    M: Callable[[torch.Tensor], torch.Tensor] | None = None,
    callback: Callable[[int, torch.Tensor, float], bool | None] | None = None,
) -> SolveResult:
    """Solve ``(K + reg I) x = Y`` by (preconditioned) conjugate gradients.

    Parameters
    ----------
    A : KernelOperator for K (n x n); a row-sharded one (:class:`~kernels.distributed.ShardedKernel`) makes B, x0 and
        the result this rank's rows, with every inner product all-reduced.
    B : (n,) or (n, c) right-hand sides.
    reg : ridge >= 0.
    x0 : optional warm start of B's shape.
    rtol, atol : stop when ``||r_c|| <= max(rtol * ||b_c||, atol)`` for every column c.
    max_iter : iteration cap (default ``max(100, n // 10)``).
    M : preconditioner, a callable ``M(r) -> P^{-1} r`` on (n, c) float64 tensors; None for plain CG.
    callback : called as ``callback(k, x, rel_residual)`` after each iteration (the largest relative column
        residual); returning True stops. Progress display belongs here (the core draws nothing).

    Returns
    -------
    SolveResult; ``residual_norms`` holds the largest relative column residual after each iteration (index 0: start).
    """
    B, X, squeeze = as_columns(B, x0)
    out_dtype = B.dtype
    # a row-sharded operator (kernels.distributed) holds this rank's rows of every vector: inner products are summed
    # over the ranks
    reduce = A.allreduce  # (an identity for a single-process operator)

    def _col_dot(a, b):
        return reduce(torch.einsum("nc,nc->c", a, b).double())

    if B.dtype != torch.float64:
        # mixed precision: kernel products in the working precision, every CG vector and scalar in float64. In
        # float32 the recurrences lose orthogonality on the ill-conditioned kernel systems RFM produces (measured at
        # n = 30000: float32 CG stalled near 1e-2 and broke down; with float64 vectors it reached 1e-5 in 100 steps)
        B, X = B.double(), X.double()
    n = A.shape[0]  # the global size (B holds this rank's rows when A is sharded)
    max_iter = max(100, n // 10) if max_iter is None else int(max_iter)
    bnorm = _col_dot(B, B).sqrt().clamp_min(1e-300)

    def apply_k(v):
        return A.matmul(v.to(A.dtype)).to(torch.float64) if A.dtype != torch.float64 else A.matmul(v)

    if x0 is None:
        R = B.clone()
    else:
        R = B - apply_k(X) - reg * X
        if float(_col_dot(R, R).sum()) >= float(_col_dot(B, B).sum()):
            X.zero_()  # the warm start is worse than x = 0 (the kernel changed a lot): start cold
            R = B.clone()
    target = torch.maximum(rtol * bnorm, torch.full_like(bnorm, atol))
    rnorm = _col_dot(R, R).sqrt()
    history = [float((rnorm / bnorm).max())]

    def precond(r):
        return r.clone() if M is None else M(r)

    Z = precond(R)
    P = Z.clone()
    rz = _col_dot(R, Z)
    # a column breaks down when a step's curvature p^T (K + reg) p or r^T P^{-1} r is not positive or a residual is
    # not finite: the system or the preconditioner is not positive definite in the working precision (a float32
    # kernel on nearly collapsed features). It stops there instead of diverging to NaN until max_iter.
    broken = torch.zeros_like(rnorm, dtype=torch.bool)
    converged = bool((rnorm <= target).all())
    # the iterate with the smallest residual per column: in float32 on an ill-conditioned system the residual of
    # CG iterates is not monotone, and a capped solve must not end worse than where it has already been
    best_x, best_rn, best_k = X.clone(), rnorm.clone(), torch.zeros_like(rnorm)
    k = 0
    while not converged and k < max_iter:
        Q = apply_k(P)
        if reg:
            Q.add_(P, alpha=reg)
        pq = _col_dot(P, Q)
        active = (rnorm > target) & ~broken
        broken |= active & ~(pq > 0)  # also catches NaN
        active &= ~broken
        a = torch.where(active, rz / pq.clamp_min(1e-300), torch.zeros_like(rz))
        X.addcmul_(P, a.unsqueeze(0))
        R.addcmul_(Q, -a.unsqueeze(0))
        rnorm = _col_dot(R, R).sqrt()
        broken |= active & ~torch.isfinite(rnorm)
        k += 1
        better = rnorm < best_rn
        if bool(better.any()):
            best_x[:, better] = X[:, better]
            best_rn = torch.where(better, rnorm, best_rn)
            best_k = torch.where(better, torch.full_like(best_k, k), best_k)
        history.append(float((torch.where(broken, best_rn, rnorm) / bnorm).max()))
        converged = bool((rnorm <= target).all())
        if callback is not None and callback(k, X.squeeze(1) if squeeze else X, history[-1]):
            break
        if bool(((rnorm <= target) | broken).all()):  # converged, or nothing left that can move
            break
        Z = precond(R)
        rz_new = _col_dot(R, Z)
        broken |= active & ~(rz_new > 0)
        beta = torch.where(active & ~broken, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz))
        P.mul_(beta.unsqueeze(0)).add_(Z)
        if bool(broken.any()):
            P[:, broken] = 0.0  # a broken column moves no more (and carries no NaN on)
        rz = rz_new
    final, returned = history[-1], None
    if not converged:
        X = best_x  # the smallest-residual iterate of each column
        returned = [int(v) for v in best_k.tolist()]
        final = float((best_rn / bnorm).max())
        if bool(broken.any()):
            cols = [int(i) for i in torch.nonzero(broken).flatten().tolist()]
            warnings.warn(
                f"CG broke down after {k} iterations on column(s) {cols[:10]}{' ...' if len(cols) > 10 else ''}: "
                "the system or its preconditioner is not positive definite in the working precision (nearly "
                "collapsed features in float32, or reg too small); returning each column's smallest-residual "
                f"iterate (relative residual {final:.3g}). A larger reg or dtype=float64 avoids it.",
                ConvergenceWarning,
                stacklevel=2,
            )
        elif callback is None or k >= max_iter:
            warnings.warn(
                f"CG did not reach rtol={rtol:g} in {k} iterations (relative residual {history[-1]:.3g}); returning "
                f"each column's smallest-residual iterate (relative residual {final:.3g}).",
                ConvergenceWarning,
                stacklevel=2,
            )
    X = X.to(out_dtype)
    return SolveResult(X.squeeze(1) if squeeze else X, k, converged, history, float(reg), "cg",
                       final_residual=final, returned_iterations=returned)
