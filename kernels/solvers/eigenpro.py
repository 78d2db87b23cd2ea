"""EigenPro 2: preconditioned stochastic gradient descent in the RKHS (Ma & Belkin, 2019).

For ``(K + reg I) x = Y`` with the top eigenpairs ``(lambda_i, e_i)`` of ``K_SS / s`` on s random centres S:

* ``beta = max_i k(x_i, x_i)`` (= 1 for the Laplace kernel); the top q-1 directions are flattened to
  ``lambda_tail = lambda_q`` with exponent a = 0.95:
  ``D_i = (1 - (lambda_tail / lambda_i)^a) / lambda_i``, ``V = E / sqrt(s)``,
  ``lambda_new = lambda_1^(1-a) * lambda_tail^a`` (top eigenvalue of the preconditioned operator);
* q: the number of i with ``lambda_i^(-a) < max_batch``, minus one, at least 5, and at most ``max(5, s // 10)``:
  eigenvectors of ``K_SS / s`` with eigenvalues near ``1/s`` are too noisy to flatten (capping q was needed for
  stability once RFM sharpens M and the kernel's spectrum becomes very steep);
* batch ``m = min(int(beta / lambda_new + 1), max_batch)``; step ``eta = m / beta`` when
  ``m < beta / lambda_new + 1``, else ``eta = 0.99 * 2 m / (beta + (m - 1) lambda_new)``;
* one batch B: ``g = K(X_B, X) x - Y_B + reg x_B``; ``x_B -= (eta/m) g``;
  ``x_S += (eta/m) V diag(D) V^T K(X_S, X_B) g``.

The step size and batch come from the spectrum: no manual tuning. As a safeguard, an epoch whose batch residual
grows by more than half over the previous epoch is undone and the step halved (with a warning): the spectrum is
estimated from s centres and can be off. The stopping test uses the batch residuals seen during an epoch (free,
slightly stale); ``residual_norms`` holds those per epoch.
"""
from __future__ import annotations

import math
import warnings

from typing import Callable

import torch

from ..memory import default_memory_budget
from ..operators import KernelOperator
from ._result import ConvergenceWarning, SolveResult, as_columns
from .nystrom import NystromEigensystem

__all__ = ["solve_eigenpro", "eigenpro_schedule", "max_batch_size"]


def eigenpro_schedule(eigvals: torch.Tensor, *, max_batch: int, beta: float = 1.0, a: float = 0.95,
                      max_q: int | None = None):
    """Derive (q, D, batch size m, step eta) from the eigenvalues of ``K_SS / s`` (descending)."""
    lam = eigvals.double()
    k = lam.numel()
    count = int((lam.pow(-a) < max_batch).sum())
    q = max(count - 1, 5)
    if max_q is not None:
        q = min(q, max_q)
    q = max(1, min(q, k - 1))
    lam_tail = float(lam[q])
    D = (1.0 - (lam_tail / lam[:q]).pow(a)) / lam[:q]
    lam_new = float(lam[0]) ** (1.0 - a) * lam_tail**a
    m_crit = beta / lam_new + 1.0
    m = int(max(1, min(int(m_crit), max_batch)))
    eta = m / beta if m < m_crit else 0.99 * 2.0 * m / (beta + (m - 1) * lam_new)
    return q, D, m, eta


