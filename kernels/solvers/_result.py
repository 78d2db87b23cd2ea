"""The result record every solver returns (scipy-style)."""
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
    x : (n, c) tensor, the solution.
    n_iter : iterations run (1 for a direct solve).
    converged : whether the stopping criterion was met.
    residual_norms : relative residual norms per iteration (may be empty for direct solves).
    reg_used : the ridge actually applied (``reg`` plus any jitter added for stability).
    method : name of the solver.
    info : solver-specific details (e.g. EigenPro's batch size and step).
    """

    x: torch.Tensor
    n_iter: int
    converged: bool
    residual_norms: list[float] = field(default_factory=list)
    reg_used: float = 0.0
    method: str = ""
    info: dict = field(default_factory=dict)
