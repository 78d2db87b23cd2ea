"""Ridge paths: kernel ridge regression for a whole grid of ridge values, scored, from one factorisation.

Three exact paths, each giving the solution and a criterion (lower is better) for every ridge value ``lam``:

* :func:`loo_path` -- the exact system ``(K + lam I) alpha = Y`` from one eigendecomposition ``K = U diag(s) U^T``
  (float64). With ``G = (K + lam I)^{-1}`` the leave-one-out residual of row i is ``alpha_i / G_ii`` (the residual
  ``(y - f)_i / (1 - H_ii)`` of ``H = K G``, written without the cancellation in ``1 - H_ii``), and
  ``G_ii = sum_j U_ij^2 / (s_j + lam)``: O(n^2 c) per value after the O(n^3) eigendecomposition.
* :func:`centres_path` -- the m-centre system ``(A + lam B) beta = b`` (``A = K_nm^T K_nm``, ``B = K_mm`` with the
  solver's jitter, ``b = K_nm^T Y``) from the generalised eigenproblem ``A v = mu B v``: with ``T^T T = B`` and
  ``T^{-T} A T^{-1} = V diag(mu) V^T``, ``beta(lam) = T^{-1} V diag(1 / (mu + lam)) q`` for ``q = V^T T^{-T} b``.
  Its criterion is generalised cross-validation, ``(RSS / (n c)) / (1 - df / n)^2`` with the residual sum of squares
  ``RSS = ||Y||^2 - sum_j q_j^2 (2 / (mu_j + lam) - mu_j / (mu_j + lam)^2)`` and ``df = sum_j mu_j / (mu_j + lam)``
  (the trace of the hat matrix ``K_nm (A + lam B)^{-1} K_nm^T``), or the squared error on held-out rows.
* :func:`walk_path` -- any solver: one solve per ridge value, scored on held-out rows, walking the grid from a start
  value towards lower error (the criterion is close to unimodal in log lam) until no neighbour is better beyond the
  noise (below).

The criterion is the mean squared error over rows and output columns (for a classifier, of its one-hot targets: a
proper score of the outputs the kernel machine fits, where accuracy is flat over most of the grid).

**Held-out choices ignore round-off.** Scored on held-out rows (a walk, or the m-centre path with ``held_out``), two
values' errors count as equal unless they differ by more than RIDGE_RTOL of the smaller one, and the choice is the
*smallest* ridge whose error is within that of the lowest. A flat criterion (an easy or noise-free target, where the
held-out error moves by parts in 1e9 over decades of ridge) otherwise picks its value from round-off, and the choice is
carried, at the same ridge per row, to larger solves (the refit on all rows, the m-centre model on up to 1e7 rows),
where the best ridge per row is smaller. The walk, likewise, moves to a larger ridge only when that is better by more
than RIDGE_RTOL, and to a smaller one while its error stays within RIDGE_RTOL of the lowest. (A wider band -- two
standard errors of the paired per-row difference, tried -- chose a ridge 1.5x worse on test rows for a noisy target
with 400 validation rows: the criterion is flat within its noise near the optimum, and the smallest value there
interpolates the noise. RIDGE_RTOL is far below a noisy target's differences and far above round-off.) The exact
leave-one-out and GCV paths keep the plain minimum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

__all__ = ["RIDGE_GRID", "RIDGE_RTOL", "RidgePath", "centres_path", "loo_path", "loo_workspace_bytes",
           "ridge_grid", "walk_path"]

#: the ridge values a path scores: 1e-6 to 1e2 in half decades (relative to k(x, x) = 1 of the kernel family)
RIDGE_GRID = tuple(float(10.0 ** (e / 2)) for e in range(-12, 5))
#: held-out errors of two ridge values count as equal unless they differ by more than this share of the smaller one
#: (module text)
RIDGE_RTOL = 1e-3


def _equal(ea: float, eb: float) -> bool:
    """Whether two held-out mean errors are equal up to RIDGE_RTOL of the smaller."""
    return abs(ea - eb) <= RIDGE_RTOL * min(abs(ea), abs(eb))


@dataclass
class RidgePath:
    """The scored ridge values of one path: ``regs`` (those evaluated, ascending), ``errors`` (the criterion, lower is
    better), ``criterion`` ('loo', 'gcv' or 'holdout') and the chosen value ``reg``."""

    regs: list[float]
    errors: list[float]
    criterion: str
    start: float | None = None  # a walk's first value (recorded as reg_start)
    #: held out: the choice is the smallest ridge whose error equals the lowest up to RIDGE_RTOL (module text)
    tolerant: bool = False

    @property
    def lowest(self) -> int:
        """The index of the lowest error (an unscored or failed value: NaN / inf, never lowest unless all are)."""
        errors = np.asarray(self.errors, dtype=np.float64)
        return int(np.argmin(np.where(np.isnan(errors), np.inf, errors)))

    @property
    def best(self) -> int:
        """The chosen index: the lowest error, or when ``tolerant`` the smallest ridge whose error equals it."""
        b = self.lowest
        if not self.tolerant:
            return b
        return next(k for k in range(b + 1) if np.isfinite(self.errors[k]) and (
            k == b or _equal(self.errors[k], self.errors[b])))

    @property
    def reg(self) -> float:
        return self.regs[self.best]

    def record(self) -> dict:
        """The path as a history entry."""
        out = {"reg_criterion": self.criterion,
               "reg_path": [[float(r), float(e)] for r, e in zip(self.regs, self.errors)]}
        if self.start is not None:
            out["reg_start"] = float(self.start)
        if self.tolerant:
            out["reg_lowest"] = float(self.regs[self.lowest])  # (the chosen may be a smaller one within the noise)
        return out


def ridge_grid(regs) -> np.ndarray:
    regs = np.asarray(sorted(float(r) for r in regs), dtype=np.float64)
    if regs.size == 0 or not np.all(np.isfinite(regs)) or regs[0] <= 0:
        raise ValueError(f"a ridge path needs positive finite ridge values, got {list(regs)}")
    return regs


def loo_workspace_bytes(n: int) -> int:
    """What :func:`loo_path` holds beside K: the float64 copy of K, its eigenvectors and their squares."""
    return 3 * n * n * 8


def loo_path(K: torch.Tensor, Y: torch.Tensor, regs=RIDGE_GRID) -> tuple[RidgePath, torch.Tensor, torch.Tensor]:
    """The exact leave-one-out path of ``(K + lam I) alpha = Y`` over ``regs`` (module text).

    Returns the path, the chosen value's coefficients ``alpha`` (n, c) in Y's dtype and its training outputs
    ``K alpha = Y - lam alpha`` (float64)."""
    grid = ridge_grid(regs)
    if K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be a square matrix, got shape {tuple(K.shape)}")
    if Y.dim() not in (1, 2) or Y.shape[0] != K.shape[0]:
        raise ValueError(f"Y must have K's {K.shape[0]} rows (a vector or one column per output), got shape "
                         f"{tuple(Y.shape)}")
    Y2 = Y.reshape(Y.shape[0], -1)
    s, U = torch.linalg.eigh(K.double())
    s.clamp_(min=0.0)  # K is PSD: negative eigenvalues are round-off
    Yd = Y2.double()
    UtY = U.T @ Yd
    U2 = U.square()
    errors = []
    for lam in grid:
        inv = 1.0 / (s + lam)
        loo = (U @ (UtY * inv[:, None])) / (U2 @ inv)[:, None]  # alpha_i / G_ii
        errors.append(float(loo.square().mean()))
    del U2
    path = RidgePath([float(r) for r in grid], errors, "loo")
    lam = path.reg
    alpha = U @ (UtY / (s + lam)[:, None])
    train_out = Yd - lam * alpha
    return path, alpha.to(Y.dtype).reshape(Y.shape), train_out


def centres_path(A: torch.Tensor, T: torch.Tensor, b: torch.Tensor, y_sq: float, n: int, regs=RIDGE_GRID, *,
                 held_out: Callable[[list[torch.Tensor]], list[float]] | None = None
                 ) -> tuple[RidgePath, torch.Tensor]:
    """The m-centre path of ``(A + lam T^T T) beta = b`` over ``regs`` (module text), all float64.

    ``A`` (m, m) is ``K_nm^T K_nm`` (pass it without keeping a reference: it is released as soon as it is used),
    ``T`` the upper Cholesky factor of ``K_mm`` (with jitter), ``b`` (m, c) is
    ``K_nm^T Y``, ``y_sq`` is ``||Y||^2`` and ``n`` the rows behind them (all ranks'). The criterion is GCV, or with
    ``held_out`` (``held_out(betas) -> errors``: the held-out mean squared error of each coefficient matrix) that
    error, chosen up to round-off (module text). Returns the path and the chosen value's ``beta`` (m, c)."""
    grid = ridge_grid(regs)
    # C = T^{-T} A T^{-1} by two triangular solves, one m x m matrix alive beside A at a time (eigh reads the lower
    # triangle: no symmetrisation copy). The caller passes A without keeping it, so it is freed here.
    C = torch.linalg.solve_triangular(T.T, A, upper=False)
    del A
    C = torch.linalg.solve_triangular(T, C, upper=True, left=False)
    mu, V = torch.linalg.eigh(C)
    del C
    mu.clamp_(min=0.0)
    W = torch.linalg.solve_triangular(T, V, upper=True)  # beta(lam) = W diag(1 / (mu + lam)) q
    del V
    q = W.T @ b
    c = b.shape[1]
    if held_out is not None:
        errors = [float(e) for e in held_out([W @ (q / (mu + lam)[:, None]) for lam in grid])]
    else:
        errors = []
        for lam in grid:
            inv = 1.0 / (mu + lam)
            rss = y_sq - float((q.square() * (2 * inv - mu * inv.square())[:, None]).sum())
            df = float((mu * inv).sum())
            errors.append(max(rss, 0.0) / (n * c) / max(1.0 - df / n, 1e-12) ** 2)
    path = RidgePath([float(r) for r in grid], errors, "gcv" if held_out is None else "holdout",
                     tolerant=held_out is not None)
    beta = W @ (q / (mu + path.reg)[:, None])
    return path, beta


def walk_path(evaluate: Callable[[float], float], regs=RIDGE_GRID, *, start: float = 1e-3) -> RidgePath:
    """Score ridge values one at a time with ``evaluate(lam) -> held-out error``: the grid value nearest ``start``,
    its two neighbours, then onwards -- to a larger ridge while that is better by more than RIDGE_RTOL, to a smaller
    one while its error equals the lowest so far up to RIDGE_RTOL (module text) -- never back to a value already
    walked through. The choice is :attr:`RidgePath.best` over the values scored (``tolerant``). The caller keeps what
    each evaluation produced."""
    grid = ridge_grid(regs)
    scored: dict[int, float] = {}

    def score(i):
        if i not in scored:
            e = float(evaluate(float(grid[i])))
            scored[i] = e if np.isfinite(e) else np.inf

    i = int(np.argmin(np.abs(np.log(grid) - np.log(max(start, 1e-300)))))
    score(i)
    walked = {i}
    while True:
        for j in (i - 1, i + 1):
            if 0 <= j < len(grid):
                score(j)
        low = min(scored, key=lambda k: (scored[k], k))
        moves = []
        if i + 1 < len(grid) and i + 1 not in walked and scored[i + 1] < scored[i] and not _equal(scored[i + 1],
                                                                                                   scored[i]):
            moves.append(i + 1)
        if i > 0 and i - 1 not in walked and np.isfinite(scored[i - 1]) and (
                scored[i - 1] <= scored[low] or _equal(scored[i - 1], scored[low])):
            moves.append(i - 1)
        if not moves:
            break
        i = min(moves, key=lambda k: (scored[k], k))
        walked.add(i)
    keys = sorted(scored)
    return RidgePath([float(grid[k]) for k in keys], [scored[k] for k in keys], "holdout", start=float(start),
                     tolerant=True)
