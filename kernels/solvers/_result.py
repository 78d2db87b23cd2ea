"""The result record every solver returns (scipy-style), and the shared column setup."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped before reaching its tolerance."""


@dataclass
class SolveResult:
    """Solution of ``(K + reg I) x = Y``.

    Attributes
    ----------
    x : (n, c) tensor (or (n,) for a vector Y), the solution.
    n_iter : iterations run (1 for a direct solve; epochs for EigenPro).
    converged : whether the stopping criterion was met.
    residual_norms : relative residual norms per iteration (empty for direct solves).
    reg_used : the ridge actually applied (``reg`` plus any jitter added for stability).
    method : name of the solver.
    final_residual : relative residual of the returned ``x`` where the solver knows it (None for a direct solve).
    returned_iterations : for a CG solve stopped before its tolerance, the iteration each column's returned
        (smallest-residual) iterate comes from; None otherwise.
    details : solver-specific extras for display (EigenPro's batch size, step, q, ...).
    """

    x: torch.Tensor
    n_iter: int
    converged: bool
    residual_norms: list[float] = field(default_factory=list)
    reg_used: float = 0.0
    method: str = ""
    final_residual: float | None = None
    returned_iterations: list[int] | None = None
    details: dict = field(default_factory=dict)


def as_columns(Y: torch.Tensor, x0: torch.Tensor | None):
    """Right-hand sides as (n, c) columns and the starting point (a copy of ``x0``, or zeros), plus whether the
    caller passed a vector (so results are squeezed back)."""
    squeeze = Y.dim() == 1
    B = Y.unsqueeze(1) if squeeze else Y
    if x0 is None:
        return B, torch.zeros_like(B), squeeze
    return B, (x0.unsqueeze(1) if squeeze else x0).clone().to(B.dtype), squeeze


def iterative_vectors_bytes(n: int, c: int) -> int:
    """Bytes of an iterative solver's n x c float64 vectors (x, r, z, p, q, the best iterate, a warm start, Y)."""
    return 8 * n * c * 8