def solve_eigenpro(
    A: KernelOperator,
    B: torch.Tensor,
    *,
    reg: float = 0.0,
    x0: torch.Tensor | None = None,
    rtol: float = 1e-3,
    atol: float = 0.0,
    max_iter: int = 20,
    M: NystromEigensystem | None = None,
    callback: Callable[[int, torch.Tensor, float], bool | None] | None = None,
    generator: torch.Generator | None = None,
    memory_budget: int | None = None,
) -> SolveResult:
    """Solve ``(K + reg I) x = Y`` approximately by EigenPro 2 iterations.

    Parameters
    ----------
    A : KernelOperator for K.
    B : (n,) or (n, c) right-hand sides.
    reg : ridge >= 0.
    x0 : warm start.
    rtol, atol : stop at the end of an epoch when the epoch's batch residual ``||g|| <= max(rtol ||Y||, atol)``.
    max_iter : maximum number of epochs (passes over the data).
    M : the NystromEigensystem the preconditioner is built from (built here when None).
    callback : ``callback(epoch, x, rel_residual)`` after each epoch; returning True stops (e.g. validation early
        stopping, progress display).
    generator : torch.Generator for batch order.
    memory_budget : bytes for a batch's kernel rows (sets the largest batch; default: a share of free memory).

    Returns
    -------
    SolveResult with ``n_iter`` = epochs run.
    """
    op = A
    B, X, squeeze = as_columns(B, x0)
    n, c = B.shape
    pre = M if M is not None else NystromEigensystem(op, generator=generator)
    s = pre.n_centres
    # a batch holds K(X_B, X) and K(X_S, X_B)
    max_batch = max_batch_size(n, s, itemsize=torch.empty((), dtype=op.dtype).element_size(),
                               budget=default_memory_budget(op.device) if memory_budget is None else memory_budget)
    q, D, m, eta = eigenpro_schedule(pre.eigvals, max_batch=max_batch, max_q=max(5, s // 10))
    V = (pre.eigvecs[:, :q] / math.sqrt(s)).to(op.dtype)
    Dt = D.to(op.dtype)
    bnorm = float(B.double().norm().clamp_min(1e-300))
    if x0 is not None:
        # a warm start is only kept if it beats x = 0 on a row sample (when the kernel changed a lot between RFM
        # iterations the previous solution can be far worse than starting from zero)
        rows = torch.randperm(n, generator=generator)[: min(n, 2000)].to(op.device)
        r = op.block(rows) @ X - B[rows] + reg * X[rows]
        if float(r.double().norm()) >= float(B[rows].double().norm()):
            X.zero_()
    target = max(rtol * bnorm, atol)
    step = eta / m
    history = []
    converged = False
    buf = torch.empty(m * n, dtype=op.dtype, device=op.device)
    ep = 0
    halvings = 0
    for ep in range(max_iter):
        order = torch.randperm(n, generator=generator).to(op.device)
        x_start = X.clone()
        sq = 0.0
        for i in range(0, n, m):
            idx = order[i : i + m]
            kb = op.block(idx, None, out=buf[: idx.numel() * n].view(idx.numel(), n))
            kb[torch.arange(idx.numel(), device=op.device), idx] = 1.0  # exact self-similarity
            g = kb @ X - B[idx]
            if reg:
                g.add_(X[idx], alpha=reg)
            sq += float(g.double().pow(2).sum())
            X[idx] -= step * g
            ksb = op.block(pre.centres, idx)
            corr = V @ (Dt.unsqueeze(1) * (V.T @ (ksb @ g)))
            X.index_add_(0, pre.centres, corr, alpha=step)
        rel = math.sqrt(sq) / bnorm
        if not math.isfinite(rel) or (history and rel > 1.5 * history[-1]):
            X.copy_(x_start)  # undo a diverging epoch, halve the step
            step *= 0.5
            halvings += 1
            if halvings > 20:
                break
            continue
        history.append(rel)
        if math.sqrt(sq) <= target:
            converged = True
            break
        if callback is not None and callback(ep + 1, X.squeeze(1) if squeeze else X, rel):
            break
    if halvings:
        warnings.warn(f"EigenPro: step size halved {halvings} time(s) after diverging epochs.", RuntimeWarning,
                      stacklevel=2)
    if not history:
        history.append(1.0)
    if not converged and (callback is None or ep + 1 >= max_iter):
        warnings.warn(
            f"EigenPro did not reach rtol={rtol:g} in {max_iter} epochs (batch residual {history[-1]:.3g}).",
            ConvergenceWarning,
            stacklevel=2,
        )
    return SolveResult(X.squeeze(1) if squeeze else X, len(history), converged, history, float(reg), "eigenpro",
                       final_residual=history[-1],
                       details={"batch_size": m, "step": eta, "step_used": step * m, "q": q, "n_centres": s,
                                "halvings": halvings})


def max_batch_size(n: int, n_centres: int, *, itemsize: int, budget: int) -> int:
    """The largest EigenPro batch whose kernel rows ``K(X_B, X)``, ``K(X_S, X_B)`` and their temporaries fit."""
    return max(1, min(n, budget // (3 * itemsize * (n + n_centres))))

