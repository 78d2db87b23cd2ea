"""Preconditioned conjugate gradients for ``(K + reg I) x = Y`` with a Nystrom preconditioner.

All columns of Y run together (one blocked kernel product per iteration for all of them) with per-column step
sizes; a column stops moving once its relative residual ``||r_c|| / ||y_c||`` is below ``rtol`` (or ``||r_c||`` below
``atol``). Scalars are accumulated in float64. Warm start with ``x0`` (e.g. the previous RFM iteration's solution).
"""
from __future__ import annotations

import warnings

import torch
from tqdm.auto import tqdm

from ..blocked import KernelOperator
from ._result import ConvergenceWarning, SolveResult, as_columns
from .nystrom import NystromEigensystem

__all__ = ["solve_cg"]


def _col_dot(a, b):
    return torch.einsum("nc,nc->c", a, b).double()


def solve_cg(
    op: KernelOperator,
    Y: torch.Tensor,
    *,
    reg: float = 0.0,
    x0: torch.Tensor | None = None,
    preconditioner: NystromEigensystem | None = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_iter: int | None = None,
    callback=None,
    verbose: bool = False,
) -> SolveResult:
    """Solve ``(K + reg I) x = Y`` by (preconditioned) conjugate gradients.

    Parameters
    ----------
    op : KernelOperator for K (n x n).
    Y : (n,) or (n, c) right-hand sides.
    reg : ridge >= 0.
    x0 : optional warm start of Y's shape.
    preconditioner : NystromEigensystem with its CG extension, or None for plain CG.
    rtol, atol : stop when ``||r_c|| <= max(rtol * ||y_c||, atol)`` for every column c.
    max_iter : iteration cap (default ``max(100, n // 10)``).
    callback : called as ``callback(k, x)`` after each iteration; returning True stops.
    verbose : tqdm progress bar.

    Returns
    -------
    SolveResult; ``residual_norms`` holds the largest relative column residual after each iteration (index 0: start).
    """
    B, X, squeeze = as_columns(Y, x0)
    out_dtype = B.dtype
    if B.dtype != torch.float64:
        # mixed precision: kernel products in the working precision, every CG vector and scalar in float64. In
        # float32 the recurrences lose orthogonality on the ill-conditioned kernel systems RFM produces (measured at
        # n = 30000: float32 CG stalled near 1e-2 and broke down; with float64 vectors it reached 1e-5 in 100 steps)
        B, X = B.double(), X.double()
    n, c = B.shape
    max_iter = max(100, n // 10) if max_iter is None else int(max_iter)
    bnorm = _col_dot(B, B).sqrt().clamp_min(1e-300)

    def apply_k(v):
        return op.matmul(v.to(op.dtype)).to(torch.float64) if op.dtype != torch.float64 else op.matmul(v)

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
        return r.clone() if preconditioner is None else preconditioner.apply_cg_preconditioner(r, reg)

    Z = precond(R)
    P = Z.clone()
    rz = _col_dot(R, Z)
    converged = bool((rnorm <= target).all())
    # the iterate with the smallest residual per column: in float32 on an ill-conditioned system the residual of
    # CG iterates is not monotone, and a capped solve must not end worse than where it has already been
    best_x, best_rn, best_k = X.clone(), rnorm.clone(), torch.zeros_like(rnorm)
    k = 0
    bar = tqdm(total=max_iter, desc="CG", disable=not verbose, unit="it", leave=False)
    while not converged and k < max_iter:
        Q = apply_k(P)
        if reg:
            Q.add_(P, alpha=reg)
        pq = _col_dot(P, Q)
        active = rnorm > target
        a = torch.where(active & (pq > 0), rz / pq.clamp_min(1e-300), torch.zeros_like(rz))
        X.addcmul_(P, a.unsqueeze(0))
        R.addcmul_(Q, -a.unsqueeze(0))
        rnorm = _col_dot(R, R).sqrt()
        k += 1
        better = rnorm < best_rn
        if bool(better.any()):
            best_x[:, better] = X[:, better]
            best_rn = torch.where(better, rnorm, best_rn)
            best_k = torch.where(better, torch.full_like(best_k, k), best_k)
        history.append(float((rnorm / bnorm).max()))
        bar.update(1)
        bar.set_postfix(rel_res=f"{history[-1]:.2e}")
        converged = bool((rnorm <= target).all())
        if callback is not None and callback(k, X.squeeze(1) if squeeze else X):
            break
        if converged:
            break
        Z = precond(R)
        rz_new = _col_dot(R, Z)
        beta = torch.where(active, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz))
        P.mul_(beta.unsqueeze(0)).add_(Z)
        rz = rz_new
    bar.close()
    info = {}
    if not converged:
        X = best_x  # the smallest-residual iterate of each column
        info = {"returned_iterations": [int(v) for v in best_k.tolist()],
                "returned_relative_residual": float((best_rn / bnorm).max())}
        if callback is None or k >= max_iter:
            warnings.warn(
                f"CG did not reach rtol={rtol:g} in {k} iterations (relative residual {history[-1]:.3g}); returning "
                f"each column's smallest-residual iterate (relative residual {info['returned_relative_residual']:.3g}).",
                ConvergenceWarning,
                stacklevel=2,
            )
    X = X.to(out_dtype)
    return SolveResult(X.squeeze(1) if squeeze else X, k, converged, history, float(reg), "cg", info)
